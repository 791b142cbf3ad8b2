"""What a sync does to a stick, decided from facts alone: which files on it are our copies,
copy what, prune what, or refuse.

Pure: no file system access, so every trust, space and retention decision is unit-tested.
The copier (usbagent.copier) gathers the facts and carries the plan out; `space_to_free`
decides, during the copy, which planned prunes must happen early because the stick is full.

Trust: a stick is a file system anyone can write to, so a file there counts as one of our
copies only when its content matches what this host knows it wrote: the local archive's
sidecar, or the sha256 the stick's ledger recorded when usbagent copied and verified it.
Only such copies count toward `keep`, may be pruned, or are named in the ledger. Anything
else with an archive name (no record of it, content that differs, a date in the future) is
"foreign": reported, never counted, never a reason to delete, never deleted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from usbagent import chains, naming
from usbagent.chains import RestorePoint
from usbagent.naming import in_future
from usbagent.units import human_bytes

# Room kept back per file copied: the sidecar, block rounding and directory growth. Small
# next to any archive, but enough that a plan that "just fits" does not end in ENOSPC.
MARGIN_PER_FILE = 64 * 1024
MARGIN_FIXED = 1024 * 1024


@dataclass(frozen=True)
class StickFile:
    """A copy of one of our archives on the stick, as usbagent wrote and verified it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LocalArchive:
    """An archive in archive.destination with the sha256 its sidecar records."""

    name: str
    size: int
    sha256: str


# Why a file named like one of our archives is not one of our copies.
ForeignWhy = Literal[
    "future",  # dated in the future: a real archive cannot be (or the clock was wrong)
    "unrecorded",  # neither a local archive nor the stick's ledger knows this name
    "differs",  # the name is ours, the content is not, and usbagent never wrote it
    "unverifiable",  # recorded only by name (older ledger) and no sidecar to check against
    "sidecar",  # a sidecar without its archive, that usbagent did not write
    "partial",  # a temporary name of ours for an archive usbagent has no reason to write
]


@dataclass(frozen=True)
class Foreign:
    """A file with one of our names that is not one of our copies: reported, left alone."""

    name: str
    size: int
    why: ForeignWhy


@dataclass(frozen=True)
class Check:
    """A file on the stick that may be one of our copies: its content must be `expect`."""

    expect: StickFile
    size: int  # as found on the stick
    ours: bool  # the ledger records that usbagent wrote it, so it may delete it if corrupt
    replaceable: bool  # a local archive exists to copy it again from
    sidecar_ok: bool  # the stick's sidecar already records expect.sha256


@dataclass(frozen=True)
class Survey:
    """What the folder on the stick holds, judged by name and records, before reading."""

    checks: tuple[Check, ...]  # newest first
    foreign: tuple[Foreign, ...]
    stale_sidecars: tuple[str, ...]  # our sidecars whose archive is gone (interrupted prune)


@dataclass(frozen=True)
class Audit:
    """The copies on the stick after reading them back."""

    present: tuple[StickFile, ...]  # verified copies of ours, newest first
    replace: tuple[str, ...]  # ours but corrupt, and a local archive exists: delete, recopy
    corrupt: tuple[str, ...]  # ours but corrupt, no local archive: kept (it may be the only one)
    foreign: tuple[Foreign, ...]
    fix_sidecars: tuple[StickFile, ...]  # verified copies whose sidecar must be rewritten


@dataclass(frozen=True)
class SyncPlan:
    copy: tuple[LocalArchive, ...]  # in `copy_order`: newest chain first, full before levels
    # oldest chain first, its highest level first (so the stick holds a chain's prefix at
    # every moment): the order they may be freed early for space
    prune: tuple[str, ...]
    bytes_to_copy: int
    future: tuple[str, ...] = ()  # local archives not copied: dated in the future
    points: tuple[str, ...] = ()  # the complete restore points the stick is to hold
    # restore points neither the stick nor this host can complete: those whose copies the
    # stick holds (kept, never counted: the sync fails naming them), and those only here
    # (never copied: an increment without its whole chain restores nothing)
    broken: tuple[RestorePoint, ...] = ()
    uncopied: tuple[RestorePoint, ...] = ()


@dataclass(frozen=True)
class Refusal:
    reason: str


def margin(files: int) -> int:
    """Bytes to keep free beyond the archives themselves when copying `files` archives."""
    return MARGIN_FIXED + MARGIN_PER_FILE * files if files else 0


def _newest_first(names: Collection[str], prefix: str) -> list[str]:
    parsed = [(naming.parse(n, prefix), n) for n in names]
    return [n for a, n in sorted(((a, n) for a, n in parsed if a), reverse=True)]


def leftovers(
    files: Collection[str],
    local: Sequence[LocalArchive],
    recorded_names: Collection[str],
    prefix: str,
) -> tuple[str, ...]:
    """`.partial` files an interrupted run of ours left: the temporaries of an archive (or
    sidecar) this host has or the ledger records. Another partial-looking file is not ours
    to delete; `survey` reports it."""
    ours = {a.name for a in local if naming.parse(a.name, prefix)} | set(recorded_names)
    return tuple(n for n in sorted(files) if naming.is_partial(n) and _archive_of(n) in ours)


