"""Which level tonight's archive is: a full, or the next increment of the chain in force.

Pure, over plain facts the archive job gathers (the archives in the destination, what the
state dir recorded of them, their snapshots, the clock), so every rule is unit-tested.

The chain in force ends at the newest archive of ours in the destination; its snapshot
(GNU tar's `--listed-incremental` state after it) is what an increment starts from. A full
is made instead whenever an increment could restore wrong or not at all, and the level says
why (`Why`), so the person is told:
- `first`: no archive to build on;
- `clock`: the clock is earlier than the newest archive (tar compares file times with the
  snapshot's, so changes made "before" it would be missed);
- `due`: `full_every_days` UTC calendar days have passed since the chain's full (calendar
  days, so a timer at 02:00 that runs a little late or early does not drift a day), or the
  chain has reached the highest level a name can carry;
- `unrecorded`: the newest archive is not one a run recorded (made by hand, or its run
  could not record it): nothing says which snapshot belongs to it;
- `chain`: the newest archive's restore point is not complete (a member is gone, doubled, or
  its sidecar disagrees with the record): an increment on it could not be restored either;
- `snapshot-missing`, `snapshot-unreadable`: its snapshot is not there, or is not the file
  that was committed with it;
- `selection`: the sources or exclusions changed since the snapshot was made (tar would
  not dump a file it excluded before and that has not changed since);
- `symlinked`: a source is named through a symlink. Its members are stored under the name
  the user wrote by tar's `--transform`, but GNU tar writes an increment's folder-rename
  records under the real path, past the transform, so no restore could apply them (the
  renamed folder's unchanged files would be lost). Such a selection gets only fulls;
- `state-dir` (decided by the job, not here): the state dir cannot hold a snapshot; the
  archive is still made, as a full, rather than none at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from usbagent import chains, naming

Why = Literal[
    "first",
    "clock",
    "due",
    "unrecorded",
    "chain",
    "snapshot-missing",
    "snapshot-unreadable",
    "selection",
    "symlinked",
    "state-dir",
]
SnapshotState = Literal["ok", "missing", "unreadable", "selection"]
_SNAPSHOT_WHY: dict[SnapshotState, Why] = {
    "missing": "snapshot-missing",
    "unreadable": "snapshot-unreadable",
    "selection": "selection",
}


@dataclass(frozen=True)
class Present:
    """An archive of ours in the destination, as the job found it."""

    name: naming.ArchiveName
    recorded: bool  # archives.json (or the history) knows it
    intact: bool  # its sidecar states the digest the record has, and the size matches
    snapshot: SnapshotState  # of the snapshot committed with it


@dataclass(frozen=True)
class Level:
    """What tonight's archive is. A full: level 0, no base, `why` says why a full.

    An increment: `level` >= 1 of the chain whose full is `full`, made from the snapshot of
    `base` (the chain's newest archive).
    """

    level: int
    full: naming.ArchiveName | None = None
    base: naming.ArchiveName | None = None
    why: Why | None = None

    @property
    def is_full(self) -> bool:
        return self.level == 0


def _full(why: Why) -> Level:
    return Level(0, why=why)


def decide(
    present: Iterable[Present], now: datetime, full_every_days: int, symlinked: bool = False
) -> Level:
    """Tonight's level (see the module doc for the order of the rules). `symlinked`: a
    source is named through a symlink."""
    # An unrecorded name dated in the future is a suspect (retention's word): not ours.
    ours = [p for p in present if p.recorded or not naming.in_future(p.name.filename, now)]
    if not ours:
        return _full("first")
    if symlinked:
        return _full("symlinked")
    newest = max(ours, key=lambda p: p.name)
    if now < newest.name.created:
        return _full("clock")
    days = (now.date() - newest.name.full.date()).days
    if days >= full_every_days or newest.name.level >= naming.MAX_LEVEL:
        return _full("due")
    if not newest.recorded:
        return _full("unrecorded")
    good = [p.name for p in ours if p.recorded and p.intact]
    point = chains.restore_point(newest.name, good)
    if not newest.intact or not point.complete:
        return _full("chain")
    if newest.snapshot != "ok":
        return _full(_SNAPSHOT_WHY[newest.snapshot])
    return Level(newest.name.level + 1, full=point.members[0], base=newest.name)


_WORDS: dict[Why, str] = {
    "first": "no earlier archive to build on",
    "clock": "the clock is earlier than the newest archive (did it go backwards?)",
    "due": "archive.full_every_days have passed since the chain's full",
    "unrecorded": "the newest archive is not one a run recorded in the state dir",
    "chain": "the newest archive's chain is not complete in the destination",
    "snapshot-missing": "the newest archive's snapshot is missing from the state dir",
    "snapshot-unreadable": "the newest archive's snapshot in the state dir is damaged",
    "selection": "archive.sources or archive.exclude changed since the chain's last archive",
    "symlinked": (
        "a source is named through a symlink, and GNU tar's increments would record its "
        "folder renames under the real path, which no restore can apply; name the real "
        "path in archive.sources to get increments"
    ),
    "state-dir": "the state dir cannot keep its snapshot, so the next night is a full too",
}


def describe(level: Level) -> str:
    """What tonight's archive is, in words for the summary."""
    if level.is_full:
        return f"full ({_WORDS[level.why]})" if level.why else "full"
    full = level.full.filename if level.full else "?"
    return f"increment level {level.level} of {full}"
