"""Retention in the archive destination: which files to delete, decided from names alone.

Pure: it sees file names and the clock, nothing else, so every rule is unit-tested:
- only names `naming.parse` recognises with our prefix are candidates (another host's
  archives in a shared folder, and anything a person put there, are never touched);
- an archive older than `keep_days` goes, with its `.sha256` sidecar;
- the newest archive is always kept, and so is the newest one that has its sidecar (the
  newest *complete* one), however old: a stopped timer must not end with an empty folder;
- a sidecar whose archive is gone is removed with the same age rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from usbagent import naming


def plan(filenames: Iterable[str], prefix: str, now: datetime, keep_days: int) -> list[str]:
    """File names to delete, each archive before its sidecar.

    Archive first: a crash between the two unlinks leaves an orphan sidecar (removed next
    time), never an archive without its checksum.
    """
    present = set(filenames)
    archives = {
        parsed.filename: parsed
        for parsed in (naming.parse(n, prefix) for n in present)
        if parsed is not None
    }
    orphans = {
        parsed.filename: parsed
        for parsed in (naming.parse(n.removesuffix(naming.SIDECAR), prefix) for n in present)
        if parsed is not None and parsed.filename not in archives
    }
    protected = set()
    if archives:
        protected.add(max(archives.values()).filename)
    complete = [a for a in archives.values() if a.sidecar in present]
    if complete:
        protected.add(max(complete).filename)
    cutoff = now - timedelta(days=keep_days)
    doomed = sorted(
        a
        for a in [*archives.values(), *orphans.values()]
        if a.created < cutoff and a.filename not in protected
    )
    out: list[str] = []
    for archive in doomed:
        out += [n for n in (archive.filename, archive.sidecar) if n in present]
    return out
