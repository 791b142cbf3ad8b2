"""Which tar members a restore may create, decided from the member alone (pure).

An archive is untrusted input. `classify` turns a TarInfo into an `Entry` (normalised path
components, kind, mode, time, link) or the reason it is refused. Restore (usbagent.extract)
and `verify --identity` share it, so verify fails an archive that restore would not restore
whole.

Symlinks are restored as the archive has them, absolute or climbing targets included (as
GNU tar does: `/etc/localtime -> /usr/share/zoneinfo/UTC` must come back as it was). That is
safe by construction, not by looking at targets: usbagent.extract creates symlinks after every
other member and never follows one (each path component is opened with O_NOFOLLOW), so no
member is ever written through a link, chained or not (the CVE-2025-4517 pattern).

GNU tar's incremental folder members (type 'D') are folders whose data is a dumpdir
(usbagent.dumpdir checks it); Python 3.11's tarfile does not know the type but yields them.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Literal

Kind = Literal["dir", "file", "symlink", "hardlink"]

# What a restored file keeps of its mode: permission bits without setuid/setgid/sticky and
# without group/other write; the owner can always read and write it (and enter a folder).
FILE_MODE_MASK = 0o755
FILE_MODE_MIN = 0o600
DIR_MODE_MIN = 0o700
DUMPDIR = b"D"  # GNU tar's incremental folder member: a folder whose data lists its entries
MAX_DUMPDIR = 256 * 1024 * 1024  # a folder of millions of names; held in memory while applied


@dataclass(frozen=True)
class Entry:
    """A member restore may create: `parts` are its path components under the target."""

    parts: tuple[str, ...]  # () is the target folder itself (a `./` member)
    kind: Kind
    mode: int
    mtime_ns: int
    size: int = 0
    link: str = ""  # symlink: the target as stored; hard link: the source's name
    link_parts: tuple[str, ...] = ()  # hard link: the source's path components
    dumpdir: bool = False  # a folder with a dumpdir (usbagent.dumpdir) as its data


def split(name: str) -> tuple[str, ...]:
    """Path components of a stored name, without empty and `.` components."""
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _type_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member's type is not restored: devices, fifos and types tar does not define."""
    if member.isdir() or member.isreg() or member.issym() or member.islnk():
        return None
    if member.type == DUMPDIR:
        return None if member.size <= MAX_DUMPDIR else "dumpdir larger than 256 MiB"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    return f"unsupported member type {member.type!r}"


def _kind(member: tarfile.TarInfo) -> Kind:
    if member.isdir() or member.type == DUMPDIR:
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "file"


def _mtime_ns(member: tarfile.TarInfo) -> int | None:
    try:
        return int(member.mtime * 1_000_000_000)
    except (OverflowError, ValueError, TypeError):
        return None


def classify(member: tarfile.TarInfo) -> Entry | str:
    """The member as an Entry, or why restore refuses it."""
    name = member.name
    if name.startswith("/"):
        return "absolute path"
    parts = split(name)
    if ".." in parts:
        return "'..' in the path"
    problem = _type_problem(member)
    if problem:
        return problem
    kind = _kind(member)
    if not parts and kind != "dir":
        return "member has no name"
    mtime_ns = _mtime_ns(member)
    if mtime_ns is None:
        return f"invalid modification time {member.mtime!r}"
    floor = DIR_MODE_MIN if kind == "dir" else FILE_MODE_MIN
    mode = (member.mode & FILE_MODE_MASK) | floor
    if kind == "symlink":
        if not member.linkname:
            return "symlink with an empty target"
        return Entry(parts, "symlink", mode, mtime_ns, link=member.linkname)
    if kind == "hardlink":
        source = member.linkname
        if source.startswith("/"):
            return f"hard link to the absolute path {source}"
        source_parts = split(source)
        if ".." in source_parts:
            return f"hard link pointing outside the target folder ({source})"
        if not source_parts:
            return "hard link without a source"
        return Entry(parts, "hardlink", mode, mtime_ns, link=source, link_parts=source_parts)
    if member.type == DUMPDIR:
        return Entry(parts, "dir", mode, mtime_ns, dumpdir=True)
    return Entry(parts, kind, mode, mtime_ns, size=member.size if kind == "file" else 0)
