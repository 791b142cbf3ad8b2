"""What goes into the archive, and under which names: the sources as the user named them.

tar runs in '/' and is given each source's *real* path (every symlink resolved), so a
source that is a symlink to a folder stores the folder, as `tar -h` does for a command-line
argument, while symlinks inside it stay symlinks. A `--transform` renames the real path
back to the name the user wrote: the source `/data-link` is stored as `data-link/...` and
`restore --to DIR` recreates `DIR/data-link/...`, whatever the link pointed to that night.
Symlink targets are content and are left alone; hard-link targets are renamed with the
members they point to.

tar matches `--exclude` against the names *before* the transform, i.e. real paths in tar's
spelling (`srv/data/x`, or `./srv/data/x` under the source '/', whose members tar names
`./...`). So every exclusion computed here is a resolved path spelled that way: the
destination, however it is reached (a symlink, a source of '/'), and absolute `exclude`
patterns, which are written in the sources' own terms (`/data-link/cache` for the source
`/data-link`) and anchored.

Refused (`problems`): a source that is the destination or lies inside it (it would be
excluded whole: an empty backup), and two sources that overlap (the same files stored
twice, and no way to say which source yielded them).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path, PurePath

from usbagent.errors import UsbagentError

_ERE_SPECIAL = frozenset("\\.[]()*+?{}|^$")
_GLOB_SPECIAL = frozenset("\\*?[]")
# `--transform=s<d>regex<d>replacement<d>flags`: a delimiter no path we put in it contains
_DELIMITERS = tuple(chr(c) for c in range(1, 32))


@dataclass(frozen=True)
class Source:
    """One of archive.sources: as written in the config, and as it resolved tonight."""

    named: Path
    real: Path

    @property
    def member(self) -> str:
        """Its name in the archive (what restore shows)."""
        return member(self.named)


@dataclass(frozen=True)
class Problem:
    """A layout the archive refuses, with what to change."""

    message: str
    fix: str


def member(path: PurePath) -> str:
    """How tar, run in '/', names an absolute path given on its command line."""
    return str(path).lstrip("/") or "."


def resolve(sources: tuple[Path, ...]) -> tuple[Source, ...]:
    """Follow every symlink in each source's path (they must exist)."""
    return tuple(Source(named=s, real=s.resolve(strict=True)) for s in sources)


def problems(sources: tuple[Source, ...], destination: Path) -> list[Problem]:
    """Why these (resolved) sources cannot be archived into the (resolved) destination."""
    out = []
    for s in sources:
        if s.real.is_relative_to(destination):
            where = "is" if s.real == destination else "is inside"
            real = "" if s.real == s.named else f" (that is {s.real})"
            out.append(
                Problem(
                    f"source {s.named}{real} {where} the destination {destination}, which "
                    "is never archived: the archive would hold nothing of it",
                    "move archive.destination out of it, or remove it from archive.sources",
                )
            )
    for a, b in itertools.combinations(sources, 2):
        if b.real.is_relative_to(a.real) or a.real.is_relative_to(b.real):
            outer, inner = (a, b) if b.real.is_relative_to(a.real) else (b, a)
            how = f"overlap ({inner.real} is inside {outer.real})"
            if a.real == b.real:
                how = f"are the same folder ({a.real})"
            out.append(
                Problem(
                    f"sources {outer.named} and {inner.named} {how}: its files would be "
                    "stored twice",
                    f"remove {inner.named} from archive.sources",
                )
            )
    return out


def source_of(pattern: str, named: tuple[Path, ...]) -> Path | None:
    """The source an absolute exclude pattern lies in (the innermost), compared as written."""
    parts = PurePath(pattern).parts
    inside = [s for s in named if parts[: len(s.parts)] == s.parts]
    return max(inside, key=lambda s: len(s.parts), default=None)


