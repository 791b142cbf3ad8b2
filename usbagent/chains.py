"""Chains of archives: which archives a restore point needs, and whether they are all there.

Pure, over parsed names (`naming.ArchiveName`), so the host's archive folder, a stick and
`verify` answer "can this be restored?" the same way.

A chain is a full (level 0) and the increments made on it: level N is GNU tar's
`--listed-incremental` dump against the state after level N-1 (chained, not differential:
each night costs what changed that night; see README "Incremental archives"). Every archive
is a restore point: restoring it means applying its chain's full, then levels 1..N in order.
The chain is identified by the full's time, which every increment carries in its name, so a
missing full or a missing middle increment is seen from the names alone and never mistaken
for a member of another chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from usbagent import naming
from usbagent.naming import STAMP_FORMAT, SUFFIX, ArchiveName


@dataclass(frozen=True)
class RestorePoint:
    """What restoring `archive` applies, in order, and what of that is not there.

    `members`: the chain's archives present for levels 0..archive.level, oldest first
    (`archive` last). `missing`: the levels with no archive. `ambiguous`: the levels with
    more than one candidate (no run of usbagent makes two; a person or a fault did): then
    nobody can say which one the next level was made against, so the point is broken too.
    """

    archive: ArchiveName
    members: tuple[ArchiveName, ...]
    missing: tuple[int, ...]
    ambiguous: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.ambiguous

    @property
    def filenames(self) -> tuple[str, ...]:
        """The archive files this point needs that are present, in restore order."""
        return tuple(m.filename for m in self.members)


def _by_chain(archives: Iterable[ArchiveName]) -> dict[tuple[str, datetime], list[ArchiveName]]:
    out: dict[tuple[str, datetime], list[ArchiveName]] = {}
    for archive in archives:
        out.setdefault(archive.chain, []).append(archive)
    return out


def _point(archive: ArchiveName, chain: list[ArchiveName]) -> RestorePoint:
    members: list[ArchiveName] = []
    missing: list[int] = []
    ambiguous: list[int] = []
    for level in range(archive.level):
        found = [a for a in chain if a.level == level and a.created < archive.created]
        if not found:
            missing.append(level)
        elif len(found) > 1:
            ambiguous.append(level)
        else:
            members.append(found[0])
    if len([a for a in chain if a.level == archive.level]) > 1:
        ambiguous.append(archive.level)
    members.append(archive)
    return RestorePoint(archive, tuple(members), tuple(missing), tuple(ambiguous))


def restore_points(archives: Iterable[ArchiveName]) -> list[RestorePoint]:
    """Every archive as a restore point, oldest first."""
    present = sorted(set(archives))
    chains = _by_chain(present)
    return [_point(a, chains[a.chain]) for a in present]


def points_of(filenames: Iterable[str], prefix: str | None = None) -> list[RestorePoint]:
    """`restore_points` of the archives (of `prefix`, when given) among file names; other
    names are not archives and are left out."""
    return restore_points(a for a in (naming.parse(n, prefix) for n in filenames) if a)


def restore_point(archive: ArchiveName, present: Iterable[ArchiveName]) -> RestorePoint:
    """The restore point of `archive`, judged against the archives `present` beside it."""
    chain = [a for a in {*present, archive} if a.chain == archive.chain]
    return _point(archive, chain)


def newest_complete(points: Iterable[RestorePoint]) -> RestorePoint | None:
    """The newest restore point whose whole chain is there (None: there is none)."""
    complete = [p for p in points if p.complete]
    return max(complete, key=lambda p: p.archive) if complete else None


def needed(points: Iterable[RestorePoint]) -> frozenset[str]:
    """The archive file names the given restore points need (the union of their chains)."""
    return frozenset(name for p in points for name in p.filenames)


def broken(points: Iterable[RestorePoint]) -> list[RestorePoint]:
    """The restore points that cannot be restored, oldest first."""
    return [p for p in points if not p.complete]


def expected_name(point: RestorePoint, level: int) -> str:
    """The file name level `level` of the point's chain has: exact for the full, a glob for
    an increment (its own time is known only from its name)."""
    full = point.archive.full.strftime(STAMP_FORMAT)
    if level == 0:
        return f"{point.archive.prefix}-{full}{SUFFIX}"
    return f"{point.archive.prefix}-*.inc{level}.{full}{SUFFIX}"
