"""GNU tar's dumpdir, the data of a folder's 'D' member in a `--listed-incremental` archive,
parsed and checked (pure).

GNU tar's manual ("Dumpdir") defines it: NUL-terminated records, an empty record at the end.
`Y name` (in this archive), `N name` (there, unchanged since the previous level), `D name` (a
folder) list what the folder holds at that night; whatever else the folder holds when the
member is restored was deleted since (restore removes it). `R src` + `T dst` renames a folder
(tar recognises it by inode), paths as stored in the archive; an empty side means the
temporary name made by the last `X folder` record (how tar swaps two folders).

An archive is untrusted input: a rename with an absolute path or `..` is refused here, so
restore never acts on one. Listed names only protect entries from deletion, so a bad one
would be harmless; it is refused all the same, as a sign of a damaged or crafted archive.
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from usbagent.tarsafety import split

Listed = Literal["Y", "N", "D"]


@dataclass(frozen=True)
class TempFolder:
    """`X`: later renames with an empty side use a fresh temporary name in this folder."""

    parts: tuple[str, ...]


@dataclass(frozen=True)
class Rename:
    """`R`/`T`: the folder at `source` is now at `target`; () is the temporary name."""

    source: tuple[str, ...]
    target: tuple[str, ...]


@dataclass(frozen=True)
class Dumpdir:
    """What a folder holds at the night of its archive, and the renames to apply first."""

    entries: Mapping[str, Listed]
    renames: tuple[Rename | TempFolder, ...]


def _decode(raw: bytes) -> str:
    return raw.decode(tarfile.ENCODING, "surrogateescape")  # as tarfile decodes member names


def _path(text: str, what: str) -> tuple[str, ...] | str:
    if text.startswith("/"):
        return f"{what} is an absolute path"
    parts = split(text)
    if ".." in parts:
        return f"{what} has '..' in the path"
    return parts


def _name(text: str) -> str | None:
    if not text or "/" in text or text in (".", ".."):
        return f"lists {text!r}, which is not a name in the folder"
    return None


def _rename(source: str, target: str, temp: bool) -> Rename | str:
    if not source and not target:
        return "renames nothing to nothing"
    if (not source or not target) and not temp:
        return "renames to or from a temporary folder no X record made"
    src = _path(source, f"rename source {source!r}") if source else ()
    dst = _path(target, f"rename target {target!r}") if target else ()
    if isinstance(src, str):
        return src
    if isinstance(dst, str):
        return dst
    if (not src and source) or (not dst and target):
        return "renames the target folder itself"
    return Rename(src, dst)


def parse(data: bytes) -> Dumpdir | str:
    """The dumpdir, or why restore refuses it (said as 'dumpdir ...')."""
    if data and not data.endswith(b"\0"):
        return "dumpdir is truncated (its last record has no NUL)"
    records = [_decode(r) for r in data.split(b"\0")]
    entries: dict[str, Listed] = {}
    renames: list[Rename | TempFolder] = []
    temp = False
    i = 0
    while i < len(records) and records[i]:
        code, rest = records[i][0], records[i][1:]
        i += 1
        problem: str | None
        if code in ("Y", "N", "D"):
            problem = _name(rest)
            entries[rest] = code  # type: ignore[assignment]  # narrowed by the test above
        elif code == "X":
            folder = _path(rest, f"temporary folder {rest!r}")
            problem = folder if isinstance(folder, str) else None
            if not isinstance(folder, str):
                renames.append(TempFolder(folder))
                temp = True
        elif code == "R":
            target = records[i] if i < len(records) else ""
            if not target.startswith("T"):
                return "dumpdir has a rename (R) without its target (T)"
            i += 1
            made = _rename(rest, target[1:], temp)
            problem = made if isinstance(made, str) else None
            if isinstance(made, Rename):
                renames.append(made)
        else:
            problem = f"has a record of unknown type {code!r}"
        if problem:
            return f"dumpdir {problem}"
    return Dumpdir(entries, tuple(renames))