def _archive_of(name: str) -> str:
    """The archive a sidecar or temporary name belongs to."""
    return name.removesuffix(naming.PARTIAL).removesuffix(naming.SIDECAR)


def survey(
    files: Mapping[str, int],
    stick_sidecars: Mapping[str, str | None],
    local: Sequence[LocalArchive],
    recorded: Sequence[StickFile],
    recorded_names: Collection[str],
    prefix: str,
    now: datetime,
) -> Survey:
    """Which files in the stick's folder to read back, and against what; which are foreign.

    `files`: the regular files in the folder (name -> size); `stick_sidecars`: archive name
    -> the sha256 its sidecar on the stick holds (None if unreadable); `recorded`: the
    copies the stick's ledger says usbagent wrote and verified; `recorded_names`: names an
    older ledger kept without a hash. The reference for a copy is always the host's: the
    local sidecar, else the ledger's hash. A sidecar on the stick is trusted only for a copy
    the ledger names (an older ledger that kept no hash), never to let a file in.
    """
    mine = {a.name: a for a in local}
    known = {c.name: c for c in recorded}
    checks: list[Check] = []
    foreign: list[Foreign] = []
    archives = [n for n in files if naming.parse(n, prefix)]
    for name in _newest_first(archives, prefix):
        size = files[name]
        ours = name in known or name in recorded_names
        on_stick = stick_sidecars.get(name)
        reference = mine.get(name) or known.get(name)
        expect = StickFile(reference.name, reference.size, reference.sha256) if reference else None
        if expect is None and name in recorded_names and on_stick is not None:
            expect = StickFile(name, size, on_stick)  # an older ledger: trust on first use
        if in_future(name, now):
            foreign.append(Foreign(name, size, "future"))
        elif expect is None:
            why: ForeignWhy = "unverifiable" if name in recorded_names else "unrecorded"
            foreign.append(Foreign(name, size, why))
        else:
            checks.append(Check(expect, size, ours, name in mine, on_stick == expect.sha256))
    stale: list[str] = []
    for name, size in sorted(files.items()):
        if naming.is_partial(name) and naming.parse(_archive_of(name), prefix):
            foreign.append(Foreign(name, size, "partial"))
            continue
        base = name.removesuffix(naming.SIDECAR)
        if name == base or base in files or not naming.parse(base, prefix):
            continue
        if base in known or base in recorded_names:
            stale.append(name)
        else:
            foreign.append(Foreign(name, size, "sidecar"))
    return Survey(tuple(checks), tuple(foreign), tuple(stale))


def judge(found: Survey, read_back: Mapping[str, str | None]) -> Audit:
    """Sort the checked files by what their content turned out to be.

    `read_back`: name -> sha256 of the file as the device holds it (None: not read, because
    its size already differs). A match is one of our copies. A mismatch is a corrupt copy of
    ours when the ledger says usbagent wrote it (replaced from the local archive when there
    is one, otherwise kept: a damaged only copy still holds readable data); when usbagent
    never wrote it, it is foreign and left alone.
    """
    present: list[StickFile] = []
    replace: list[str] = []
    corrupt: list[str] = []
    foreign = list(found.foreign)
    fix: list[StickFile] = []
    for check in found.checks:
        name = check.expect.name
        if check.size == check.expect.size and read_back.get(name) == check.expect.sha256:
            present.append(check.expect)
            if not check.sidecar_ok:
                fix.append(check.expect)
        elif not check.ours:
            foreign.append(Foreign(name, check.size, "differs"))
        elif check.replaceable:
            replace.append(name)
        else:
            corrupt.append(name)
    return Audit(tuple(present), tuple(replace), tuple(corrupt), tuple(foreign), tuple(fix))


@dataclass(frozen=True)
class Retained:
    """The restore points a stick is to hold, and the ones no sync can make whole."""

    points: tuple[RestorePoint, ...]  # the `keep` newest complete points, newest first
    needed: frozenset[str]  # every archive those points need (their chains)
    broken: tuple[RestorePoint, ...]  # points within retention whose chain is incomplete


def retained(available: Collection[str], keep: int, prefix: str) -> Retained:
    """Which restore points to hold when the archives `available` can be had.

    Only complete points count toward `keep`: an increment without its whole chain restores
    nothing a person asked for. A broken point stays within retention (reported, its copies
    kept: an increment still holds the files changed that night) until `keep` complete
    points newer than it exist; then it goes like any old copy.
    """
    points = chains.points_of(available, prefix)[::-1]  # newest first
    target = tuple([p for p in points if p.complete][:keep])
    cutoff = target[-1].archive if target and len(target) >= keep else None
    broken = tuple(p for p in chains.broken(points) if cutoff is None or p.archive > cutoff)
    return Retained(target, chains.needed(target), tuple(reversed(broken)))


