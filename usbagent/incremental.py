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
from dataclasses import dataclass

from usbagent.dumpdir import Dumpdir, Rename, TempFolder
from usbagent.extract import TEMP_PREFIX, Extractor
from usbagent.folderwalk import Refused

Parts = tuple[str, ...]
_TEMP: Parts = ("\0",)  # the temporary name of a swap, while mapping names back (no name has NUL)


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


def _renames(ex: Extractor, dumpdir: Dumpdir, before: Scope, archive: str, out: Problems) -> None:
    """Apply the renames to what `before` selects: a selected folder moves whole, selected
    paths inside a moved folder move with it."""
    temp: Parts = ()
    origin: Parts = ()  # what was moved to the temporary name, by its name before
    why = f"renamed in {archive}"
    for op in dumpdir.renames:
        if isinstance(op, TempFolder):
            temp = (*op.parts, TEMP_PREFIX + secrets.token_hex(8))
            continue
        assert isinstance(op, Rename)
        source, target = op.source or temp, op.target or temp
        judged = op.source or origin  # the name the selection knows it by
        if not op.target:
            origin = judged
        for inner in before.within(judged):
            rest = inner[len(judged) :]
            _move(ex, source + rest, target + rest, why, out, bool(before.wanted))


def earlier(after: Scope, dumpdirs: Sequence[Dumpdir]) -> Scope:
    """What to select in the archive before one with these dumpdirs, so that `after` comes
    out whole: each selected path also by its name before the renames, and the folder a
    selected folder was moved into from (pure; only when MEMBER arguments are given)."""
    if not after.wanted:
        return after
    wanted = set(after.wanted)
    renames = [op for d in dumpdirs for op in d.renames if isinstance(op, Rename)]
    for op in reversed(renames):
        source, target = op.source or _TEMP, op.target or _TEMP
        for w in list(wanted):
            if w[: len(target)] == target:
                wanted.add(source + w[len(target) :])
            elif target[: len(w)] == w:
                wanted.add(source)
    return Scope(tuple(sorted(w for w in wanted if w[:1] != _TEMP)))


def prune(ex: Extractor, path: Parts, after: Scope) -> None:
    """Remove what this restore made at `path` and the folders above it that `after` does
    not select (selected only by a name at an earlier night, or made on the way to one)."""
    for depth in range(1, len(path) + 1):  # () is the target folder itself: always kept
        here = path[:depth]
        if after.selects(here):
            return
        if not after.leads_to(here):
            with contextlib.suppress(Refused, OSError):
                ex.remove(here)
            return
    with contextlib.suppress(Refused, OSError):
        for name, _ in ex.listing(path):
            prune(ex, (*path, name), after)


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
