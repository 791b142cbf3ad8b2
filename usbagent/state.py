"""The state dir's format and its readers: the single source of truth `status` reads.

Written only by `usbagent.journal` (and the journal's own parts: ledger, outbox, metrics).

Layout (all JSON, under agent.state_dir):
  last/<kind>.json      newest Outcome of each kind (archive, sync, refused, unit-failed, ...)
  last-ok/<kind>.json   newest Outcome with ok=true of each kind (absent in older state dirs)
  last-error.json       newest Outcome with ok=false, whatever its kind
  events.jsonl          append-only history of Outcomes (bounded, oldest dropped)
  archives.json         every archive a successful run made: name, size, sha256, when
  sticks/<uuid>.json    per-stick ledger (see usbagent.ledger)
  heartbeat.json        the agent's pid, time and status line, refreshed while it runs
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from usbagent.details import ArchiveDetails
from usbagent.events import Outcome
from usbagent.fsutil import write_atomic

MAX_EVENTS = 1000
# Archives remembered, newest first. Retention keeps `keep_days` (14 by default) of nightly
# archives; 1000 covers years of them, or 41 days of hourly ones, and `status` only ever
# needs the newest few. An archive dropped from the journal is reported as unknown.
MAX_ARCHIVES = 1000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ArchiveRecord:
    """An archive a successful run wrote, as that run recorded it: what `status` trusts.

    A file that merely has an archive name (touched, copied in, truncated) is not a backup;
    one whose size and sidecar still match its record is one the job made.
    """

    name: str
    size: int
    sha256: str
    recorded: datetime  # when its run recorded the outcome: the file was complete by then

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "recorded": self.recorded.isoformat(),
        }


def archive_record(outcome: Outcome) -> ArchiveRecord | None:
    """The archive a successful archive run made, from its outcome's details, else None."""
    made = ArchiveDetails.of(outcome)
    if made is None or not outcome.ok or not made.archive or made.size is None:
        return None
    if not _SHA256.match(made.sha256):
        return None
    return ArchiveRecord(made.archive, made.size, made.sha256, outcome.time)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist or is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def journal_entries(state_dir: Path) -> list[ArchiveRecord]:
    """archives.json, newest first; entries that do not parse are skipped."""
    data = read_json(state_dir / "archives.json")
    out = []
    for item in data if isinstance(data, list) else []:
        try:
            record = ArchiveRecord(
                name=str(item["name"]),
                size=int(item["size"]),
                sha256=str(item["sha256"]),
                recorded=datetime.fromisoformat(item["recorded"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if _SHA256.match(record.sha256) and record.size >= 0:
            out.append(record)
    return out


def known_archives(
    journal: Iterable[ArchiveRecord], outcomes: Iterable[Outcome]
) -> dict[str, ArchiveRecord]:
    """Archive name -> its record, from the journal and from outcomes (a state dir written
    before the journal existed still knows its archives from events.jsonl / last/)."""
    known: dict[str, ArchiveRecord] = {}
    records = [*journal, *(r for r in map(archive_record, outcomes) if r is not None)]
    for record in sorted(records, key=lambda r: r.recorded):  # a later record wins
        known[record.name] = record
    return known


def archives(state_dir: Path, outcomes: Iterable[Outcome] = ()) -> dict[str, ArchiveRecord]:
    """Every archive a successful run recorded: the journal plus `outcomes` (the history)."""
    return known_archives(journal_entries(state_dir), outcomes)


def last(state_dir: Path, kind: str) -> Outcome | None:
    data = read_json(state_dir / "last" / f"{kind}.json")
    return Outcome.from_json(data) if data else None


def last_ok(state_dir: Path, kind: str) -> Outcome | None:
    """The newest successful outcome of `kind`, None when none was kept (or an older
    version wrote the state dir: then only the history can tell)."""
    data = read_json(state_dir / "last-ok" / f"{kind}.json")
    return Outcome.from_json(data) if data else None


def last_error(state_dir: Path) -> Outcome | None:
    data = read_json(state_dir / "last-error.json")
    return Outcome.from_json(data) if data else None


def events(state_dir: Path) -> list[Outcome]:
    """The recorded history, oldest first; unreadable lines are skipped."""
    try:
        text = (state_dir / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(Outcome.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return out
