"""The snapshot store: GNU tar's `--listed-incremental` state after each archive, in the
state dir (the journal's part for it: no other module writes there).

Layout, under `<state_dir>/snapshots/`, per archive file name NAME:
  NAME.snar          the snapshot tar wrote while making NAME, byte for byte
  NAME.snar.json     {"archive": NAME, "sha256": of NAME.snar, "selection": what tar selected}

An increment never lets tar touch a committed snapshot: tar updates a copy,
`NAME.snar.partial` of the archive being made (`begin`), which gets its final name only
after the archive and its sidecar have theirs (`commit`). A failed or killed run leaves the
previous archive's snapshot in force; its partial is removed by the next run (`prepare`,
under the destination's lock). The name and digest tell a snapshot
that was damaged or swapped (read as "unreadable") from the one committed with its archive,
and the selection tells one made with other sources or exclusions (a full then).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from usbagent.errors import UsbagentError
from usbagent.fsutil import fsync_dir, sha256_of, write_atomic
from usbagent.levels import SnapshotState
from usbagent.naming import PARTIAL

FOLDER = "snapshots"
SUFFIX = ".snar"
META = ".json"


def folder(state_dir: Path) -> Path:
    return state_dir / FOLDER


def path(state_dir: Path, archive: str) -> Path:
    """Where the snapshot of the archive named `archive` is kept."""
    return folder(state_dir) / (archive + SUFFIX)


def _meta(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + META)


def _partial(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + PARTIAL)


def state(state_dir: Path, archive: str, selection: str) -> SnapshotState:
    """Whether the archive's snapshot can be built on tonight, with this `selection`."""
    snapshot = path(state_dir, archive)
    if not snapshot.exists():
        return "missing"
    try:
        meta = json.loads(_meta(snapshot).read_text())
        intact = (
            isinstance(meta, dict)
            and meta.get("archive") == archive
            and meta.get("sha256") == sha256_of(snapshot)
        )
    except (OSError, ValueError):
        return "unreadable"
    if not intact:
        return "unreadable"
    return "ok" if meta.get("selection") == selection else "selection"


def described(state_dir: Path) -> list[str]:
    """The archive names that have a snapshot (for doctor: one whose archive is gone)."""
    try:
        names = [p.name for p in folder(state_dir).iterdir()]
    except FileNotFoundError:
        return []
    return sorted(n.removesuffix(SUFFIX) for n in names if n.endswith(SUFFIX))


def prepare(state_dir: Path) -> None:
    """Make the store ready (OSError when the state dir cannot hold it); leftover partials
    of killed runs are removed (run under the destination's lock)."""
    where = folder(state_dir)
    where.mkdir(parents=True, exist_ok=True)
    for leftover in where.iterdir():
        if leftover.name.endswith(SUFFIX + PARTIAL):
            leftover.unlink(missing_ok=True)


def begin(state_dir: Path, base: str | None, archive: str) -> Path:
    """The file tar updates while making `archive`: a copy of `base`'s snapshot, or none
    yet for a full (tar creates it)."""
    partial = _partial(path(state_dir, archive))
    if base is not None:
        try:
            shutil.copyfile(path(state_dir, base), partial)
        except OSError as exc:
            raise UsbagentError(
                f"cannot copy the snapshot of {base} in {folder(state_dir)}: {exc.strerror or exc}"
            ) from None
    return partial


def commit(state_dir: Path, archive: str, selection: str) -> None:
    """Give the snapshot tar wrote for `archive` its final name, durably: its digest first,
    then the snapshot (a crash between leaves it "missing": the next run is a full)."""
    snapshot = path(state_dir, archive)
    partial = _partial(snapshot)
    with partial.open("rb+") as f:
        os.fsync(f.fileno())
    meta = {"archive": archive, "sha256": sha256_of(partial), "selection": selection}
    write_atomic(_meta(snapshot), (json.dumps(meta, sort_keys=True) + "\n").encode())
    partial.rename(snapshot)
    fsync_dir(snapshot.parent)


def discard(state_dir: Path, archive: str) -> None:
    """Drop the partial snapshot of a run that made no archive."""
    _partial(path(state_dir, archive)).unlink(missing_ok=True)


def forget(state_dir: Path, archives: Iterable[str]) -> None:
    """Remove the snapshots of archives retention deleted (snapshot first, then its
    digest: a crash between leaves a digest without snapshot, which reads as "missing")."""
    removed = False
    for archive in archives:
        snapshot = path(state_dir, archive)
        for file in (snapshot, _meta(snapshot)):
            if file.exists():
                file.unlink()
                removed = True
    if removed:
        fsync_dir(folder(state_dir))
