"""What a sync does to a stick, decided from facts alone: copy what, prune what, or refuse.

Pure: no file system access, so every space and retention decision is unit-tested. The
copier (usbagent.copier) carries the plan out; `space_to_free` decides, during the copy,
which planned prunes must happen early because the stick is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from usbagent import naming

# Room kept back per file copied: the sidecar, block rounding and directory growth. Small
# next to any archive, but enough that a plan that "just fits" does not end in ENOSPC.
MARGIN_PER_FILE = 64 * 1024
MARGIN_FIXED = 1024 * 1024


@dataclass(frozen=True)
class StickFile:
    """An archive already on the stick, complete and under its final name."""

    name: str
    size: int


@dataclass(frozen=True)
class LocalArchive:
    """An archive in archive.destination with the sha256 its sidecar records."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SyncPlan:
    copy: tuple[LocalArchive, ...]  # newest first
    prune: tuple[str, ...]  # oldest first: the order they may be freed early for space
    bytes_to_copy: int


@dataclass(frozen=True)
class Refusal:
    reason: str


def margin(files: int) -> int:
    """Bytes to keep free beyond the archives themselves when copying `files` archives."""
    return MARGIN_FIXED + MARGIN_PER_FILE * files if files else 0


def _newest_first(names: Sequence[str], prefix: str) -> list[str]:
    parsed = [(naming.parse(n, prefix), n) for n in names]
    return [n for a, n in sorted(((a, n) for a, n in parsed if a), reverse=True)]


def plan_sync(
    local: Sequence[LocalArchive],
    on_stick: Sequence[StickFile],
    free_bytes: int,
    keep: int,
    prefix: str,
) -> SyncPlan | Refusal:
    """Make the stick hold the newest `keep` archives of `prefix` known here or on the stick.

    The target set is the newest `keep` of (stick + local), so an archive older than what the
    stick already keeps is never copied only to be pruned. Files of other prefixes (another
    host sharing the stick) and non-archive names are neither counted nor touched. The copy
    must fit in the free space plus what the planned prunes release; prunes are only ever
    those the retention policy asks for, never extra ones to make room.
    """
    local_by_name = {a.name: a for a in local if naming.parse(a.name, prefix)}
    stick_by_name = {f.name: f for f in on_stick if naming.parse(f.name, prefix)}
    everything = _newest_first(list(local_by_name.keys() | stick_by_name.keys()), prefix)
    target = everything[:keep]
    copy = tuple(local_by_name[n] for n in target if n not in stick_by_name)
    prune = tuple(reversed([n for n in everything[keep:] if n in stick_by_name]))
    bytes_to_copy = sum(a.size for a in copy)
    released = sum(stick_by_name[n].size for n in prune)
    needed = bytes_to_copy + margin(len(copy))
    if copy and free_bytes + released < needed:
        return Refusal(
            f"not enough space: {len(copy)} archive(s) need {needed} bytes "
            f"({bytes_to_copy} + {needed - bytes_to_copy} margin), the stick has {free_bytes} "
            f"bytes free and pruning old copies would release {released} more"
        )
    return SyncPlan(copy=copy, prune=prune, bytes_to_copy=bytes_to_copy)


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
