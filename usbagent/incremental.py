"""A folder's dumpdir applied during a restore: renames first, then what the folder no longer
holds is removed (GNU tar's `--listed-incremental` extraction, on usbagent.extract's terms).

Only what this restore created is renamed or removed (usbagent.extract checks each one), so
a dumpdir, even a crafted one, can only undo this restore's own work inside the target.
Something else in the target that the backup does not list is left as it is, silently: it
was there before, as in a restore of a single archive into a folder that is not empty.

With MEMBER arguments (`Scope`), a dumpdir is applied to the selected paths and to the
folders on the way to them, so a selected path that was deleted or renamed away by a later
night is gone from the restore too. A selected path that a later night moved there from
elsewhere is restored by its earlier name from the archives before (`earlier`, from a first
pass over the chain's dumpdirs), moved with the renames, and what was selected only by an
earlier name is removed again at the end of each archive (`prune`).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from usbagent.dumpdir import Dumpdir, Rename, TempFolder
from usbagent.extract import TEMP_PREFIX, Extractor
from usbagent.folderwalk import Refused

Parts = tuple[str, ...]


def shown(parts: Parts) -> str:
    return "/".join(parts) or "."


@dataclass(frozen=True)
class Scope:
    """What the MEMBER arguments select, as path components; none selects everything."""

    wanted: tuple[Parts, ...] = ()

    def selects(self, parts: Parts) -> bool:
        return not self.wanted or any(parts[: len(w)] == w for w in self.wanted)

    def leads_to(self, parts: Parts) -> bool:
        """Whether `parts` is a folder above a selected path."""
        return any(len(w) > len(parts) and w[: len(parts)] == parts for w in self.wanted)

    def touches(self, parts: Parts) -> bool:
        return self.selects(parts) or self.leads_to(parts)

    def within(self, parts: Parts) -> tuple[Parts, ...]:
        """What of `parts` is selected: all of it, or the selected paths below it."""
        if self.selects(parts):
            return (parts,)
        return tuple(w for w in self.wanted if w[: len(parts)] == parts)


Problems = list[tuple[str, str]]  # (name, reason) for the restore's report


def _stale(listed: str | None, is_dir: bool) -> bool:
    """Does an entry on disk not belong in the folder at this night? (GNU tar's rule.)"""
    return listed is None or (listed == "D" and not is_dir) or (listed == "Y" and is_dir)


def _move(
    ex: Extractor, source: Parts, target: Parts, why: str, out: Problems, selected: bool
) -> None:
    """Rename; a source that is not there is an error unless MEMBER arguments left it out."""
    try:
        if ex.owned(source) is None:
            if not selected:
                out.append((shown(source), f"not moved to {shown(target)!r} ({why}): not there"))
            return
        ex.rename(source, target)
    except Refused as exc:
        out.append((shown(source), f"not moved to {shown(target)!r} ({why}): {exc}"))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        out.append((shown(source), f"not moved to {shown(target)!r} ({why}): {reason}"))


def _remove(ex: Extractor, parts: Parts, why: str, out: Problems) -> None:
    try:
        owned = ex.owned(parts)
        if owned is None:
            return
        if (
            not ex.remove(parts) and owned
        ):  # someone else's is left silently, as is what they put in ours:
            out.append(
                (shown(parts), f"not removed ({why}): it holds files this restore did not create")
            )
    except Refused as exc:
        out.append((shown(parts), f"not removed ({why}): {exc}"))
    except OSError as exc:
        out.append((shown(parts), f"not removed ({why}): {exc.strerror or exc}"))


def pairs(renames: Sequence[Rename | TempFolder]) -> list[tuple[Parts, Parts]]:
    """The renames as (source, target), in order; a temporary name is `(*folder, "\0N")`
    (no real name holds NUL), N counting the X records (pure)."""
    out: list[tuple[Parts, Parts]] = []
    temp: Parts = ()
    for n, op in enumerate(renames):
        if isinstance(op, TempFolder):
            temp = (*op.parts, f"\0{n}")
        else:
            out.append((op.source or temp, op.target or temp))
    return out


def _is_temp(parts: Parts) -> bool:
    return any(p.startswith("\0") for p in parts)


@dataclass
class _Renaming:
    """One dumpdir's renames being applied: GNU tar lists them in an order that does not
    always work (a name is renamed onto before the folder holding it is renamed away, when a
    deleted folder's inode was reused that night) and sometimes twice; so a rename whose
    target is there and is renamed away later goes after that one, and a repeat is skipped."""

    ex: Extractor
    ops: list[tuple[Parts, Parts]]
    before: Scope
    why: str
    out: Problems
    done: set[int] = field(default_factory=set)
    applied: set[tuple[Parts, Parts]] = field(default_factory=set)
    moving: set[Parts] = field(default_factory=set)  # sources of renames under way
    temps: dict[str, str] = field(default_factory=dict)  # "\0N" -> the temporary name
    origin: dict[str, Parts] = field(default_factory=dict)  # "\0N" -> what went there

    def real(self, parts: Parts) -> Parts:
        return tuple(
            self.temps.setdefault(p, TEMP_PREFIX + secrets.token_hex(8))
            if p.startswith("\0")
            else p
            for p in parts
        )

    def judged(self, parts: Parts) -> Parts:
        """The name the selection knows `parts` by (a temporary name: what went there)."""
        return self.origin.get(parts[-1], parts) if _is_temp(parts) else parts

    def run(self, i: int) -> None:
        if i in self.done:
            return
        self.done.add(i)
        source, target = self.ops[i]
        self.moving.add(source)
        try:
            if self.ex.owned(self.real(target)) is not None:
                later = [j for j in range(i + 1, len(self.ops)) if self.ops[j][0] == target]
                for j in later[:1]:
                    self.run(j)
        except (Refused, OSError):
            pass  # the rename itself says why
        finally:
            self.moving.discard(source)
        if (source, target) in self.applied:
            return
        self.applied.add((source, target))
        if target in self.moving:
            self.out.append((shown(target), f"not moved ({self.why}): the renames go round"))
            return
        judged = self.judged(source)
        if _is_temp(target):
            self.origin[target[-1]] = judged
        for inner in self.before.within(judged):
            rest = inner[len(judged) :]
            src, dst = self.real(source) + rest, self.real(target) + rest
            _move(self.ex, src, dst, self.why, self.out, bool(self.before.wanted))


def _renames(ex: Extractor, dumpdir: Dumpdir, before: Scope, archive: str, out: Problems) -> None:
    """Apply the renames to what `before` selects: a selected folder moves whole, selected
    paths inside a moved folder move with it."""
    renaming = _Renaming(ex, pairs(dumpdir.renames), before, f"renamed in {archive}", out)
    for i in range(len(renaming.ops)):
        renaming.run(i)


def earlier(after: Scope, dumpdirs: Sequence[Dumpdir]) -> Scope:
    """What to select in the archive before one with these dumpdirs, so that `after` comes
    out whole: each selected path also by its names before the renames, and the folder a
    selected folder was moved into from (pure; only when MEMBER arguments are given).

    Taken as a whole rather than in order (see `_Renaming`): selecting more than needed
    costs nothing, what `after` does not select is pruned again.
    """
    if not after.wanted:
        return after
    wanted = set(after.wanted)
    renames = [pair for d in dumpdirs for pair in pairs(d.renames)]
    for _ in range(len(renames) + 1):
        grown = set(wanted)
        for source, target in renames:
            for w in wanted:
                if w[: len(target)] == target:
                    grown.add(source + w[len(target) :])
                elif target[: len(w)] == w:
                    grown.add(source)
        if grown == wanted:
            break
        wanted = grown
    return Scope(tuple(sorted(w for w in wanted if not _is_temp(w))))


def prune(ex: Extractor, path: Parts, after: Scope, before: Scope) -> None:
    """Remove what this restore made under `path` that `after` does not select: selected
    only by a name at an earlier night (`before`), or moved or made on the way to one.

    Someone else's folder is entered only where `before` leads, so a MEMBER restore into a
    full folder (even `/`) does not walk all of it after every archive.
    """
    for depth in range(1, len(path) + 1):  # () is the target folder itself: always kept
        here = path[:depth]
        if after.selects(here):
            return
        if not after.leads_to(here):
            with contextlib.suppress(Refused, OSError):
                if ex.owned(here) or before.touches(here):
                    ex.remove(here)
            return
    with contextlib.suppress(Refused, OSError):
        for name, _ in ex.listing(path):
            prune(ex, (*path, name), after, before)


def apply(ex: Extractor, folder: Parts, dumpdir: Dumpdir, scope: Scope, archive: str) -> Problems:
    """Apply the dumpdir of `folder` from the archive named `archive`; `scope`: what is
    selected, by the names before this archive (`earlier`)."""
    out: Problems = []
    _renames(ex, dumpdir, scope, archive, out)
    try:
        listing = ex.listing(folder)
        for name, is_dir in listing:
            path = (*folder, name)
            if scope.touches(path) and _stale(dumpdir.entries.get(name), is_dir):
                _remove(ex, path, f"{archive} no longer has it", out)
    except Refused as exc:
        out.append((shown(folder), str(exc)))
    except OSError as exc:
        out.append((shown(folder), exc.strerror or str(exc)))
    return out
