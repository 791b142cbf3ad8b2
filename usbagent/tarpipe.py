"""The archive writer: GNU tar -> zstd -> age -> sha256 + file, one pass, constant memory.

Pipeline (measured in bench/archive.py):

    GNU tar (subprocess) -> pipe -> zstandard (worker threads) -> pyrage (age) -> sha256 + file

GNU tar reads the files because Python's tarfile is ~3x slower on many small files; zstd
compresses in its own threads; pyrage encrypts in this thread and the ciphertext is hashed
as it is written, so the `.sha256` sidecar costs no second read.

What was stored is counted per source from tar's stream as it passes (usbagent.tarstream);
a source that has content but yielded nothing fails the run before the archive gets its
final name. An increment yields each folder's listing even when nothing in it changed, so
an unchanged night passes, while a source that is gone fails before tar starts (preflight)
and one whose contents became excluded fails on the full that a changed selection forces.

tar exit status 1 ("file changed as we read it", "file removed before we read it") keeps the
archive: every other file in it is good, and failing would leave no archive at all for data
that is always in use (logs, mailboxes). The files concerned are returned as warnings. Any
other tar failure fails the run. A source whose files all vanished during the run (exit 1,
"File removed before we read it") is judged by what is on disk afterwards: empty now, an
empty source is fine; not empty, the run fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import pyrage
import zstandard

from usbagent import naming, selection
from usbagent.errors import UsbagentError
from usbagent.fsutil import atomic_writer
from usbagent.recipients import Recipient
from usbagent.tarstream import SourceCount, Tally, yielded_nothing

log = logging.getLogger(__name__)


# Memory is dominated by zstd's worker buffers; these bound it (bench/archive.py: peak RSS
# ~70 MB with them, ~225 MB with zstd's defaults of 8 MiB jobs and 1 MiB reads):
READ_SIZE = 128 * 1024  # bytes read from tar per step (glibc's mmap threshold)
ZSTD_JOB_SIZE = 4 * 1024 * 1024  # input per zstd worker job
ZSTD_WORKERS = min(4, os.cpu_count() or 1)  # tar and age each use one core; more buys nothing
ARCHIVE_MODE = 0o640
MAX_WARNINGS = 20  # tar warning lines kept in the recorded outcome


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


class _HashingWriter:
    """File-like writer for pyrage: writes the ciphertext and hashes it on the way."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self._f.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


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


def _hollow(
    counts: tuple[SourceCount, ...], sources: tuple[selection.Source, ...], increment: bool
) -> list[str]:
    """Sources (as named) that have content on disk but yielded nothing (see tarstream)."""
    out = []
    for count, source in zip(counts, sources, strict=True):
        is_dir = source.real.is_dir()
        entries = is_dir and _has_entries(source.real)
        if yielded_nothing(count, is_dir, entries, increment):
            out.append(count.path)
    return out


@contextlib.contextmanager
def _tar(
    cmd: tuple[str, ...], errors: IO[bytes]
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


def _check_contents(
    tally: Tally, sources: tuple[selection.Source, ...], increment: bool
) -> tuple[SourceCount, ...]:
    """The counts, unless the archive lacks a source or holds itself (then UsbagentError)."""
    if tally.own is not None:
        where = Path("/", tally.own).parent
        raise UsbagentError(
            f"the archive would contain itself: tar reached the destination as {where} (a bind "
            "mount, or another path that does not resolve to it); exclude that path with "
            "archive.exclude, or move archive.destination; no archive was kept"
        )
    counts = tally.counts()
    hollow = _hollow(counts, sources, increment)
    if hollow:
        raise UsbagentError(
            f"source {', '.join(hollow)} yielded nothing although it is not empty (all of it "
            "excluded by archive.exclude?); no archive was kept"
        )
    return counts


@dataclass(frozen=True)
class Job:
    """One archive to write: the tar command (usbagent.selection), what it must contain,
    and for whom. `increment`: tar dumps only what changed since its snapshot."""

    cmd: tuple[str, ...]
    sources: tuple[selection.Source, ...]
    recipients: tuple[Recipient, ...]
    compression_level: int
    increment: bool


@dataclass(frozen=True)
class Written:
    """The archive under its final name: its size, sha256, tar's warnings, what it holds."""

    size: int
    sha256: str
    warnings: tuple[str, ...]
    counts: tuple[SourceCount, ...]


def write_archive(job: Job, final: Path) -> Written:
    """tar -> zstd -> age into `final` atomically.

    The partial file exists before tar starts, so a tar that reaches the destination by a
    path no resolving could foresee meets it (Tally.own) and the run fails. Every check on
    the contents raises inside the writer: the partial goes, nothing gets the final name.
    """
    own = final.name + naming.PARTIAL
    tally = Tally([(str(s.named), s.member) for s in job.sources], own)
    log.debug("running %s", " ".join(job.cmd))
    with tempfile.TemporaryFile() as errors:
        try:
            with atomic_writer(final, ARCHIVE_MODE) as f, _tar(job.cmd, errors) as (proc, out):
                reader = _CompressedTar(out, job.compression_level, tally)
                writer = _HashingWriter(f)
                try:
                    pyrage.encrypt_io(reader.reader(), writer, list(job.recipients))
                except pyrage.EncryptError as exc:
                    raise _stream_failure(exc, reader.error, writer.error) from exc
                warnings = _check_tar(proc.wait(), _tar_messages(errors))
                counts = _check_contents(tally, job.sources, job.increment)
        except OSError as exc:  # ENOSPC, EIO from write or fsync: name the file and the cause
            raise UsbagentError(
                f"writing {final.parent / own} failed: {exc.strerror or exc}"
            ) from exc
    return Written(writer.size, writer.sha256.hexdigest(), warnings, counts)
