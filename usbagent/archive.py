"""`usbagent archive`: one encrypted archive of the sources, then retention. The nightly job.

Pipeline, one pass, constant memory (measured in bench/archive.py):

    GNU tar (subprocess) -> pipe -> zstandard (worker threads) -> pyrage (age) -> sha256 + file

GNU tar reads the files because Python's tarfile is ~3x slower on many small files; zstd
compresses in its own threads; pyrage encrypts in this thread; a child process hashes the
ciphertext as it is written (usbagent.hasher), so the `.sha256` sidecar costs no second read.

Member layout (usbagent.selection): each source is stored under the name the user wrote,
without its leading '/': the source `/data/docs` as `data/docs/...`, which `restore --to DIR`
recreates as `DIR/data/docs/...`; a source that is a symlink is followed. The destination is
excluded wherever it lies inside a source, compared as resolved paths.

What was stored is counted per source from tar's stream as it passes (usbagent.tarstream)
and recorded in the outcome; a source that has content but yielded nothing fails the run
before the archive gets its final name.

Crash safety: the archive is written as `<name>.partial`, fsynced, renamed, the folder
fsynced, then the sidecar is written the same way. Any failure, SIGTERM or SIGINT removes
the partial (exit 1); a SIGKILL leaves only a `.partial`, removed by the next run.

tar exit status 1 ("file changed as we read it", "file removed before we read it") keeps the
archive: every other file in it is good, and failing would leave no archive at all for data
that is always in use (logs, mailboxes). The files concerned are logged as warnings and
listed in the recorded outcome. Any other tar failure fails the run. A source whose files
all vanished during the run (exit 1, "File removed before we read it") is judged by what
is on disk afterwards: empty now, an empty source is fine; not empty, the run fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

import pyrage
import zstandard

from usbagent import hasher, journal, naming, preflight, retention, selection, state
from usbagent.config import Config
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.fsutil import fsync_dir, write_atomic
from usbagent.tarstream import SourceCount, Tally, yielded_nothing
from usbagent.units import human_bytes

log = logging.getLogger(__name__)

# Memory is dominated by zstd's worker buffers; these bound it (bench/archive.py: peak RSS
# ~70 MB with them, ~225 MB with zstd's defaults of 8 MiB jobs and 1 MiB reads):
READ_SIZE = 128 * 1024  # bytes read from tar per step (glibc's mmap threshold)
ZSTD_JOB_SIZE = 4 * 1024 * 1024  # input per zstd worker job
ZSTD_WORKERS = min(4, os.cpu_count() or 1)  # tar and age each use one core; more buys nothing
ARCHIVE_MODE = 0o640
MAX_WARNINGS = 20  # tar warning lines kept in the recorded outcome


class _Interrupted(Exception):
    """SIGTERM or SIGINT arrived; raised from the signal handler to unwind and clean up."""


@dataclass(frozen=True)
class Made:
    """A complete archive, renamed to its final name, with its sidecar."""

    name: str
    path: Path
    size: int
    sha256: str
    duration: float
    warnings: tuple[str, ...]
    sources: tuple[SourceCount, ...]


class _CompressedTar(io.RawIOBase):
    """Raw reader of tar's output, zstd-compressed, in bounded pieces.

    pyrage pulls 8 KiB per call; wrapped in an io.BufferedReader (`reader()`), those calls
    are served in C from a 1 MiB buffer and only refills come here. Memory is bounded by one
    READ_SIZE step, its compressed output and zstd's jobs.
    """

    def __init__(self, source: io.BufferedReader, level: int, tally: Tally) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=ZSTD_WORKERS, job_size=ZSTD_JOB_SIZE, write_checksum=1
        )
        self._zstd = zstandard.ZstdCompressor(compression_params=params).compressobj()
        self._source = source
        self._tally = tally
        self._chunk = bytearray(READ_SIZE)  # reused: no allocation per step
        self._view = memoryview(self._chunk)
        self._buf = b""
        self._pos = 0
        self._eof = False
        self.error: BaseException | None = None  # the real cause, which pyrage stringifies

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            while self._pos >= len(self._buf):
                if self._eof:
                    return 0
                got = self._source.readinto(self._chunk)
                if got:
                    self._tally.feed(self._view[:got])
                    self._buf = self._zstd.compress(self._view[:got])
                else:
                    self._buf = self._zstd.flush()
                    self._eof = True
                self._pos = 0
            n = min(len(buffer), len(self._buf) - self._pos)
            buffer[:n] = self._buf[self._pos : self._pos + n]
            self._pos += n
            return n
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def reader(self) -> io.BufferedReader:
        return io.BufferedReader(self, buffer_size=1024 * 1024)


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


def _free_name(destination: Path, prefix: str) -> naming.ArchiveName:
    """A name for an archive made now that does not exist yet (names have 1 s resolution)."""
    while True:
        now = datetime.now(UTC)
        name = naming.make(prefix, now)
        if not any((destination / n).exists() for n in (name.filename, name.sidecar)):
            return name
        time.sleep(1.0 - now.microsecond / 1e6)  # until the next second starts


def _tar_messages(errors: IO[bytes]) -> list[str]:
    errors.seek(0)
    text = errors.read(64 * 1024).decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.strip()]


def _check_tar(status: int, messages: list[str]) -> tuple[str, ...]:
    """Warnings to keep for exit status 0/1; raise for any other status (see module doc)."""
    if status in (0, 1):
        return tuple(messages[:MAX_WARNINGS])
    detail = messages[-1] if messages else "no message"
    if status < 0:
        raise UsbagentError(f"tar was killed by {signal.Signals(-status).name} ({detail})")
    raise UsbagentError(f"tar failed with exit status {status}: {detail}")


def _stream_failure(exc: BaseException, *causes: BaseException | None) -> BaseException:
    """The real error behind a pyrage EncryptError (it only keeps the text of a cause)."""
    for cause in causes:
        if cause is not None:
            return cause
    return exc


def _has_entries(folder: Path) -> bool:
    """Whether the folder holds anything; when that cannot be read, assume it does."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return True


