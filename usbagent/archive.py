"""`usbagent archive`: tonight's encrypted archive of the sources, then retention. The
nightly job.

Level (usbagent.levels): a full every `archive.full_every_days`, increments in between,
chained: each one GNU tar's `--listed-incremental` dump of what changed since the archive
before it, so a night costs what changed that night. Any doubt about the chain in force (a
member gone, a sidecar disagreeing with the record, its snapshot missing or damaged, the
clock behind the newest archive, another selection) makes a full, and the summary says why.

Writing (usbagent.tarpipe): tar -> zstd -> age, hashed on the way. Member layout
(usbagent.selection): each source is stored under the name the user wrote, without its
leading '/': the source `/data/docs` as `data/docs/...`, which `restore --to DIR` recreates
as `DIR/data/docs/...`; a source that is a symlink is followed. The destination is excluded
wherever it lies inside a source, compared as resolved paths.

Crash safety, in this order: the archive is written as `<name>.partial`, fsynced, renamed,
the folder fsynced; the sidecar the same way; then the snapshot tar wrote (a partial in
the state dir, usbagent.snapshots) gets its final name; then the outcome is recorded. Any
failure, SIGTERM or SIGINT removes the partials (exit 1); a SIGKILL leaves partials,
removed by the next run, and the previous archive and snapshot in force. A crash after
the rename of the archive leaves it without snapshot or record: the next night is a full.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from usbagent import (
    health,
    journal,
    levels,
    naming,
    preflight,
    retention,
    selection,
    snapshots,
    state,
    tarpipe,
)
from usbagent.config import Config
from usbagent.details import ArchiveDetails, SourceDetails
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.fsutil import fsync_dir, write_atomic
from usbagent.units import human_bytes

log = logging.getLogger(__name__)


class _Interrupted(Exception):
    """SIGTERM or SIGINT arrived; raised from the signal handler to unwind and clean up."""


@dataclass(frozen=True)
class Made:
    """A complete archive, renamed to its final name, with its sidecar."""

    name: str
    path: Path
    written: tarpipe.Written
    duration: float
    level: levels.Level
    selection: str  # selection.fingerprint of the tar command, kept with its snapshot


@contextlib.contextmanager
def _signals_raise() -> Iterator[Callable[[], str | None]]:
    """Turn the first SIGTERM/SIGINT into an exception; yields "which signal came, if any".

    The exception may surface inside pyrage (which re-raises it as EncryptError), so the
    caller asks this flag instead of trusting the exception type. Later signals are ignored
    so that the cleanup they would interrupt can finish.
    """
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            return
        received.append(signal.Signals(signum).name)
        raise _Interrupted(received[0])

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _locked(destination: Path) -> Iterator[None]:
    """One archive run per destination (a manual run next to the timer would clash)."""
    fd = os.open(destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsbagentError(
                f"another `usbagent archive` is writing to {destination}; try again later"
            ) from None
        yield
    finally:
        os.close(fd)


def _free_name(destination: Path, prefix: str, level: levels.Level) -> naming.ArchiveName:
    """A name for the archive made now, at `level`, that does not exist yet and is dated
    later than every archive of ours already there: names have 1 s resolution, and two
    archives in one second would not say which came first (nor which one is in force).
    Archives dated later than the clock are the clock's problem (`levels`), not waited for."""
    full = level.full.created if level.full else None
    started = datetime.now(UTC)
    ours = (naming.parse(e.name, prefix) for e in os.scandir(destination))
    latest = max((n.created for n in ours if n and n.created <= started), default=None)
    while True:
        now = datetime.now(UTC)
        if latest is None or now.replace(microsecond=0) > latest:
            name = naming.make(prefix, now, level.level, full)
            if not any((destination / n).exists() for n in (name.filename, name.sidecar)):
                return name
        time.sleep(1.0 - now.microsecond / 1e6)  # until the next second starts


def _present(config: Config, selected: str) -> list[levels.Present]:
    """The facts `levels.decide` needs about each archive of ours in the destination; a
    member is intact by the same judgement `status` makes (`health.archive_problem`)."""
    destination, state_dir = config.archive.destination, config.agent.state_dir
    try:
        known = state.archives(state_dir, state.events(state_dir))
    except OSError as exc:
        log.warning("cannot read the record in %s (%s): making a full archive", state_dir, exc)
        known = {}
    out = []
    for f in health.archive_files(destination, config.archive_prefix, known):
        if f.parsed is None:  # archive_files found it by this very name
            continue
        intact = health.archive_problem(f) is None
        snapshot = snapshots.state(state_dir, f.name, selected) if intact else "missing"
        out.append(levels.Present(f.parsed, f.record is not None, intact, snapshot))
    return out


def make_archive(config: Config, ready: preflight.Ready) -> Made:
    """One archive (a full or the next increment) plus its sidecar in the destination; its
    snapshot is left as a partial for `commit` (no retention). Run under `_locked`."""
    destination, state_dir = config.archive.destination, config.agent.state_dir
    for leftover in ready.stale_partials:
        log.info("removing %s, left by an interrupted run", leftover)
        leftover.unlink(missing_ok=True)
    exclude = config.archive.exclude
    cmd = selection.tar_command(ready.tar, ready.sources, exclude, ready.destination)
    selected = selection.fingerprint(cmd)
    level = levels.Level(0, why="state-dir")
    try:
        snapshots.prepare(state_dir)
    except OSError as exc:
        log.error("cannot keep snapshots in %s (%s): making a full archive", state_dir, exc)
    else:
        now = datetime.now(UTC)
        symlinked = any(s.real != s.named for s in ready.sources)
        present = _present(config, selected)
        level = levels.decide(present, now, config.archive.full_every_days, symlinked)
    name = _free_name(destination, config.archive_prefix, level)
    if level.why != "state-dir":
        base = level.base.filename if level.base else None
        cmd = selection.incremental(cmd, snapshots.begin(state_dir, base, name.filename))
    job = tarpipe.Job(
        tuple(cmd),
        ready.sources,
        ready.recipients,
        config.archive.compression_level,
        increment=not level.is_full,
    )
    started = time.monotonic()
    final = destination / name.filename
    try:
        written = tarpipe.write_archive(job, final)
        write_atomic(destination / name.sidecar, naming.sidecar_line(name.filename, written.sha256))
    except BaseException:
        snapshots.discard(state_dir, name.filename)
        raise
    duration = time.monotonic() - started
    for line in written.warnings:
        log.warning("tar: %s", line)
    return Made(name.filename, final, written, duration, level, selected)


