"""Read an archive back: age (pyrage) -> zstd -> a streaming tarfile, in constant memory.

pyrage only offers a push API (`decrypt_io` writes into a writer) while tarfile pulls, so
decryption runs in a thread that writes into a pipe and this thread reads the other end.
os.write on the pipe releases the GIL, so the two overlap. Every way this can fail (wrong
key, flipped byte, truncation, garbage after the end) becomes one UsbagentError line.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyrage
import zstandard

from usbagent.errors import UsbagentError
from usbagent.recipients import Identity

DRAIN_SIZE = 1024 * 1024
_GNU_MAGIC = slice(257, 265)
_PREFIX = slice(345, 500)


class GnuTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo, reading GNU headers as GNU tar writes them.

    In `--listed-incremental` mode GNU tar stores each member's atime and ctime where a ustar
    header keeps its name prefix (the old GNU header layout). Python's tarfile (3.11) reads
    them as that prefix and names the member `15303663331/data/...`; a GNU header never
    holds a prefix (long names get their own member), so it is ignored there.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> GnuTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if buf[_GNU_MAGIC] == tarfile.GNU_MAGIC and any(buf[_PREFIX]):
            name = tarfile.nts(buf[0:100], encoding, errors)  # type: ignore[attr-defined]
            info.name = name.rstrip("/") if info.isdir() else name
        return info


class _PipeWriter:
    """Writer for pyrage: pushes plaintext into a pipe until the reader closes it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)


class _Decryptor(threading.Thread):
    """Runs pyrage.decrypt_io(archive -> pipe); keeps the error for the reading side."""

    def __init__(self, archive: BinaryIO, fd: int, identities: list[Identity]) -> None:
        super().__init__(name="usbagent-decrypt", daemon=True)
        self._archive = archive
        self._fd = fd
        self._identities = identities
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            pyrage.decrypt_io(self._archive, _PipeWriter(self._fd), self._identities)
        except Exception as exc:
            self.error = exc
        finally:
            os.close(self._fd)


def _explain(exc: Exception) -> str:
    text = str(exc)
    if "No matching keys" in text or "no identity matched" in text.lower():
        return "none of the identities can decrypt it (wrong key?)"
    if "BrokenPipe" in text:
        return "reading stopped early"
    return f"decryption failed, the file is damaged or truncated ({text})"


@contextlib.contextmanager
def open_tar(path: Path, identities: list[Identity]) -> Iterator[tarfile.TarFile]:
    """The archive's tar stream (mode "r|": members in order, each read once).

    On leaving, the rest of the stream is read to its end, so corruption after the last
    member (or in age's final authentication tag) is still detected.
    """
    try:
        archive = path.open("rb")
    except OSError as exc:
        raise UsbagentError(f"cannot open {path}: {exc.strerror}") from None
    rfd, wfd = os.pipe()
    decryptor = _Decryptor(archive, wfd, identities)
    plain = os.fdopen(rfd, "rb")
    decryptor.start()
    try:
        try:
            zstd = zstandard.ZstdDecompressor().stream_reader(plain, read_across_frames=True)
            with tarfile.open(fileobj=zstd, mode="r|", tarinfo=GnuTarInfo) as tar:
                yield tar
            while zstd.read(DRAIN_SIZE):
                pass
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            plain.close()  # unblocks the decryptor (EPIPE) so its own error can be seen
            decryptor.join()
            if decryptor.error is not None:
                raise UsbagentError(_explain(decryptor.error)) from None
            kind = "zstd" if isinstance(exc, zstandard.ZstdError) else "tar"
            raise UsbagentError(f"the {kind} stream inside is damaged: {exc}") from None
    finally:
        plain.close()
        decryptor.join()
        archive.close()
    if decryptor.error is not None:
        raise UsbagentError(_explain(decryptor.error))


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members in order, forgetting each once the caller is done with it.

    tarfile's stream mode keeps every TarInfo it has seen (tar.members); an archive with
    millions of files would grow memory without bound. Links are still extracted by path.
    """
    while (member := tar.next()) is not None:
        yield member
        tar.members.clear()  # type: ignore[attr-defined]  # real attribute, not in typeshed
