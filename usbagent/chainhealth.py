"""Which chain members stop restore points from being restored, and whether fulls still come.

Pure, over parsed names, so `status` (CRITICAL), `doctor` (a finding with its fix) and the
agent's freshness check judge a chain the same way. An increment is only as good as every
archive below it: a restore point is usable when its whole chain is there and each member
is the archive its run recorded. A member can fail three ways, and the person is told which,
because the fix differs:

- `gone`: a successful run recorded it, and the file is not in the destination (removed);
- `damaged`: a file with its name is there, but it is not the archive its run recorded
  (wrong size, failing or missing sidecar, or no run recorded it at all);
- `missing`: there is neither a file nor a record (only the name's level and chain say it
  existed: an increment names its full, and the next level names nothing else).

A level held by two good archives (`ambiguous`) is broken too: nobody can tell which one the
next level was made on. Whole chains that are gone are not reported: that is retention (it
removes a chain only together with every restore point that needs it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from usbagent import chains, naming
from usbagent.naming import ArchiveName

Failure = Literal["gone", "damaged", "missing", "ambiguous"]
# A full is due every `full_every_days`; twice that without one means fulls stopped coming
# (each failing, say) while increments kept the freshness check green.
OVERDUE_FACTOR = 2


@dataclass(frozen=True)
class BrokenMember:
    """A chain member that restore points need and cannot use, and the points it breaks."""

    chain: str  # the file name of the chain's full (also when the full is the broken member)
    level: int
    failure: Failure
    files: tuple[str, ...]  # its file name(s): () when `missing` an increment of unknown time
    problem: str  # for `damaged`: why the file is not the archive its run recorded
    breaks: tuple[str, ...]  # the restore points (archive file names) it breaks, oldest first

    def describe(self) -> str:
        """One clause naming the member and what happened to it."""
        what = self.files[0] if len(self.files) == 1 else f"level {self.level} of {self.chain}"
        if self.failure == "gone":
            return f"{what} is gone (a successful run recorded it)"
        if self.failure == "damaged":
            return f"{what} {self.problem}"
        if self.failure == "ambiguous":
            return f"{what} is held by {len(self.files)} archives ({', '.join(self.files)})"
        return f"{what} is missing (no file, no record)"

    def to_json(self) -> dict[str, object]:
        return {
            "chain": self.chain,
            "level": self.level,
            "failure": self.failure,
            "files": list(self.files),
            "breaks": list(self.breaks),
        }


def _full_name(archive: ArchiveName) -> str:
    return naming.make(archive.prefix, archive.full).filename


def _member(
    point: chains.RestorePoint,
    level: int,
    damaged: Mapping[ArchiveName, str],
    recorded: frozenset[ArchiveName],
    good: frozenset[ArchiveName],
) -> tuple[int, Failure, tuple[str, ...], str]:
    """What fills `level` of this point's chain, and why it cannot be used."""
    below = point.archive.created if level < point.archive.level else None

    def at_level(names: Iterable[ArchiveName]) -> list[ArchiveName]:
        return sorted(
            a
            for a in names
            if a.chain == point.archive.chain
            and a.level == level
            and (below is None or a.created < below)
        )

    if level in point.ambiguous:
        return level, "ambiguous", tuple(a.filename for a in at_level(good)), ""
    if found := at_level(damaged):
        return level, "damaged", (found[-1].filename,), damaged[found[-1]]
    if found := at_level(recorded):
        return level, "gone", (found[-1].filename,), ""
    name = (_full_name(point.archive),) if level == 0 else ()
    return level, "missing", name, ""


def broken_members(
    good: Iterable[ArchiveName],
    damaged: Mapping[ArchiveName, str],
    recorded: Iterable[ArchiveName],
) -> list[BrokenMember]:
    """The members that break restore points, by chain and level.

    `good`: the archives in the destination that are the archives their runs recorded (the
    restore points); `damaged`: the other files with archive names, each with why it is not;
    `recorded`: every archive a successful run recorded, present or not.
    """
    good_set, records = frozenset(good), frozenset(recorded)
    broken: dict[tuple[str, int, Failure, tuple[str, ...], str], list[str]] = {}
    for point in chains.broken(chains.restore_points(good_set)):
        for level in sorted({*point.missing, *point.ambiguous}):
            key = (_full_name(point.archive), *_member(point, level, damaged, records, good_set))
            broken.setdefault(key, []).append(point.archive.filename)
    return [
        BrokenMember(chain, level, failure, files, problem, tuple(points))
        for (chain, level, failure, files, problem), points in sorted(broken.items())
    ]


def newest_restorable(good: Iterable[ArchiveName]) -> chains.RestorePoint | None:
    """The newest archive whose whole chain is good: what freshness is judged from."""
    return chains.newest_complete(chains.restore_points(good))


def newest_full(good: Iterable[ArchiveName]) -> ArchiveName | None:
    return max((a for a in good if a.is_full), default=None)


def full_overdue(full: ArchiveName, full_every_days: int, now: datetime) -> bool:
    """Is this (the newest) full older than OVERDUE_FACTOR x `full_every_days`?"""
    return now - full.created > timedelta(days=OVERDUE_FACTOR * full_every_days)
