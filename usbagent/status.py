"""`usbagent status`: the truthful health of the whole system, monitoring-plugin style.

Three parts: `statusfacts.gather` reads every source (archive folder, state dir, ledger,
heartbeat, systemd) into a frozen `Facts`; `statuschecks.evaluate` is a pure function
facts + config + now -> checks, where every judgement lives, so each failure mode is a fast
unit test; this module prints them (text or JSON) with the monitoring exit status.

The failure this project exists for is a backup that looks healthy while it is not: the
timer is enabled and "active", the service exits 0, yet no archive newer than
`agent.stale_after_hours` exists. Freshness is therefore judged from the archive files
themselves, never from what a job claims to have done; and a file counts only when it is
an archive a successful run recorded (the state dir's journal: name, size, sha256) and still
matches that record. A `touch`ed name is not a backup.

The match is deliberately cheap, because monitoring runs status every minute and archives
are gigabytes: the file's size must equal the size its run wrote, and its sidecar must state
the sha256 its run recorded. That catches an empty or truncated file, a file someone put
there, a lost or rewritten sidecar. It does not read the archive: bit rot that keeps the
size is found by `usbagent verify` (a full hash), and by every stick sync, which hashes each
archive before copying it. The file's mtime is not used: copying the folder to a new disk
without -p changes every mtime but no archive, and an alarm that nothing can clear but
waiting out retention would teach people to ignore status.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from usbagent.config import Config, ConfigError
from usbagent.health import CRITICAL, OK, UNKNOWN, WARNING, Check
from usbagent.statuschecks import evaluate, overall
from usbagent.statusfacts import gather

EXIT = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}


def render_text(checks: list[Check]) -> str:
    state_ = overall(checks)
    worst = checks[0] if checks else Check("status", UNKNOWN, "no checks")
    lines = [f"usbagent {state_}: {worst.name}: {worst.message}"]
    lines += [f"{c.state:<8} {c.name}: {c.message}" for c in checks]
    return "\n".join(lines) + "\n"


def report(checks: list[Check], now: datetime, as_json: bool) -> int:
    """Print the checks as monitoring reads them (text or JSON); the exit status."""
    if as_json:
        doc = {
            "state": overall(checks),
            "time": now.isoformat(),
            "checks": [c.to_json() for c in checks],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(checks))
    return EXIT[overall(checks)]


def report_broken_config(error: ConfigError, as_json: bool) -> int:
    """UNKNOWN (3) with the config's problems: monitoring must see a line, not an empty one."""
    problems = "; ".join(error.problems)
    return report(
        [Check("config", UNKNOWN, f"{error.path}: {problems}")], datetime.now(UTC), as_json
    )


def run(config: Config, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        checks = evaluate(gather(config), config, now)
    except Exception as exc:  # monitoring must get UNKNOWN (3), never a traceback and 1
        checks = [Check("state", UNKNOWN, f"cannot determine the state: {exc!r}")]
    return report(checks, now, getattr(args, "json", False))
