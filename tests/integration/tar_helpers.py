"""Hostile archives in usbagent's format (tar -> zstd -> age), written on the fly, and a
snapshot of a folder tree to prove a restore changed nothing outside its target."""

from __future__ import annotations

import ast
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyrage
import zstandard

from tests.integration.archive_helpers import PREFIX, usbagent
from usbagent import naming
from usbagent.recipients import load_identities

Member = tuple[tarfile.TarInfo, bytes]


def write_sidecar(archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.with_name(archive.name + naming.SIDECAR).write_text(f"{digest}  {archive.name}\n")


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    data: bytes = b"payload\n",
    mode: int = 0o644,
    mtime: float = 1_600_000_000,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, mtime
    return info, data if info.isreg() else b""


def dumpdir(name: str, *records: str) -> Member:
    """A folder member as GNU tar's --listed-incremental writes it: its dumpdir as data."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = b"D", 0o755, 1_600_000_000
    return info, b"".join(r.encode() + b"\0" for r in records) + b"\0"


def crafted_archive(
    folder: Path, identity: Path, members: Sequence[Member], stamp: str = "20260101T000000Z"
) -> Path:
    """The members as an encrypted archive with a valid sidecar (verify's checksum passes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (recipient,) = [i.to_public() for i in load_identities(identity)]
    sealed = pyrage.encrypt(zstandard.compress(raw.getvalue()), [recipient])
    path = folder / f"{PREFIX}-{stamp}.tar.zst.age"
    path.write_bytes(sealed)
    write_sidecar(path)
    return path


def restore(archive: Path, identity: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return usbagent("restore", str(archive), "--identity", str(identity), "--to", str(target))


Snapshot = dict[str, tuple[object, ...]]


def snapshot(root: Path, skip: Path) -> Snapshot:
    """Every path under `root` (links not followed) but `skip`'s subtree: type, mode, times,
    link count, and content (sha256) or link target. Equal snapshots: nothing changed."""
    out: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in [".", *dirs, *files]:
            path = here / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                detail: object = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = str(path.readlink())
            else:
                detail = None
            key = str(path.relative_to(root))
            out[key] = (st.st_mode, st.st_mtime_ns, st.st_nlink, st.st_size, detail)
    return out


def failures(stderr: str) -> dict[str, str]:
    """`not restored 'NAME': REASON` lines of restore's stderr, as {name: reason}."""
    prefix = "usbagent restore: not restored "
    out = {}
    for line in stderr.splitlines():
        if line.startswith(prefix):
            name, _, reason = line[len(prefix) :].partition(": ")
            out[ast.literal_eval(name)] = reason  # a Python repr, as restore prints it
    return out


class Zeros(io.RawIOBase):
    """`size` zero bytes, never all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def archive_with_a_large_file(folder: Path, identity: Path, name: str, size: int) -> Path:
    """A tiny archive (zeros compress away) that restores to a `size`-byte file: restore is
    busy writing it for long enough to be interrupted."""
    compressed = io.BytesIO()
    with (
        zstandard.ZstdCompressor().stream_writer(compressed, closefd=False) as z,
        tarfile.open(fileobj=z, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        first, data = entry("first.txt")
        first.size = len(data)
        tar.addfile(first, io.BytesIO(data))
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size)))
    (recipient,) = [i.to_public() for i in load_identities(identity)]
    path = folder / f"{PREFIX}-20260102T000000Z.tar.zst.age"
    path.write_bytes(pyrage.encrypt(compressed.getvalue(), [recipient]))
    write_sidecar(path)
    return path