def copy_order(names: Collection[str], prefix: str) -> list[str]:
    """Newest chain first; within a chain its full, then levels 1..N: a stick pulled
    midway holds a usable prefix of the newest chain, never an increment without its base."""
    parsed = [(a, n) for a, n in ((naming.parse(n, prefix), n) for n in names) if a]
    return [n for a, n in sorted(parsed, key=lambda an: (an[0].full, -an[0].level), reverse=True)]


def plan_sync(
    local: Sequence[LocalArchive],
    on_stick: Sequence[StickFile],
    free_bytes: int,
    keep: int,
    prefix: str,
    now: datetime,
    exclude: Collection[str] = (),
) -> SyncPlan | Refusal:
    """Make the stick hold the newest `keep` complete restore points of `prefix` that can be
    had from here or from the stick, with every archive their chains need.

    `on_stick` must be verified copies of ours (`Audit.present`): nothing else counts. The
    points are judged over stick + local, so an archive older than what the stick already
    keeps is never copied only to be pruned, and a chain member the stick lacks (never
    copied, or removed as corrupt) is copied again when this host has it: a broken chain on
    the stick is repaired. Archives dated in the future never count (they would push every
    real one out) and are not copied; `exclude` names local archives that cannot be copied
    (corrupt here, or a foreign file holds the name on the stick): they take no place, so
    no older copy is pruned in their stead. Files of other prefixes are neither counted nor
    touched. Prunes are only copies no kept point needs and no reported broken point holds,
    never extra ones to make room; the copy must fit in the free space plus what they
    release.
    """
    local_by_name = {
        a.name: a
        for a in local
        if naming.parse(a.name, prefix) and a.name not in exclude and not in_future(a.name, now)
    }
    stick_by_name = {
        f.name: f for f in on_stick if naming.parse(f.name, prefix) and not in_future(f.name, now)
    }
    future = tuple(a.name for a in local if naming.parse(a.name, prefix) and in_future(a.name, now))
    keeping = retained(local_by_name.keys() | stick_by_name.keys(), keep, prefix)
    # a broken point the stick holds is its archive there, not merely its chain's base
    broken = tuple(p for p in keeping.broken if p.archive.filename in stick_by_name)
    held = {n for p in broken for n in p.filenames if n in stick_by_name}
    missing = keeping.needed - stick_by_name.keys()
    copy = tuple(local_by_name[n] for n in copy_order(missing, prefix))
    spare = stick_by_name.keys() - keeping.needed - held
    prune = tuple(reversed(copy_order(spare, prefix)))
    bytes_to_copy = sum(a.size for a in copy)
    released = sum(stick_by_name[n].size for n in prune)
    needed = bytes_to_copy + margin(len(copy))
    if copy and free_bytes + released < needed:
        return Refusal(
            f"not enough space: {len(copy)} archive(s) need {human_bytes(needed)} "
            f"({human_bytes(bytes_to_copy)} + {human_bytes(needed - bytes_to_copy)} margin) "
            f"for {len(keeping.points)} restore point(s) with their whole chains, "
            f"the stick has {human_bytes(free_bytes)} free and pruning old copies would "
            f"release {human_bytes(released)} more; make room on the stick, lower usb.keep, "
            "or use a bigger one"
        )
    return SyncPlan(
        copy=copy,
        prune=prune,
        bytes_to_copy=bytes_to_copy,
        future=future,
        points=tuple(p.archive.filename for p in keeping.points),
        broken=broken,
        uncopied=tuple(p for p in keeping.broken if p not in broken),
    )


@dataclass(frozen=True)
class Wanted:
    """What a sync would copy to an empty stick, judged before mounting it."""

    sizes: tuple[tuple[str, int], ...]  # every member of the kept points' chains, copy order
    least: int  # bytes of the smallest of those restore points with its whole chain


def wanted(local: Sequence[LocalArchive], keep: int, prefix: str, now: datetime) -> Wanted:
    """The archives (and their sizes) the newest `keep` complete restore points here need:
    what the FAT32 limit and a partition's size are judged against before mount."""
    size = {a.name: a.size for a in local if not in_future(a.name, now)}
    keeping = retained(size.keys(), keep, prefix)
    least = min((sum(size[n] for n in p.filenames) for p in keeping.points), default=0)
    order = copy_order(keeping.needed, prefix)
    return Wanted(tuple((n, size[n]) for n in order), least)


def space_to_free(
    free_bytes: int, next_size: int, remaining_prune: Sequence[tuple[str, int]]
) -> list[str]:
    """Planned prunes (oldest first, with sizes) to carry out now so `next_size` fits.

    Normally prunes wait until every new copy is verified; only when the stick is too full
    for the next copy are the oldest planned prunes done early, and never more than needed.
    Returns [] when the copy fits; the whole list when even that is not enough (the copy
    then fails with ENOSPC, which the plan's space check makes unlikely).
    """
    need = next_size + margin(1)
    chosen: list[str] = []
    for name, size in remaining_prune:
        if free_bytes >= need:
            break
        chosen.append(name)
        free_bytes += size
    return chosen
