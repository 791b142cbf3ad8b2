"""The archive file, written atomically and hashed on the way by a child process.

Why a process: pyrage encrypts in the archive job's main thread and never releases the GIL,
so a hash computed in that process (in the same thread, or in another one, which needs the
GIL to start each piece) runs one after the other with encryption, and the job is slower
than `tar | zstd | age` by the time sha256 takes (bench/archive.py). A child has its own
interpreter: it hashes on the core the pipeline leaves idle, and the parent only copies each
piece into a pipe (`os.write`, which releases the GIL).

The child reports the digest and the number of bytes it hashed; the parent compares that
count with what it sent. A child that cannot start, dies, is killed or reports anything
else raises `HashError` before the file gets its final name, and the archive run fails: the
sidecar always holds the hash of exactly the bytes written.

    python -I -m usbagent.hasher      (the child: stdin -> "<sha256 hex> <bytes>\\n")
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from usbagent.errors import UsbagentError
from usbagent.fsutil import atomic_writer

PIPE_SIZE = 1024 * 1024  # the child may fall behind by this much without stalling the writer
READ_SIZE = 1024 * 1024
COMMAND = (sys.executable, "-I", "-m", "usbagent.hasher")  # -I: no cwd, no PYTHON* env


class HashError(UsbagentError):
    """The sha256 child failed, so no trustworthy sidecar can be written."""


class Sha256Child:
    """`update()` / `hexdigest()` like hashlib's sha256, with the hashing in a child.

    Made by `sha256_child()`, which kills and reaps the child however the block ends.
    """

    def __init__(self, proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self._proc = proc
        self._stderr = stderr
        self._fd = proc.stdin.fileno() if proc.stdin else -1
        self._digest: str | None = None
        self.sent = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.sent += written
        except OSError as exc:  # EPIPE: the child is gone
            raise HashError(f"the sha256 child process failed: {self._failure(exc)}") from exc

    def hexdigest(self) -> str:
        """Close the pipe and return the child's digest, checked against the bytes sent."""
        if self._digest is None:
            self._digest = self._finish()
        return self._digest

    def _finish(self) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        report = self._proc.stdout.read(256).decode("ascii", "replace").split()
        status = self._proc.wait()
        if status != 0 or len(report) != 2:
            raise HashError(f"the sha256 child process failed: {self._failure(None)}")
        digest, count = report
        if count != str(self.sent) or len(digest) != 64:
            raise HashError(
                f"the sha256 child process hashed {count} bytes, but {self.sent} were written"
            )
        return digest

    def _failure(self, exc: OSError | None) -> str:
        """What went wrong, in the child's words when it said anything."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        self._stderr.seek(0)
        lines = self._stderr.read(16 * 1024).decode("utf-8", "replace").strip().splitlines()
        status = self._proc.returncode
        if lines:
            return lines[-1]
        if status is not None and status < 0:
            return f"killed by {signal.Signals(-status).name}"
        if status:
            return f"exit status {status}"
        return (exc.strerror or str(exc)) if exc else "no digest reported"


@contextlib.contextmanager
def sha256_child() -> Iterator[Sha256Child]:
    """A running sha256 child; killed and reaped when the block ends, however it ends."""
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        except OSError as exc:
            raise HashError(f"cannot start the sha256 child process: {exc}") from None
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            yield Sha256Child(proc, stderr)
        finally:
            proc.stdin.close()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class HashingWriter:
    """File-like writer for pyrage: writes the ciphertext and has the child hash it."""

    def __init__(self, f: BinaryIO, sha256: Sha256Child) -> None:
        self._f = f
        self.sha256 = sha256
        self.size = 0
        self.error: BaseException | None = None  # the real cause, which pyrage stringifies

    def write(self, data: bytes) -> int:
        try:
            self._f.write(data)
            self.sha256.update(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise
        self.size += len(data)
        return len(data)


@contextlib.contextmanager
def hashing_writer(final: Path, mode: int) -> Iterator[HashingWriter]:
    """`final` written through fsutil.atomic_writer and hashed by a child as it is written.

    The digest is taken (and checked) before the file gets its final name, so a failed hash
    leaves no file under it; `writer.sha256.hexdigest()` returns it afterwards.
    """
    with atomic_writer(final, mode) as f, sha256_child() as sha256:
        writer = HashingWriter(f, sha256)
        yield writer
        sha256.hexdigest()


def main() -> int:
    """The child: hash stdin to its end, then print the digest and the byte count."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the parent's to handle
    sha = hashlib.sha256()
    count = 0
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as source:
        while got := source.readinto(buffer):
            sha.update(view[:got])
            count += got
    sys.stdout.write(f"{sha.hexdigest()} {count}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