def _hollow(counts: tuple[SourceCount, ...], sources: tuple[selection.Source, ...]) -> list[str]:
    """Sources (as named) that have content on disk but yielded nothing (see tarstream)."""
    out = []
    for count, source in zip(counts, sources, strict=True):
        is_dir = source.real.is_dir()
        if yielded_nothing(count, is_dir, is_dir and _has_entries(source.real)):
            out.append(count.path)
    return out


@contextlib.contextmanager
def _tar(
    cmd: list[str], errors: IO[bytes]
) -> Iterator[tuple[subprocess.Popen[bytes], io.BufferedReader]]:
    """GNU tar writing to a pipe; killed and reaped however the block ends."""
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
    except OSError as exc:
        raise UsbagentError(f"cannot start {cmd[0]}: {exc.strerror or exc}") from None
    stdout = cast(io.BufferedReader, proc.stdout)  # Popen's default: buffered
    with contextlib.suppress(OSError):  # let tar run ahead of us: 1 MiB instead of 64 KiB
        fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, 1024 * 1024)
    try:
        yield proc, stdout
    finally:
        stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _check_contents(tally: Tally, sources: tuple[selection.Source, ...]) -> tuple[SourceCount, ...]:
    """The counts, unless the archive lacks a source or holds itself (then UsbagentError)."""
    if tally.own is not None:
        where = Path("/", tally.own).parent
        raise UsbagentError(
            f"the archive would contain itself: tar reached the destination as {where} (a bind "
            "mount, or another path that does not resolve to it); exclude that path with "
            "archive.exclude, or move archive.destination; no archive was kept"
        )
    counts = tally.counts()
    hollow = _hollow(counts, sources)
    if hollow:
        raise UsbagentError(
            f"source {', '.join(hollow)} yielded nothing although it is not empty (all of it "
            "excluded by archive.exclude?); no archive was kept"
        )
    return counts


