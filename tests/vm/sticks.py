"""USB stick images made and read on the host, without a loop device where tools allow it.

A stick is a sparse file with a GPT (parted on the file) and one partition starting at
1 MiB, formatted in place: `mkfs.ext4 -E offset=`, `mkfs.vfat --offset`. exFAT has no
offset option in exfatprogs, so that one is formatted through a loop device that is always
detached again. Reading back: mtools (`IMG@@OFFSET`) for FAT; for ext4 a loop mount of a
scratch copy, where its journal is replayed (the host kernel has no exFAT: those copies are
checked by the guest).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OFFSET = 1 << 20  # the partition starts at 1 MiB
PART_NAME = "sovereign-backup"  # the GPT partition name usbagent's default [usb] labels match


@dataclass(frozen=True)
class StickImage:
    path: Path
    fs: str  # ext4 | vfat | exfat
    label: str


def _run(*cmd: str) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def make(path: Path, fs: str, size_mib: int, label: str, part_name: str = PART_NAME) -> StickImage:
    """A GPT stick image with one `fs` partition from 1 MiB to 1 MiB before the end."""
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    hint = {"ext4": "ext4", "vfat": "fat32", "exfat": "fat32"}[fs]
    end = f"{size_mib - 1}MiB"
    _run("parted", "-s", str(path), "mklabel", "gpt", "mkpart", part_name, hint, "1MiB", end)
    part_bytes = (size_mib - 2) << 20
    if fs == "ext4":
        _run("mkfs.ext4", "-q", "-F", "-L", label, "-E", f"offset={OFFSET}", str(path),
             f"{part_bytes >> 10}k")  # fmt: skip
    elif fs == "vfat":
        _run("mkfs.vfat", "-F", "32", "-n", label, "--offset", str(OFFSET // 512), str(path),
             str(part_bytes >> 10))  # fmt: skip
    else:
        with _loop(path, part_bytes) as dev:
            _run("mkfs.exfat", "-L", label, dev)
    return StickImage(path, fs, label)


@contextlib.contextmanager
def _loop(path: Path, size: int, read_only: bool = False) -> Iterator[str]:
    args = ["losetup", "-f", "--show", "-o", str(OFFSET), "--sizelimit", str(size)]
    dev = _run(*args, *(["-r"] if read_only else []), str(path)).strip()
    try:
        yield dev
    finally:
        _run("losetup", "-d", dev)


def fat_files(stick: StickImage, folder: str = "usbagent") -> dict[str, bytes]:
    """Every file in `folder` on a FAT stick image, read with mtools."""
    image = f"{stick.path}@@{OFFSET}"
    listing = _run("mdir", "-b", "-i", image, f"::/{folder}")
    files = {}
    for line in listing.splitlines():
        name = line.strip().rsplit("/", 1)[-1]
        if name:
            files[name] = subprocess.run(
                ["mtype", "-i", image, f"::/{folder}/{name}"], capture_output=True, check=True
            ).stdout
    return files


def fat_dirty(stick: StickImage) -> bool:
    """FAT32's "not cleanly unmounted" flag (bit 0x01 of BS_Reserved1 at offset 0x41)."""
    with stick.path.open("rb") as f:
        f.seek(OFFSET + 0x41)
        return bool(f.read(1)[0] & 0x01)


@contextlib.contextmanager
def _ext4_mounted(stick: StickImage) -> Iterator[Path]:
    """The stick's ext4 filesystem as the next mount would see it, read-only.

    A stick pulled or powered off mid-write has a journal to replay: `noload` would show
    the filesystem without it (stale, possibly inconsistent), and replaying on the image
    itself would change the evidence. So the journal is replayed on a sparse scratch copy.
    """
    size = stick.path.stat().st_size - 2 * OFFSET
    with tempfile.TemporaryDirectory(dir=stick.path.parent) as scratch:
        copy = Path(scratch) / "stick.img"
        _run("cp", "--sparse=always", str(stick.path), str(copy))
        mnt = Path(scratch) / "mnt"
        mnt.mkdir()
        with _loop(copy, size) as dev:
            _run("mount", "-t", "ext4", "-o", "ro", dev, str(mnt))
            try:
                yield mnt
            finally:
                _run("umount", str(mnt))


def ext4_files(stick: StickImage, folder: str = "usbagent") -> dict[str, bytes]:
    """Every file in `folder` on an ext4 stick image."""
    with _ext4_mounted(stick) as mnt:
        base = mnt / folder
        return {p.name: p.read_bytes() for p in sorted(base.iterdir()) if p.is_file()}


def ext4_root(stick: StickImage) -> list[str]:
    """The names in the root folder of an ext4 stick image."""
    with _ext4_mounted(stick) as mnt:
        return sorted(p.name for p in mnt.iterdir())


def files(stick: StickImage) -> dict[str, bytes]:
    return fat_files(stick) if stick.fs == "vfat" else ext4_files(stick)


def bad_copies(found: dict[str, bytes], want: dict[str, str]) -> list[str]:
    """The final-named files on a stick that a person could not restore from: an archive
    whose bytes are not the host's archive of that name (`want`: name -> sha256), or a
    sidecar naming another digest. `.partial` files are not final names and are skipped."""
    bad = []
    for name, data in found.items():
        if name.endswith(".age"):
            good = hashlib.sha256(data).hexdigest() == want.get(name)
        elif name.endswith(".age.sha256"):
            good = data.decode(errors="replace").split()[:1] == [
                want.get(name.removesuffix(".sha256"))
            ]
        else:
            continue
        if not good:
            bad.append(name)
    return bad
