"""`usbagent doctor`: check the deployment itself and say, for each problem, how to fix it.

`status` reports what happened; `doctor` finds what will go wrong: a unit whose ExecStart
no longer exists (the job would fail at 02:00, silently), a key file anyone can read, a
destination on FAT32 that cannot hold a 4 GiB archive, no device events at all. Every
check is a small probe returning findings (`doctorhost`: units, device events, tools;
`doctorfiles`: keys, paths, file systems, state dir); the judgements (unit file parsing,
file system limits) are pure functions, and recipients are judged by the archive job's own
parser. Where doctor looks is a `doctorbase.Locations` value.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from usbagent.config import Config
from usbagent.doctorbase import Finding, Locations
from usbagent.doctorchains import check_chain_restores, check_snapshots
from usbagent.doctorfiles import (
    check_destination_fs,
    check_identity,
    check_paths,
    check_recipients,
    check_state_files,
    check_sticks_fs,
)
from usbagent.doctorhost import (
    check_device_events,
    check_last_run,
    check_timer_enabled,
    check_tools,
    check_units,
    systemd_units,
)


def diagnose(config: Config, locs: Locations) -> list[Finding]:
    units = systemd_units()
    probes: list[Callable[[], Finding | list[Finding]]] = [
        lambda: check_units(locs, units),
        lambda: check_timer_enabled(locs, units),
        lambda: check_last_run(config, units),
        lambda: check_recipients(config),
        lambda: check_identity(config),
        lambda: check_paths(config),
        lambda: check_destination_fs(config, locs),
        lambda: check_sticks_fs(config),
        lambda: check_device_events(config, locs),
        lambda: check_tools(locs),
        lambda: check_state_files(config),
        lambda: check_chain_restores(config),
        lambda: check_snapshots(config),
    ]
    findings: list[Finding] = []
    for probe in probes:
        result = probe()
        findings.extend(result if isinstance(result, list) else [result])
    return findings


def run(config: Config, args: argparse.Namespace) -> int:
    findings = diagnose(config, Locations())
    for finding in findings:
        sys.stdout.write(finding.line() + "\n")
    problems = sum(not f.ok for f in findings)
    summary = f"doctor: {problems} problem(s) found" if problems else "doctor: all good"
    sys.stdout.write(summary + "\n")
    return 1 if problems else 0
