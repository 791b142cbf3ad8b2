"""The host's side of a stick sync: the archive folder's listing (pyfilesystem2, which fits a
folder usbagent owns, never the stick: its OSFS follows symlinks), the local checks.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usbagent import naming, retention, state
from usbagent.config import Config
from usbagent.copier import (
    CHUNK,
    Cancelled,
)
from usbagent.plan import LocalArchive, Wanted, wanted

log = logging.getLogger(__name__)


# --- the local side -----------------------------------------------------------------------


def local_archives(config: Config) -> list[LocalArchive]:
    """Complete archives in archive.destination (those with a valid sidecar), newest first.

    Read through pyfilesystem2's OSFS: the destination is ours (root-owned, no symlink
    games), so its path-based API fits here, unlike on the stick (see usbagent.copier).
    An archive whose sidecar is missing (the nightly job is still writing it) is skipped.
    A destination that exists but cannot be read raises OSError naming it.
    """
    dest = config.archive.destination
    if not dest.exists():
        return []
    fs_errors, osfs = _import_fs()
    found: list[tuple[naming.ArchiveName, LocalArchive]] = []
    try:
        with osfs.OSFS(str(dest)) as home:
            infos = {i.name: i for i in home.scandir("/", namespaces=["details"]) if i.is_file}
            for name, info in infos.items():
                parsed = naming.parse(name, config.archive_prefix)
                if parsed is None or name + naming.SIDECAR not in infos:
                    continue
                try:
                    digest = naming.sidecar_digest(
                        home.readtext(name + naming.SIDECAR)[:4096], name
                    )
                except fs_errors.ResourceNotFound:
                    continue  # retention removed it meanwhile
                if digest is None:
                    log.warning("%s: its sidecar states no sha256 for it, not copied", name)
                    continue
                archive = LocalArchive(name=name, size=int(info.size), sha256=digest)
                found.append((parsed, archive))
    except (fs_errors.FSError, fs_errors.CreateFailed) as exc:
        raise OSError(errno.EACCES, f"cannot list archives: {exc}", str(dest)) from exc
    return [archive for _, archive in sorted(found, reverse=True)]


def _import_fs() -> tuple[Any, Any]:
    """pyfilesystem2, imported on first use with its pkg_resources deprecation hidden."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fs.errors
        import fs.osfs
    return fs.errors, fs.osfs


def to_copy(config: Config) -> Wanted:
    """What a sync would copy at most: the kept restore points' whole chains (for
    `refusal_reason` before mount)."""
    now = datetime.now(UTC)
    return wanted(local_archives(config), config.usb.keep, config.archive_prefix, now)


@dataclass(frozen=True)
class CorruptLocal:
    """A local archive whose content does not match its own sidecar: a host problem."""

    path: Path
    sha256: str  # what the file holds
    expected: str  # what its sidecar says, or (by_record) what its run recorded
    by_record: bool = False  # the sidecar matches the file, but the run wrote another


def unrecorded(config: Config, local: list[LocalArchive]) -> tuple[str, ...]:
    """Local archives no completed `usbagent archive` run recorded (where the state dir's
    history reaches): a file the host did not make is never copied as if it were a backup."""
    try:
        history = state.events(config.agent.state_dir)
        journal = {n: r.recorded for n, r in state.archives(config.agent.state_dir).items()}
        record = retention.record_from(history, journal)
    except OSError as exc:
        log.warning("cannot read the history in %s: %s", config.agent.state_dir, exc)
        return ()
    if record is None:
        return ()
    parsed = ((a.name, naming.parse(a.name)) for a in local)
    return tuple(n for n, p in parsed if p is not None and not record.knows(p))


def recorded_sha256(config: Config) -> dict[str, str]:
    """Archive name -> the sha256 its run recorded. A sidecar can be rewritten to match a
    damaged file (`sha256sum F > F.sha256`); the state dir's record cannot be, by accident."""
    try:
        history = state.events(config.agent.state_dir)
        known = state.archives(config.agent.state_dir, history)
    except OSError as exc:
        log.warning("cannot read the history in %s: %s", config.agent.state_dir, exc)
        return {}
    return {name: r.sha256 for name, r in known.items()}


def local_sha256(path: Path, cancel: threading.Event) -> str:
    """sha256 of a local archive as it is now, read once (the copy then mostly hits cache)."""
    h = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while block := f.read(CHUNK):
            if cancel.is_set():
                raise Cancelled
            h.update(block)
    return h.hexdigest()