def write_archive(
    config: Config, ready: preflight.Ready, final: Path
) -> tuple[int, str, tuple[str, ...], tuple[SourceCount, ...]]:
    """tar -> zstd -> age into `final` atomically; (size, sha256 hex, tar warnings, counts).

    The partial file exists before tar starts, so a tar that reaches the destination by a
    path no resolving could foresee meets it (Tally.own) and the run fails. Every check on
    the contents raises inside the writer: the partial goes, nothing gets the final name.
    """
    exclude = config.archive.exclude
    cmd = selection.tar_command(ready.tar, ready.sources, exclude, ready.destination)
    own = final.name + naming.PARTIAL
    tally = Tally([(str(s.named), s.member) for s in ready.sources], own)
    log.debug("running %s", " ".join(cmd))
    with tempfile.TemporaryFile() as errors:
        try:
            with (
                hasher.hashing_writer(final, ARCHIVE_MODE) as writer,
                _tar(cmd, errors) as (proc, stdout),
            ):
                reader = _CompressedTar(stdout, config.archive.compression_level, tally)
                try:
                    pyrage.encrypt_io(reader.reader(), writer, list(ready.recipients))
                except pyrage.EncryptError as exc:
                    raise _stream_failure(exc, reader.error, writer.error) from exc
                warnings = _check_tar(proc.wait(), _tar_messages(errors))
                counts = _check_contents(tally, ready.sources)
        except OSError as exc:  # ENOSPC, EIO from write or fsync: name the file and the cause
            raise UsbagentError(
                f"writing {final.parent / own} failed: {exc.strerror or exc}"
            ) from exc
    return writer.size, writer.sha256.hexdigest(), warnings, counts


def make_archive(config: Config) -> Made:
    """Preflight, then one archive plus sidecar in the destination (no retention)."""
    ready = preflight.check(config)
    destination = config.archive.destination
    with _locked(destination):
        for leftover in ready.stale_partials:
            log.info("removing %s, left by an interrupted run", leftover)
            leftover.unlink(missing_ok=True)
        name = _free_name(destination, config.archive_prefix)
        started = time.monotonic()
        final = destination / name.filename
        size, digest, warnings, counts = write_archive(config, ready, final)
        write_atomic(destination / name.sidecar, naming.sidecar_line(name.filename, digest))
        duration = time.monotonic() - started
    for line in warnings:
        log.warning("tar: %s", line)
    return Made(name.filename, final, size, digest, duration, warnings, counts)


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
    details: dict[str, Any] = {"error": error}
    if made is not None:  # the archive exists; only retention failed
        details.update(archive=made.name, size=made.size, sha256=made.sha256)
    return Outcome(kind="archive", ok=False, summary=error, details=details)


def archive_now(config: Config) -> Outcome:
    """Make the archive, prune, record the outcome; UsbagentError unless all of it worked."""
    made: Made | None = None
    with _signals_raise() as interrupted:
        try:
            made = make_archive(config)
            pruned = prune(config, datetime.now(UTC), made.name)
        except (Exception, KeyboardInterrupt) as exc:
            log.debug("archive failed", exc_info=True)
            error = _describe(exc, interrupted())
            if made is not None:
                error = f"archive {made.name} written, but retention failed: {error}"
            _record(config, _failure_outcome(error, made))
            raise UsbagentError(error) from None
    members = sum(c.members for c in made.sources)
    summary = (
        f"archive {made.name} written ({members} members, {human_bytes(made.size)}, "
        f"{made.duration:.1f} s)"
    )
    if pruned:
        summary += f", {len([n for n in pruned if naming.parse(n)])} old archive(s) pruned"
    if made.warnings:
        summary += f"; tar warned: {made.warnings[0]}"
    details = {
        "archive": made.name,
        "size": made.size,
        "duration": round(made.duration, 3),
        "sha256": made.sha256,
        "pruned": pruned,
        "warnings": list(made.warnings),
        "sources": [asdict(c) for c in made.sources],
    }
    outcome = Outcome(kind="archive", ok=True, summary=summary, details=details)
    _record(config, outcome)
    return outcome


def run(config: Config | None, args: Any) -> int:
    if config is None:
        raise UsbagentError("archive needs a config file (pass --config)")
    print(archive_now(config).summary)
    return 0
