"""Retention in the archive destination: which files to delete, decided from names alone.

Pure: it sees file names, the clock and (when there is one) the record of the archives
completed runs made, nothing else, so every rule is unit-tested:
- only names `naming.parse` recognises with our prefix are candidates (another host's
  archives in a shared folder, and anything a person put there, are never touched);
- it counts restore points (usbagent.chains: every archive, full or increment, is one):
  every point made within `keep_days` is kept, and with it every archive it needs (its
  chain's full and the increments before it), however old; an archive no kept point needs
  goes, with its `.sha256` sidecar;
- the newest archive is always kept, and so is the newest restore point that is whole
  (chain complete, every member with its sidecar), however old: a stopped timer must not
  end with an empty folder;
- "newest" means the newest *real* one: an archive dated in the future, or one the record
  does not know, is suspect. It is never deleted and never protects itself in place of a
  real one (else one junk file dated 2099 would let every real archive age out);
- a sidecar whose archive is gone is removed with the same age rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from usbagent import chains, naming
from usbagent.details import ArchiveDetails
from usbagent.events import Outcome


@dataclass(frozen=True)
class Record:
    """The archives completed runs recorded, and since when that (bounded) history reaches:
    an archive older than the history is judged by its name alone, as it cannot be in it."""

    names: frozenset[str]
    since: datetime

    def knows(self, archive: naming.ArchiveName) -> bool:
        return archive.filename in self.names or archive.created < self.since


def record_from(
    history: Sequence[Outcome],
    journal: Mapping[str, datetime] = MappingProxyType({}),
    also: Collection[str] = (),
) -> Record | None:
    """The Record a state dir gives, or None when it knows nothing yet.

    `history`: events.jsonl, oldest first (bounded); every archive outcome that names an
    archive counts, failed ones too (an archive whose retention failed was still written by
    usbagent). `journal`: archives.json, name -> when it was recorded (bounded too). The
    record reaches back to the oldest thing either remembers. `also`: archives made by this
    run, recorded only after retention.
    """
    starts = [*journal.values(), *(o.time for o in history[:1])]
    if not starts:
        return None
    named = (made.archive for o in history if (made := ArchiveDetails.of(o)) is not None)
    names = frozenset(n for n in (*named, *journal, *also) if n)
    return Record(names, since=min(starts))


def _archives(present: set[str], prefix: str) -> dict[str, naming.ArchiveName]:
    return {
        parsed.filename: parsed
        for parsed in (naming.parse(n, prefix) for n in present)
        if parsed is not None
    }


def suspects(
    filenames: Collection[str], prefix: str, now: datetime, record: Record | None
) -> list[str]:
    """Archives retention leaves alone and a person should look at, oldest first: dated in
    the future, or (with a record) never recorded as made by a completed run."""
    return [
        a.filename
        for a in sorted(_archives(set(filenames), prefix).values())
        if naming.in_future(a.filename, now) or (record is not None and not record.knows(a))
    ]


def plan(
    filenames: Collection[str],
    prefix: str,
    now: datetime,
    keep_days: int,
    record: Record | None = None,
) -> list[str]:
    """File names to delete, each archive before its sidecar.

    `record`: the archives completed runs recorded (None: no record to go by, then names
    alone decide, but still never a future-dated one).

    Kept: every restore point made within `keep_days`, the newest real archive and the
    newest restore point that is whole (its chain complete, every member with its sidecar),
    each with every archive it needs, however old. Deleted: the other real archives.

    Newest first: a run killed while it prunes a chain leaves the start of that chain, which
    still restores, never increments without their full (a broken chain to `status`).
    Archive first: a crash between the two unlinks leaves an orphan sidecar (removed next
    time), never an archive without its checksum.
    """
    present = set(filenames)
    archives = _archives(present, prefix)
    suspect = set(suspects(present, prefix, now, record))
    real = [a for n, a in archives.items() if n not in suspect]
    orphans = [
        parsed
        for parsed in (naming.parse(n.removesuffix(naming.SIDECAR), prefix) for n in present)
        if parsed is not None
        and parsed.filename not in archives
        and (record is None or record.knows(parsed))
    ]
    cutoff = now - timedelta(days=keep_days)
    keep = chains.needed(_kept_points(real, present, cutoff))
    doomed = sorted(
        [a for a in real if a.filename not in keep] + [o for o in orphans if o.created < cutoff],
        reverse=True,
    )
    out: list[str] = []
    for archive in doomed:
        out += [n for n in (archive.filename, archive.sidecar) if n in present]
    return out


def _kept_points(
    real: list[naming.ArchiveName], present: set[str], cutoff: datetime
) -> list[chains.RestorePoint]:
    """The restore points retention keeps (see `plan`)."""
    points = chains.restore_points(real)
    kept = [p for p in points if p.archive.created >= cutoff]
    if points:
        kept.append(points[-1])  # the newest real archive
    whole = [p for p in points if p.complete and all(m.sidecar in present for m in p.members)]
    if whole:
        kept.append(whole[-1])
    return kept
