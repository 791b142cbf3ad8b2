"""The journal: the one writer of the state dir, and the one place outcomes are recorded.

Producers (the archive job, a stick sync, the agent, the unit-failure hook) describe what
happened as an `Outcome` and hand it here once, after the person was told exactly that:
`last/<kind>.json` is then the very text they saw. Recording an outcome updates, under one
lock: last of its kind, last error, the history, the archives journal, and then the
subscribers that derive files from it (the Prometheus textfile, see `usbagent.metrics`).

The state dir's format and its readers live in `usbagent.state`; the ledger of each stick
(`usbagent.ledger`) and the notification outbox (`usbagent.outbox`, kept apart and light so
that the user-side notification helper and `status` load no more than it) are the journal's
own parts: no module outside these writes into `agent.state_dir`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usbagent import ledger, metrics, state
from usbagent.config import AgentConfig
from usbagent.events import Outcome
from usbagent.fsutil import flocked, write_atomic
from usbagent.plan import StickFile
from usbagent.state import ArchiveRecord, archive_record, write_json


@dataclass(frozen=True)
class StickReport:
    """What a stick sync found and did, for the journal: the outcome the person is told,
    and what the stick's ledger needs (a producer never writes the ledger itself)."""

    outcome: Outcome
    uuid: str  # "" when the stick has no filesystem UUID: then it has no ledger
    label: str
    fstype: str = ""
    free_bytes: int | None = None
    holds: tuple[StickFile, ...] | None = None  # our verified copies now (None: not looked)
    copies_ok: bool = False  # every wanted archive verified on the stick (the sync's verdict)


def record(agent: AgentConfig, outcome: Outcome) -> None:
    """Persist an outcome: last of its kind, last error if it failed, the history, metrics.

    Every producer calls this exactly once per outcome, so `status`, the metrics file and
    what the person was told can never disagree about what happened.
    """
    state_dir = agent.state_dir
    data = outcome.to_json()
    with flocked(state_dir / "record.lock"):
        write_json(state_dir / "last" / f"{outcome.kind}.json", data)
        if outcome.ok:  # what metrics (and a trimmed history) need without reading it all
            write_json(state_dir / "last-ok" / f"{outcome.kind}.json", data)
        else:
            write_json(state_dir / "last-error.json", data)
        _append_event(state_dir / "events.jsonl", data)
        made = archive_record(outcome)
        if made is not None:
            _remember_archive(state_dir, made)
        metrics.write(agent, outcome)  # a subscriber: derived from what was just recorded


def _append_event(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(data, sort_keys=True) + "\n"
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if path.stat().st_size > state.MAX_EVENTS * 1024:  # rough bound; trim to the newest
        lines = path.read_text().splitlines(keepends=True)[-state.MAX_EVENTS :]
        write_atomic(path, "".join(lines).encode())


def _remember_archive(state_dir: Path, made: ArchiveRecord) -> None:
    """Add `made` to the archives journal (under the record lock), newest first, bounded."""
    kept = [r for r in state.journal_entries(state_dir) if r.name != made.name]
    newest = sorted([made, *kept], key=lambda r: r.recorded, reverse=True)
    write_json(state_dir / "archives.json", [r.to_json() for r in newest[: state.MAX_ARCHIVES]])


def record_stick(agent: AgentConfig, report: StickReport) -> None:
    """Record a stick's outcome and update its ledger: copies verified (even when what
    followed failed, e.g. the unmount), then the error the person was told, if any."""
    if report.uuid:
        names = tuple(f.name for f in report.holds) if report.holds is not None else None
        d = agent.state_dir
        u, label, fstype = report.uuid, report.label, report.fstype
        if report.copies_ok:
            newest = names[0] if names else ""
            holds = report.holds or ()
            ledger.record_ok(d, u, label, names or (), report.free_bytes, newest, fstype, holds)
        if not report.outcome.ok:
            summary = report.outcome.summary
            free = report.free_bytes
            ledger.record_error(d, u, label, summary, names, free, fstype, report.holds)
    record(agent, report.outcome)


def note_mount(path: Path, facts: dict[str, Any]) -> None:
    """Remember a mount the agent made (`mounts/<uuid>.json`), so a restart unmounts it."""
    write_json(path, facts)


def forget_mount(path: Path) -> None:
    path.unlink(missing_ok=True)


def heartbeat(agent: AgentConfig, data: dict[str, Any]) -> None:
    write_json(agent.state_dir / "heartbeat.json", data)
