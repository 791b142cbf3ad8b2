"""What `usbagent status` judges, read from every source into a frozen `Facts`: the archive
folder (through `health`), the state dir, the ledger, the heartbeat, systemd and the archive
job's own preflight. Reading only; every verdict is made by `statuschecks` from these facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usbagent import ledger, outbox, state, systemd
from usbagent.config import Config
from usbagent.details import unit_of
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.health import ArchiveFile, archive_facts, known_outcomes

SYSTEMD_PROPS = (
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "Result",
    "ExecMainStatus",
    "ExecMainExitTimestamp",
    "NRestarts",
    "LastTriggerUSec",
    "NextElapseUSecRealtime",
)


@dataclass(frozen=True)
class Heartbeat:
    pid: int
    time: datetime
    status: str
    alive: bool  # the pid exists and is a usbagent process
    source_alive: bool  # the agent's udev/UDisks2 event source still delivers events


@dataclass(frozen=True)
class Stick:
    uuid: str
    label: str
    last_ok_sync: datetime | None
    last_verified_copy: datetime | None
    newest_archive: str | None  # newest archive the stick holds
    free_bytes: int | None
    last_error: str | None
    last_error_time: datetime | None
    # the newest restore point the stick can restore completely (ledger.restore_point)
    restore_point: str | None = None
    restore_point_made: datetime | None = None


@dataclass(frozen=True)
class Facts:
    destination: Path
    archives: tuple[ArchiveFile, ...]  # every file with our archive name, newest first
    destination_problem: str | None  # the folder is missing or unreadable
    units: Mapping[str, systemd.Unit] | None  # None: systemd not reachable
    systemd_problem: str | None
    heartbeat: Heartbeat | None
    sticks: tuple[Stick, ...]
    last: Mapping[str, Outcome]  # newest outcome of each kind
    last_ok: Mapping[str, Outcome]  # newest successful outcome of each kind
    last_error: Outcome | None
    pending: tuple[outbox.Note, ...]  # desktop notifications nobody has seen
    # newest OnFailure record per unit: one unit's failure must not hide another's
    unit_failures: Mapping[str, Outcome] = field(default_factory=dict)
    # why the archive job's own preflight refuses to run now (None: it passes): the next
    # nightly run would fail with exactly this line
    next_run_problem: str | None = None
    # every archive a successful run recorded, present or not: a chain member gone is seen
    recorded: frozenset[str] = frozenset()


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _pid_is_usbagent(pid: int) -> bool:
    """True when `pid` runs usbagent (a reused pid of another program does not count)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"usbagent" in cmdline


def read_heartbeat(state_dir: Path) -> Heartbeat | None:
    data = state.read_json(state_dir / "heartbeat.json")
    if not isinstance(data, dict):
        return None
    pid, time = data.get("pid"), _time(data.get("time"))
    if not isinstance(pid, int) or time is None:
        return None
    return Heartbeat(
        pid=pid,
        time=time,
        status=str(data.get("status", "")),
        alive=_pid_is_usbagent(pid),
        source_alive=data.get("backend_alive") is not False,
    )


def stick_facts(record: ledger.StickRecord) -> Stick:
    """A ledger record with its times parsed (an unparsable time reads as never)."""
    newest = record.last_verified_copy or (record.archives[0] if record.archives else None)
    point = record.restore_point
    return Stick(
        uuid=record.uuid,
        label=record.label,
        last_ok_sync=_time(record.last_ok_sync),
        last_verified_copy=_time(record.last_verified_time),
        newest_archive=newest,
        free_bytes=record.free_bytes,
        last_error=record.last_error or None,
        last_error_time=_time(record.last_error_time),
        restore_point=point.archive.filename if point else None,
        restore_point_made=point.archive.created if point else None,
    )


@dataclass(frozen=True)
class _History:
    last: dict[str, Outcome]
    last_ok: dict[str, Outcome]
    unit_failures: dict[str, Outcome]
    archives: dict[str, state.ArchiveRecord]  # every archive a successful run recorded


def _history(state_dir: Path) -> _History:
    """Newest outcome per kind, newest success per kind, newest failure per unit, and the
    archives the runs made."""
    known = known_outcomes(state_dir)
    h = _History({}, {}, {}, state.archives(state_dir, known))
    for outcome in sorted(known, key=lambda o: o.time):  # oldest first: later ones win
        h.last[outcome.kind] = outcome
        if outcome.ok:
            h.last_ok[outcome.kind] = outcome
        if outcome.kind == "unit-failed":
            h.unit_failures[unit_of(outcome)] = outcome
    return h


def next_run_problem(config: Config) -> str | None:
    """What the next archive run would fail with, asked of the job's own preflight checks
    (without walking the sources for a first-run size estimate), or None if they pass."""
    try:
        from usbagent import preflight  # needs pyrage and zstandard: the job does too

        preflight.check(config, walk_sources=False)
    except UsbagentError as exc:
        return str(exc)
    except Exception as exc:  # whatever stops preflight stops the job: name it
        return f"{type(exc).__name__}: {exc}"
    return None


def _systemd_facts() -> tuple[dict[str, systemd.Unit] | None, str | None]:
    try:
        return systemd.show(systemd.UNITS, SYSTEMD_PROPS), None
    except systemd.SystemdUnavailable as exc:
        return None, str(exc)


def gather(config: Config) -> Facts:
    state_dir = config.agent.state_dir
    history = _history(state_dir)
    archives, problem = archive_facts(config, history.archives)
    units, systemd_problem = _systemd_facts()
    return Facts(
        destination=config.archive.destination,
        archives=archives,
        destination_problem=problem,
        units=units,
        systemd_problem=systemd_problem,
        heartbeat=read_heartbeat(state_dir),
        sticks=tuple(stick_facts(r) for r in ledger.sticks(state_dir)),
        last=history.last,
        last_ok=history.last_ok,
        last_error=state.last_error(state_dir),
        pending=tuple(outbox.pending(state_dir)),
        unit_failures=history.unit_failures,
        next_run_problem=next_run_problem(config),
        recorded=frozenset(history.archives),
    )
