"""`usbagent restore ARCHIVE --identity KEY --to DIR [MEMBER...]`: safe extraction.

An archive is treated as untrusted input: a stolen or tampered file must not be able to
write outside DIR. Each member passes two independent checks before it is written:
our own (`unsafe_reason`: absolute names, `..` components, device files and fifos, links
whose target is absolute or leaves DIR) and tarfile's "data" filter, which also resolves
links already on disk. Nothing is overwritten: a member whose path already exists in DIR is
refused (restore into an empty folder, then move what you need).

Refused members are skipped and listed; the rest is restored and the exit status is 1, so
one odd member neither hides the others nor passes unnoticed. Ownership is not restored
(files belong to whoever runs restore) and file modes lose setuid/setgid and group/other
write bits; `age -d -i KEY F | zstd -d | tar -x` restores an archive you trust verbatim.

MEMBER names are paths as stored (`data/docs/a.txt` for `/data/docs/a.txt`; a leading '/'
is accepted); a folder selects everything under it.
"""

from __future__ import annotations

import os
import posixpath
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from usbagent.config import Config
from usbagent.decrypt import members, open_tar
from usbagent.errors import UsbagentError
from usbagent.recipients import load_identities

MAX_LISTED = 50  # refused members printed one by one; the rest are counted


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting `member` could escape the target folder or create a device (pure)."""
    name = member.name
    if not name or name in (".", "./"):
        return None if member.isdir() else "member has no name"
    if name.startswith("/"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in the path"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        target = member.linkname
        if target.startswith("/"):
            return f"{kind} to the absolute path {target}"
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"{kind} pointing outside the target folder ({target})"
    return None


def normalise(wanted: str) -> str:
    """A MEMBER argument as tar stores names: no leading '/' or './', no trailing '/'."""
    name = wanted.strip("/")
    while name.startswith("./"):
        name = name[2:]
    return name


def match(name: str, wanted: tuple[str, ...]) -> str | None:
    """The requested name that selects member `name` (itself or a folder above it)."""
    name = normalise(name)
    for w in wanted:
        if name == w or name.startswith(w + "/") or w == "":
            return w
    return None


@dataclass
class _Selection:
    """tarfile filter: picks members, refuses unsafe ones, and remembers what it did."""

    wanted: tuple[str, ...]
    refused: list[tuple[str, str]] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    restored: int = 0
    size: int = 0

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if self.wanted:
            hit = match(member.name, self.wanted)
            if hit is None:
                return None
            self.found.add(hit)
        reason = unsafe_reason(member) or _exists_reason(member, dest)
        if reason is None:
            try:
                member = tarfile.data_filter(member, dest)
            except tarfile.FilterError as exc:
                reason = str(exc)
        if reason is not None:
            self.refused.append((member.name, reason))
            return None
        self.restored += 1
        self.size += member.size if member.isreg() else 0
        return member


def _exists_reason(member: tarfile.TarInfo, dest: str) -> str | None:
    path = Path(dest, member.name)
    if not os.path.lexists(path):
        return None
    if member.isdir() and path.is_dir() and not path.is_symlink():
        return None
    return "already exists in the target folder (not overwritten)"


def restore(archive: Path, identity: Path, target: Path, wanted: tuple[str, ...]) -> _Selection:
    """Extract into `target`; returns what was restored and refused. Raises UsbagentError."""
    identities = load_identities(identity)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsbagentError(f"cannot create the target folder {target}: {exc.strerror}") from None
    selection = _Selection(wanted=wanted)
    with open_tar(archive, identities) as tar:
        try:
            tar.extractall(target, members=members(tar), filter=selection)
        except OSError as exc:
            where = exc.filename or target
            raise UsbagentError(f"extracting into {where} failed: {exc.strerror}") from None
        except tarfile.ExtractError as exc:
            raise UsbagentError(f"extraction failed: {exc}") from None
    return selection


def run(config: Config | None, args: Any) -> int:
    archive, target = Path(args.archive), Path(args.target)
    if not archive.is_file():
        raise UsbagentError(f"archive {archive} does not exist")
    wanted = tuple(dict.fromkeys(normalise(m) for m in args.members))
    result = restore(archive, Path(args.identity), target, wanted)
    print(
        f"restored {result.restored} members ({result.size / 1024**2:.1f} MiB) "
        f"from {archive.name} into {target}"
    )
    for name, reason in result.refused[:MAX_LISTED]:
        print(f"usbagent restore: refused {name!r}: {reason}", file=sys.stderr)
    if len(result.refused) > MAX_LISTED:
        more = len(result.refused) - MAX_LISTED
        print(f"usbagent restore: ... and {more} more refused members", file=sys.stderr)
    missing = [w for w in wanted if w not in result.found]
    for name in missing:
        print(f"usbagent restore: {name!r} is not in the archive", file=sys.stderr)
    return 1 if result.refused or missing else 0