def commit(config: Config, made: Made) -> None:
    """The archive's snapshot gets its final name: it is the one in force from now on."""
    if made.level.why == "state-dir":
        return
    try:
        snapshots.commit(config.agent.state_dir, made.name, made.selection)
    except BaseException:
        snapshots.discard(config.agent.state_dir, made.name)
        raise


def made_record(config: Config, made: str) -> retention.Record | None:
    """The archives completed runs recorded in the state dir's history, plus `made`."""
    try:
        history = state.events(config.agent.state_dir)
        journal = state.archives(config.agent.state_dir)
    except OSError as exc:
        where = config.agent.state_dir
        log.warning("cannot read the history in %s (%s): retention goes by names", where, exc)
        return None
    recorded = {name: r.recorded for name, r in journal.items()}
    return retention.record_from(history, recorded, (made,))


def prune(config: Config, now: datetime, made: str) -> list[str]:
    """Apply retention in the destination; returns the file names deleted.

    Suspect archives (dated in the future, or unknown to the history) are left alone and
    named in the log: they never count as the newest archive that retention keeps.
    """
    destination = config.archive.destination
    names = [p.name for p in destination.iterdir()]
    record = made_record(config, made)
    for name in retention.suspects(names, config.archive_prefix, now, record):
        log.warning(
            "%s: dated in the future or not made by a recorded run; retention leaves it alone "
            "and does not count it as a backup (delete it if it is not one)",
            destination / name,
        )
    doomed = retention.plan(names, config.archive_prefix, now, config.archive.keep_days, record)
    for filename in doomed:
        (destination / filename).unlink(missing_ok=True)
        log.info("retention: deleted %s", filename)
    if doomed:
        fsync_dir(destination)
        snapshots.forget(config.agent.state_dir, [n for n in doomed if naming.parse(n)])
    return doomed


def _record(config: Config, outcome: Outcome) -> None:
    """Record the outcome; a broken state dir must not hide what happened to the archive."""
    try:
        journal.record(config.agent, outcome)
    except Exception as exc:
        log.error(
            "could NOT record this result in the state dir %s (%s): `usbagent status` will "
            "not show it. Result: %s",
            config.agent.state_dir,
            exc,
            outcome.summary,
        )


def _describe(exc: BaseException, signal_name: str | None) -> str:
    if signal_name:
        return f"stopped by {signal_name}; the partial archive was removed"
    if isinstance(exc, UsbagentError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return f"{type(exc).__name__}: {exc}"


def _failure_outcome(error: str, made: Made | None) -> Outcome:
    details = ArchiveDetails(archive="", error=error)
    if made is not None:  # the archive exists; only what followed failed
        details = _details(made, None, error)
    return Outcome(kind="archive", ok=False, summary=error, details=details.to_json())


def _details(made: Made, pruned: list[str] | None, error: str | None = None) -> ArchiveDetails:
    level, written = made.level, made.written
    return ArchiveDetails(
        archive=made.name,
        size=written.size,
        sha256=written.sha256,
        duration=round(made.duration, 3),
        pruned=None if pruned is None else tuple(pruned),
        warnings=written.warnings,
        sources=tuple(SourceDetails(c.path, c.members, c.bytes) for c in written.counts),
        error=error,
        level=level.level,
        full=level.full.filename if level.full else made.name,
        full_because=level.why,
    )


def archive_now(config: Config) -> Outcome:
    """Make the archive, prune, record the outcome; UsbagentError unless all of it worked."""
    made: Made | None = None
    with _signals_raise() as interrupted:
        try:
            ready = preflight.check(config)
            with _locked(config.archive.destination):
                made = make_archive(config, ready)
                step = "keeping its snapshot"
                commit(config, made)
                step = "retention"
                pruned = prune(config, datetime.now(UTC), made.name)
        except (Exception, KeyboardInterrupt) as exc:
            log.debug("archive failed", exc_info=True)
            error = _describe(exc, interrupted())
            if made is not None:
                error = f"archive {made.name} written, but {step} failed: {error}"
            _record(config, _failure_outcome(error, made))
            raise UsbagentError(error) from None
    written = made.written
    members = sum(c.members for c in written.counts)
    summary = (
        f"archive {made.name} written ({members} members, {human_bytes(written.size)}, "
        f"{made.duration:.1f} s): {levels.describe(made.level)}"
    )
    if pruned:
        summary += f", {len([n for n in pruned if naming.parse(n)])} old archive(s) pruned"
    if written.warnings:
        summary += f"; tar warned: {written.warnings[0]}"
    details = _details(made, pruned).to_json()
    outcome = Outcome(kind="archive", ok=True, summary=summary, details=details)
    _record(config, outcome)
    return outcome


def run(config: Config | None, args: Any) -> int:
    if config is None:
        raise UsbagentError("archive needs a config file (pass --config)")
    print(archive_now(config).summary)
    return 0
