"""The state dir: the single source of truth `status` reads, written only atomically.

Layout (all JSON, under agent.state_dir):
  last/<kind>.json      newest Outcome of each kind (archive, sync, refused, unit-failed, ...)
  last-error.json       newest Outcome with ok=false, whatever its kind
  events.jsonl          append-only history of Outcomes (bounded, oldest dropped)
  sticks/<uuid>.json    per-stick ledger (see usbagent.ledger)
  heartbeat.json        the agent's pid, time and status line, refreshed while it runs
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from usbagent.config import AgentConfig
from usbagent.events import Outcome
from usbagent.fsutil import write_atomic

MAX_EVENTS = 1000


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist or is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def record(agent: AgentConfig, outcome: Outcome) -> None:
    """Persist an outcome: last of its kind, last error if it failed, the history, metrics.

    Every producer (archive job, sync, agent, unit-failure hook) calls this, so `status` and
    the metrics file can never disagree about what happened.
    """
    state_dir = agent.state_dir
    data = outcome.to_json()
    with _locked(state_dir):
        write_json(state_dir / "last" / f"{outcome.kind}.json", data)
        if not outcome.ok:
            write_json(state_dir / "last-error.json", data)
        _append_event(state_dir / "events.jsonl", data)
        if agent.metrics_file is not None:
            from usbagent import metrics  # deferred: most callers never configure metrics

            metrics.write(agent, outcome)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One recorder at a time: writers share `<name>.partial` temporaries, so two syncs in
    the agent's threads (or the agent and the archive job) recording at once would clobber
    each other's partial file. flock excludes threads and processes alike."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "record.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _append_event(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(data, sort_keys=True) + "\n"
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if path.stat().st_size > MAX_EVENTS * 1024:  # rough bound; trim to the newest events
        lines = path.read_text().splitlines(keepends=True)[-MAX_EVENTS:]
        write_atomic(path, "".join(lines).encode())


def last(state_dir: Path, kind: str) -> Outcome | None:
    data = read_json(state_dir / "last" / f"{kind}.json")
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
