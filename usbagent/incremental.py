"""A folder's dumpdir applied during a restore: renames first, then what the folder no longer
holds is removed (GNU tar's `--listed-incremental` extraction, on usbagent.extract's terms).

Only what this restore created is renamed or removed (usbagent.extract checks each one), so
a dumpdir, even a crafted one, can only undo this restore's own work inside the target.
Something else in the target that the backup does not list is left as it is, silently: it
was there before, as in a restore of a single archive into a folder that is not empty.

With MEMBER arguments (`Scope`), a dumpdir is applied to the selected paths and to the
folders on the way to them, so a selected path that was deleted or renamed away by a later
night is gone from the restore too. A selected path that a later night moved there from a
path the selection leaves out cannot be restored from the selection: it is reported.
"""

from __future__ import annotations

import secrets
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


@dataclass
class Applied:
    """What applying dumpdirs did that the restore reports: (name, reason), paths gone."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    removed: list[Parts] = field(default_factory=list)


def _stale(listed: str | None, is_dir: bool) -> bool:
    """Does an entry on disk not belong in the folder at this night? (GNU tar's rule.)"""
    return listed is None or (listed == "D" and not is_dir) or (listed == "Y" and is_dir)


def _move(ex: Extractor, source: Parts, target: Parts, why: str, out: Applied) -> None:
    try:
        ex.rename(source, target)
    except Refused as exc:
        out.problems.append((shown(source), f"not moved to {shown(target)!r} ({why}): {exc}"))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        out.problems.append((shown(source), f"not moved to {shown(target)!r} ({why}): {reason}"))
    else:
        out.removed.append(source)


def _remove(ex: Extractor, parts: Parts, why: str, out: Applied) -> None:
    try:
        if ex.owned(parts) is not True:
            return  # not there, or someone else's: left as it is
        if ex.remove(parts):
            out.removed.append(parts)
        else:
            out.problems.append(
                (shown(parts), f"not removed ({why}): it holds files this restore did not create")
            )
    except Refused as exc:
        out.problems.append((shown(parts), f"not removed ({why}): {exc}"))
    except OSError as exc:
        out.problems.append((shown(parts), f"not removed ({why}): {exc.strerror or exc}"))


def _renames(ex: Extractor, dumpdir: Dumpdir, scope: Scope, archive: str, out: Applied) -> None:
    temp: Parts = ()
    origin: Parts = ()  # what was moved to the temporary name, as MEMBER names it
    why = f"renamed in {archive}"
    for op in dumpdir.renames:
        if isinstance(op, TempFolder):
            temp = (*op.parts, TEMP_PREFIX + secrets.token_hex(8))
            continue
        assert isinstance(op, Rename)
        source, target = op.source or temp, op.target or temp
        source_as = op.source or origin  # the names the selection judges
        target_as = op.target or source_as
        if not op.target:
            origin = source_as
        if scope.selects(source_as) and scope.selects(target_as):
            _move(ex, source, target, why, out)
            continue
        for gone in scope.within(source_as):
            _remove(ex, source + gone[len(source_as) :], why, out)
        if op.target and scope.touches(target_as):
            out.problems.append(
                (
                    shown(target_as),
                    f"{archive} moved it there from {shown(source_as)!r}, which the members "
                    f"asked for leave out: add {shown(source_as)!r}, or restore everything",
                )
            )


def apply(ex: Extractor, folder: Parts, dumpdir: Dumpdir, scope: Scope, archive: str) -> Applied:
    """Apply the dumpdir of `folder` from the archive named `archive`."""
    out = Applied()
    _renames(ex, dumpdir, scope, archive, out)
    try:
        listing = ex.listing(folder)
    except Refused as exc:
        out.problems.append((shown(folder), str(exc)))
        return out
    for name, is_dir in listing:
        path = (*folder, name)
        if scope.touches(path) and _stale(dumpdir.entries.get(name), is_dir):
            _remove(ex, path, f"{archive} no longer has it", out)
    return out
