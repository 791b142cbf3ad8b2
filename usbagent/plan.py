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

from usbagent import naming
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
    copy: tuple[LocalArchive, ...]  # newest first
    prune: tuple[str, ...]  # oldest first: the order they may be freed early for space
    bytes_to_copy: int
    future: tuple[str, ...] = ()  # local archives not copied: dated in the future


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


def plan_sync(
    local: Sequence[LocalArchive],
    on_stick: Sequence[StickFile],
    free_bytes: int,
    keep: int,
    prefix: str,
    now: datetime,
    exclude: Collection[str] = (),
) -> SyncPlan | Refusal:
    """Make the stick hold the newest `keep` archives of `prefix` known here or on the stick.

    `on_stick` must be verified copies of ours (`Audit.present`): nothing else counts. The
    target set is the newest `keep` of (stick + local), so an archive older than what the
    stick already keeps is never copied only to be pruned. Archives dated in the future never
    count (they would push every real one out) and are not copied; `exclude` names local
    archives that cannot be copied (corrupt here, or a foreign file holds the name on the
    stick): they take no place in the target, so no older copy is pruned in their stead.
    Files of other prefixes are neither counted nor touched. The copy must fit in the free
    space plus what the planned prunes release; prunes are only ever those the retention
    policy asks for, never extra ones to make room.
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
    everything = _newest_first(local_by_name.keys() | stick_by_name.keys(), prefix)
    target = everything[:keep]
    copy = tuple(local_by_name[n] for n in target if n not in stick_by_name)
    prune = tuple(reversed([n for n in everything[keep:] if n in stick_by_name]))
    bytes_to_copy = sum(a.size for a in copy)
    released = sum(stick_by_name[n].size for n in prune)
    needed = bytes_to_copy + margin(len(copy))
    if copy and free_bytes + released < needed:
        return Refusal(
            f"not enough space: {len(copy)} archive(s) need {human_bytes(needed)} "
            f"({human_bytes(bytes_to_copy)} + {human_bytes(needed - bytes_to_copy)} margin), "
            f"the stick has {human_bytes(free_bytes)} free and pruning old copies would "
            f"release {human_bytes(released)} more; make room on the stick, lower usb.keep, "
            "or use a bigger one"
        )
    return SyncPlan(copy=copy, prune=prune, bytes_to_copy=bytes_to_copy, future=future)


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
