"""`usbagent sync MOUNTPOINT`: the agent's sync, on a stick somebody else mounted.

The command around `sync.sync_stick`: the label check, the pre-mount refusal, Ctrl-C, the
progress line, and the one record of what it printed (the person unmounts the stick).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from usbagent import journal, mounts
from usbagent.config import Config
from usbagent.devices import Partition, label_matches
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.mounts import MountEntry
from usbagent.sync import (
    AcceptedCallback,
    Progress,
    ProgressCallback,
    facts_for_mount,
    precheck,
    sync_stick,
)
from usbagent.syncwords import refusal, told


def find_mount(raw: str) -> tuple[Path, MountEntry]:
    """The mount point the person named, or why it is not one (before anything is written)."""
    path = Path(os.path.realpath(raw))
    entry = mounts.mount_at(path, mounts.read())
    if not path.is_dir():
        raise UsbagentError(f"{raw} is not a folder; pass the mount point of the stick")
    if not os.path.ismount(path) or entry is None:
        raise UsbagentError(
            f"{raw} is not a mount point; mount the stick there first (copying to a plain "
            "folder would fill this disk instead of the stick)"
        )
    return path, entry


def sync_mounted(
    config: Config,
    mountpoint: Path,
    partition: Partition | None,
    cancel: threading.Event,
    progress: ProgressCallback | None = None,
    accepted: AcceptedCallback | None = None,
) -> Outcome:
    """`usbagent sync`'s run: `sync_stick`, worded for a stick the person unmounts, recorded."""
    report = told(sync_stick(config, mountpoint, partition, cancel, progress, accepted))
    journal.record_stick(config.agent, report)
    return report.outcome


def record_refusal(config: Config, partition: Partition, reason: str) -> Outcome:
    """`usbagent sync`: record a pre-mount refusal (state dir and ledger); return it."""
    report = refusal(partition, reason)
    journal.record_stick(config.agent, report)
    return report.outcome


def run(config: Config, args: argparse.Namespace) -> int:
    """`usbagent sync MOUNTPOINT`: the agent's sync, on a stick mounted by someone else."""
    mountpoint, entry = find_mount(args.mountpoint)
    partition = facts_for_mount(mountpoint, entry)
    if not label_matches(partition, config.usb):
        shown = " / ".join(x for x in (partition.label, partition.part_name) if x) or "no label"
        raise UsbagentError(
            f"{mountpoint} ({partition.device}, {shown}) is not a backup stick: its label or "
            f"GPT partition name must be one of usb.labels ({', '.join(config.usb.labels)})"
        )
    reason = precheck(config, partition)
    if reason is not None:
        outcome = record_refusal(config, partition, reason)
        print(f"usbagent sync: {outcome.summary}", file=sys.stderr)
        return 1
    cancel = threading.Event()
    with _cancel_on_signals(cancel):
        outcome = sync_mounted(config, mountpoint, partition, cancel, _print_progress())
    if outcome.ok:
        print(outcome.summary)
        return 0
    print(f"usbagent sync: {outcome.summary}", file=sys.stderr)
    return 1


@contextmanager
def _cancel_on_signals(cancel: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT stop the copy cleanly (partials removed) instead of killing mid-write."""

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _print_progress() -> ProgressCallback | None:
    """A one-line progress display on a terminal; nothing when run by a script or a unit."""
    if not sys.stderr.isatty():
        return None

    def show(p: Progress) -> None:
        pct = 100 * p.done_bytes // max(p.total_bytes, 1)
        print(f"\r[{p.index}/{p.total}] {p.name} {pct}%", end="", file=sys.stderr, flush=True)
        if p.done_bytes == p.total_bytes:
            print(file=sys.stderr)

    return show