def _tar_name(source: Source, rest: PurePath) -> str:
    """tar's (pre-transform) name for the relative path `rest` under the source."""
    base = member(source.real)
    return base if rest == PurePath() else f"{base}/{rest}"


def _escape(text: str, special: frozenset[str]) -> str:
    return "".join(f"\\{c}" if c in special else c for c in text)


def _anchored_pattern(pattern: str, sources: tuple[Source, ...]) -> str | None:
    """An absolute exclude pattern in tar's terms, or None when it is in no source."""
    folder = source_of(pattern, tuple(s.named for s in sources))
    if folder is None:
        return None
    source = next(s for s in sources if s.named == folder)
    base = _escape(member(source.real), _GLOB_SPECIAL)  # literal; the rest is the user's glob
    rest = PurePath(pattern).relative_to(folder)
    return base if rest == PurePath() else f"{base}/{rest}"


def _transform(source: Source) -> str:
    """`--transform` renaming members of the real path to the name the user wrote."""
    real, named = member(source.real), member(source.named)
    delimiter = next((d for d in _DELIMITERS if d not in real + named), None)
    if delimiter is None:
        raise UsbagentError(f"source {source.named}: its path contains every control character")
    regex = "^" + _escape(real, _ERE_SPECIAL) + "(/|$)"
    replacement = named.replace("\\", "\\\\").replace("&", "\\&") + "\\1"
    # x: extended regex; S: not in symlink targets (r, h: member names, hard-link targets)
    return f"--transform=s{delimiter}{regex}{delimiter}{replacement}{delimiter}xS"


def tar_command(
    tar: str, sources: tuple[Source, ...], exclude: tuple[str, ...], destination: Path
) -> list[str]:
    """The GNU tar invocation (pure; `destination` resolved). See the module doc.

    Relative exclude patterns are tar's own: globs matching any tail of a member name.
    """
    cmd = [tar, "--create", "--file=-", "--directory=/", "--format=gnu", "--sort=name"]
    cmd.append("--no-unquote")  # a source named with '\\' is that name, not an escape
    holders = [s for s in sources if destination.is_relative_to(s.real)]
    if holders:  # anchored and literal: exactly the destination, whatever its name contains
        cmd += ["--anchored", "--no-wildcards"]
        cmd += [f"--exclude={_tar_name(s, destination.relative_to(s.real))}" for s in holders]
    anchored = [_anchored_pattern(p, sources) for p in exclude if p.startswith("/")]
    if anchored:  # '*' stays within one folder, as in the path the user wrote
        cmd += ["--anchored", "--wildcards", "--no-wildcards-match-slash"]
        cmd += [f"--exclude={p}" for p in anchored if p]
    cmd += ["--no-anchored", "--wildcards", "--wildcards-match-slash"]
    cmd += [f"--exclude={p}" for p in exclude if not p.startswith("/")]
    cmd += [_transform(s) for s in sources if s.real != s.named]
    # --wildcards applies to the names after it too: with --listed-incremental, tar then
    # takes the sources for patterns and stores no folder (nor its listing) at all.
    return [*cmd, "--no-wildcards", "--", *(member(s.real) for s in sources)]


def incremental(cmd: list[str], snapshot: Path) -> list[str]:
    """`cmd` dumping what changed since the snapshot tar updates in place (a full when the
    file does not exist yet). Device numbers are not compared: they change across reboots,
    re-plugged disks and remounted loop images, and would turn every night into a full."""
    end = cmd.index("--")
    return [*cmd[:end], f"--listed-incremental={snapshot}", "--no-check-device", *cmd[end:]]


def fingerprint(cmd: list[str]) -> str:
    """What a tar command selects, as one digest (its path to tar aside): a snapshot made
    with another selection does not describe tonight's (an exclusion dropped since would
    leave its files out of every increment, as they have not changed)."""
    return hashlib.sha256("\0".join(cmd[1:]).encode("utf-8", "surrogateescape")).hexdigest()
