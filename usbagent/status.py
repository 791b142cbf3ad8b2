"""`usbagent status`: the truthful health of the whole system, monitoring-plugin style.

Two halves: `gather` reads every source (archive folder, state dir, ledger, heartbeat,
systemd) into a frozen `Facts`; `evaluate` is a pure function facts + config + now -> checks.
Every judgement lives in `evaluate`, so each failure mode is a fast unit test.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from usbagent import ledger, outbox, state, systemd
from usbagent.config import Config, ConfigError
from usbagent.details import ArchiveDetails, SyncDetails, unit_of
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.health import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    ArchiveFile,
    Check,
    age,
    archive_facts,
    archive_problem,
    check_archive,
    known_outcomes,
    size,
)

EXIT = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
# Worst first: a CRITICAL outranks "could not tell" because it is known to be broken.
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
# The agent refreshes its heartbeat about every 10 s; six missed beats mean it is hung.
HEARTBEAT_STALE = timedelta(seconds=60)
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


# --- facts --------------------------------------------------------------------------------


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
    return Stick(
        uuid=record.uuid,
        label=record.label,
        last_ok_sync=_time(record.last_ok_sync),
        last_verified_copy=_time(record.last_verified_time),
        newest_archive=newest,
        free_bytes=record.free_bytes,
        last_error=record.last_error or None,
        last_error_time=_time(record.last_error_time),
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
    )


# --- formatting ---------------------------------------------------------------------------


def when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if t else "never"


# --- pure checks --------------------------------------------------------------------------


def _timer_active(units: Mapping[str, systemd.Unit] | None) -> bool:
    if units is None:
        return False
    timer = units[systemd.ARCHIVE_TIMER]
    return timer.loaded and timer.get("ActiveState") == "active"


def check_archive_files(
    archives: tuple[ArchiveFile, ...], destination: Path, last_written: Outcome | None = None
) -> Check:
    """Files with archive names that are not the archives their runs recorded.

    The newest recorded archive failing its record, or the one the last good run
    (`last_written`) wrote missing altogether, is CRITICAL (the newest backup is gone,
    whatever is older); an older one failing, or a file no run recorded that is newer than
    the newest good archive (it would pass for the newest backup by its name), is a WARNING.
    """
    name = "archive-files"
    fix = f"run `usbagent archive` now, and `usbagent verify {destination}`"
    made = ArchiveDetails.of(last_written) if last_written else None
    newest_written = made.archive if made else ""
    if last_written and newest_written and newest_written not in {a.name for a in archives}:
        return Check(
            name,
            CRITICAL,
            f"newest archive {newest_written}, written by the run at {when(last_written.time)}, "
            f"is gone from {destination}: the newest backup is lost; run `usbagent archive` "
            "now, and find out what removed it (or, if archive.destination or archive.prefix "
            "changed since, the next run clears this)",
        )
    newest_recorded = next((a for a in archives if a.record is not None), None)
    if newest_recorded is not None and (problem := archive_problem(newest_recorded)):
        return Check(
            name,
            CRITICAL,
            f"newest archive {newest_recorded.name} {problem}: it is not a backup; {fix}",
        )
    damaged = [a for a in archives if a.record is not None and archive_problem(a)]
    if damaged:
        return Check(
            name,
            WARNING,
            f"{len(damaged)} older archive(s) no longer match their run, newest "
            f"{damaged[0].name}: it {archive_problem(damaged[0])}; run `usbagent verify "
            f"{destination}`",
        )
    good = [a.created for a in archives if archive_problem(a) is None]
    unknown = [a for a in archives if a.record is None and (not good or a.created > good[0])]
    if unknown:
        return Check(
            name,
            WARNING,
            f"{len(unknown)} file(s) with an archive name that no successful usbagent run "
            f"recorded, newest {unknown[0].name} ({size(unknown[0].size)}): not counted as "
            f"backups; find out who put them in {destination}, and remove them",
        )
    if not archives:
        return Check(name, OK, "no archive files")
    return Check(
        name,
        OK,
        f"{len(archives)} archive(s), each the size its run wrote, with the sidecar it wrote",
    )


def check_next_run(problem: str | None) -> Check:
    """A run certain to fail is CRITICAL now, not after it failed at 02:00."""
    if problem is not None:
        return Check("next-run", CRITICAL, f"the next archive run will fail: {problem}")
    return Check(
        "next-run",
        OK,
        "preflight passes (recipients, sources, destination writable, GNU tar, encryption, "
        "free space)",
    )


def check_timer(units: Mapping[str, systemd.Unit] | None, problem: str | None) -> Check:
    if units is None:
        # Informational, not UNKNOWN: archive freshness above is judged from the files and
        # stays authoritative, so a machine without systemd is not an unknown state.
        return Check("archive-timer", OK, f"systemd not available ({problem}): timer not checked")
    timer = units[systemd.ARCHIVE_TIMER]
    if not timer.loaded:
        return Check(
            "archive-timer",
            WARNING,
            f"{systemd.ARCHIVE_TIMER} is not installed: no nightly archives (run usbagent install)",
        )
    enabled, active = timer.get("UnitFileState"), timer.get("ActiveState")
    if enabled not in ("enabled", "enabled-runtime") or active != "active":
        return Check(
            "archive-timer",
            WARNING,
            f"{systemd.ARCHIVE_TIMER} is {enabled or '?'} and {active or '?'}: no nightly "
            f"archives (systemctl enable --now {systemd.ARCHIVE_TIMER})",
        )
    return Check(
        "archive-timer",
        OK,
        f"active; last run {when(timer.time('LastTriggerUSec'))}, "
        f"next {when(timer.time('NextElapseUSecRealtime'))}",
    )


def _newer(a: Outcome | None, than: Outcome | None) -> bool:
    return a is not None and (than is None or a.time > than.time)


def check_archive_job(facts: Facts) -> Check:
    """The last archive run, as systemd and the state dir recorded it."""
    ok = facts.last_ok.get("archive")
    if facts.units is not None:
        service = facts.units[systemd.ARCHIVE_SERVICE]
        result = service.get("Result")
        exited = service.time("ExecMainExitTimestamp")
        if service.loaded and result not in ("", "success"):
            text = (
                f"{systemd.ARCHIVE_SERVICE} failed at {when(exited)} "
                f"(Result={result}, exit status {service.get('ExecMainStatus') or '?'})"
            )
            if ok is not None and exited is not None and ok.time > exited:
                return Check("archive-job", WARNING, f"{text}; a later archive succeeded")
            return Check("archive-job", CRITICAL, text)
    unit_failed = facts.unit_failures.get(systemd.ARCHIVE_SERVICE)
    if unit_failed is not None and _newer(unit_failed, ok):
        return Check(
            "archive-job",
            CRITICAL,
            f"archive job failed at {when(unit_failed.time)}: {unit_failed.summary}",
        )
    last = facts.last.get("archive")
    if last is not None and not last.ok and _newer(last, ok):
        return Check(
            "archive-job", CRITICAL, f"last archive run failed at {when(last.time)}: {last.summary}"
        )
    if last is None:
        return Check("archive-job", OK, "no archive run recorded yet")
    return Check("archive-job", OK, f"last run succeeded at {when(last.time)}: {last.summary}")


def check_agent(facts: Facts, now: datetime) -> Check:
    hb = facts.heartbeat
    service = facts.units[systemd.AGENT_SERVICE] if facts.units is not None else None
    unit_note = ""
    if service is not None and service.loaded:
        restarts = service.number("NRestarts") or 0
        unit_note = f"; {systemd.AGENT_SERVICE} {service.get('ActiveState')}" + (
            f", restarted {restarts} times" if restarts else ""
        )
    failed = facts.unit_failures.get(systemd.AGENT_SERVICE)
    if failed is not None and (hb is None or not hb.alive or failed.time > hb.time):
        unit_note += f"; {when(failed.time)}: {failed.summary}"
    if hb is None:
        return Check(
            "agent",
            CRITICAL,
            f"the agent has never run (no heartbeat in the state dir){unit_note}: "
            f"sticks are not being synced (start {systemd.AGENT_SERVICE})",
        )
    beat_age = now - hb.time
    if not hb.alive:
        return Check(
            "agent",
            CRITICAL,
            f"the agent is not running (pid {hb.pid} gone; last heartbeat "
            f"{when(hb.time)}, {age(beat_age)} ago){unit_note}",
        )
    if not hb.source_alive:
        return Check(
            "agent",
            CRITICAL,
            f"the agent (pid {hb.pid}) runs but its device event source is gone: sticks "
            f"will not be noticed{unit_note}",
        )
    if beat_age > HEARTBEAT_STALE:
        return Check(
            "agent",
            CRITICAL,
            f"the agent (pid {hb.pid}) is alive but its last heartbeat is {age(beat_age)} "
            f"old: it is hung{unit_note}",
        )
    return Check(
        "agent",
        OK,
        f"running (pid {hb.pid}), heartbeat {age(beat_age)} ago: {hb.status}{unit_note}",
    )


def check_sticks(
    sticks: tuple[Stick, ...], labels: tuple[str, ...], stale_after_days: float, now: datetime
) -> list[Check]:
    """One check per known stick; a stick not synced lately is a reminder, not an alarm."""
    if not sticks:
        return [
            Check(
                "sticks",
                WARNING,
                f"no backup stick has ever been synced: plug in a stick labeled {labels[0]}",
            )
        ]
    checks = []
    limit = timedelta(days=stale_after_days)
    for stick in sticks:
        name = f"stick {stick.label or '?'} ({stick.uuid})"
        held = f"holds {stick.newest_archive or 'no archive'}"
        failed_since = stick.last_error_time is not None and (
            stick.last_ok_sync is None or stick.last_error_time > stick.last_ok_sync
        )
        if failed_since:
            checks.append(
                Check(
                    name,
                    WARNING,
                    f"last attempt failed at {when(stick.last_error_time)}: {stick.last_error}; "
                    f"last good sync {when(stick.last_ok_sync)}; {held}",
                )
            )
        elif stick.last_ok_sync is None:
            checks.append(Check(name, WARNING, f"never synced successfully; {held}"))
        elif now - stick.last_ok_sync > limit:
            checks.append(
                Check(
                    name,
                    WARNING,
                    f"last synced {age(now - stick.last_ok_sync)} ago (reminder after "
                    f"{stale_after_days:g} d): plug it in; {held}",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    OK,
                    f"last verified copy {when(stick.last_verified_copy or stick.last_ok_sync)}; "
                    f"{held}",
                )
            )
    return checks


def describe_sync(outcome: Outcome) -> str:
    d = SyncDetails.of(outcome)
    parts = [f"{d.label or '?'} ({d.uuid or '?'}) at {when(outcome.time)}"]
    if d.copied is not None:
        verified = "?" if d.verified is None else d.verified
        parts.append(f"{len(d.copied)} copied, {verified} verified")
    if d.free_bytes is not None:
        parts.append(f"{size(d.free_bytes)} free")
    return ", ".join(parts) + f": {outcome.summary}"


def check_last_sync(facts: Facts) -> Check:
    last, ok = facts.last.get("sync"), facts.last_ok.get("sync")
    if last is None:
        return Check("last-sync", OK, "no stick sync recorded yet")
    if not last.ok and _newer(last, ok):
        return Check("last-sync", WARNING, f"failed: {describe_sync(last)}")
    return Check("last-sync", OK, describe_sync(last))


def _resolved(error: Outcome, facts: Facts) -> bool:
    """Has something newer made this error moot (the same job succeeded since)?"""
    if error.kind in ("archive", "stale"):
        return _newer(facts.last_ok.get("archive"), error)
    if error.kind in ("sync", "refused", "stick-recognised"):
        return _newer(facts.last_ok.get("sync"), error)
    if error.kind == "unit-failed":
        if unit_of(error) == systemd.AGENT_SERVICE:
            hb = facts.heartbeat
            return hb is not None and hb.alive and hb.time > error.time
        return _newer(facts.last_ok.get("archive"), error)
    return False


def check_last_error(facts: Facts) -> Check:
    error = facts.last_error
    if error is None:
        return Check("last-error", OK, "no error recorded")
    text = f"{error.kind} at {when(error.time)}: {error.summary}"
    if _resolved(error, facts):
        return Check("last-error", OK, f"resolved since: {text}")
    severity = WARNING if error.kind in ("sync", "refused", "stick-recognised") else CRITICAL
    return Check("last-error", severity, text)


def check_notifications(pending: tuple[outbox.Note, ...]) -> Check:
    if not pending:
        return Check("notifications", OK, "no undelivered desktop notifications")
    newest = pending[-1]
    text = (
        f"{len(pending)} desktop notification(s) not delivered (no graphical session); "
        f"newest {when(newest.time)}: {newest.summary}"
    )
    urgent = any(n.urgency >= outbox.CRITICAL for n in pending)
    return Check("notifications", WARNING if urgent else OK, text)


def evaluate(facts: Facts, config: Config, now: datetime) -> list[Check]:
    """All checks, worst first (stable order among equals)."""
    checks = [
        check_archive(
            facts.archives,
            facts.destination_problem,
            facts.destination,
            config.agent.stale_after_hours,
            now,
            _timer_active(facts.units),
        ),
        check_archive_files(facts.archives, facts.destination, facts.last_ok.get("archive")),
        check_next_run(facts.next_run_problem),
        check_archive_job(facts),
        check_timer(facts.units, facts.systemd_problem),
        check_agent(facts, now),
        *check_sticks(facts.sticks, config.usb.labels, config.agent.usb_stale_after_days, now),
        check_last_sync(facts),
        check_last_error(facts),
        check_notifications(facts.pending),
    ]
    return sorted(checks, key=lambda c: -SEVERITY[c.state])


def overall(checks: list[Check]) -> str:
    return max((c.state for c in checks), key=SEVERITY.__getitem__, default=UNKNOWN)


# --- the agent's periodic freshness check ---------------------------------------------------


# --- command --------------------------------------------------------------------------------


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
