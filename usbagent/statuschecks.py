"""The pure half of `usbagent status`: facts + config + now -> checks, worst first.

Every judgement lives here, over the frozen `statusfacts.Facts`, so each failure mode is a
fast unit test; the archive files' own judgements (freshness, a file matching its run) are
`health`'s, which the agent shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from usbagent import outbox, systemd
from usbagent.config import Config
from usbagent.details import ArchiveDetails, SyncDetails, unit_of
from usbagent.events import Outcome
from usbagent.health import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    ArchiveFile,
    Check,
    age,
    archive_problem,
    check_archive,
    check_chains,
    check_full_age,
    size,
)
from usbagent.statusfacts import Facts, Stick

# Worst first: a CRITICAL outranks "could not tell" because it is known to be broken.
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
# The agent refreshes its heartbeat about every 10 s; six missed beats mean it is hung.
HEARTBEAT_STALE = timedelta(seconds=60)


def when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if t else "never"


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
        held = f"holds {stick.newest_archive or 'no archive'}; {_restores(stick)}"
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


def _restores(stick: Stick) -> str:
    """The newest state the stick brings back whole (its restore point), in words."""
    if stick.restore_point is None:
        return "no complete restore point on it"
    return f"restores completely to {stick.restore_point} (made {when(stick.restore_point_made)})"


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
        check_chains(facts.archives, facts.recorded, facts.destination),
        check_full_age(facts.archives, config.archive.full_every_days, now),
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
