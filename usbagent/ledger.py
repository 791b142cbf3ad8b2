"""Per-stick records: which rotating stick holds what, and when it last took a verified copy.

One JSON file per stick, `<state_dir>/sticks/<fs-uuid>.json`, written atomically. `status`
lists them so a person sees, for each stick in the rotation, how fresh its copies are and
what went wrong last time; a stick that was plugged in without getting a verified copy
shows up here as an error, never as silence.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usbagent import chains
from usbagent.chains import RestorePoint
from usbagent.plan import StickFile
from usbagent.state import read_json, write_json

_SAFE_UUID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True)
class StickRecord:
    uuid: str
    label: str = ""
    fstype: str = ""  # as the stick reported it (vfat, exfat, ext4, ...): doctor checks limits
    archives: tuple[str, ...] = ()  # our archives on the stick after the last sync, newest first
    # the same copies with the size and sha256 usbagent verified them with: the only proof,
    # on a later sync, that a file on the stick is a copy usbagent wrote (see usbagent.plan)
    copies: tuple[StickFile, ...] = ()
    last_verified_copy: str = ""  # name of the newest archive verified on the stick
    last_verified_time: str = ""  # ISO time that archive was last verified
    last_seen: str = ""  # ISO time the stick was last plugged in / synced
    last_ok_sync: str = ""  # ISO time of the last sync that ended ok
    free_bytes: int | None = None
    last_error: str = ""  # summary of the last failed or refused sync
    last_error_time: str = ""

    @property
    def points(self) -> list[RestorePoint]:
        """Every copy on the stick as a restore point, judged over what the stick holds."""
        return chains.points_of(self.archives)

    @property
    def restore_point(self) -> RestorePoint | None:
        """The newest restore point the stick can restore completely (its whole chain is
        on it), derived from the copies recorded, so a ledger an older version wrote (only
        fulls) answers too. None: the stick holds none."""
        return chains.newest_complete(self.points)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["archives"] = list(self.archives)
        d["copies"] = [asdict(c) for c in self.copies]
        # derived, for a person or script reading the file; from_json ignores them
        point = self.restore_point
        d["restore_point"] = point.archive.filename if point else ""
        d["restore_point_made"] = point.archive.created.isoformat() if point else ""
        d["broken"] = [p.archive.filename for p in chains.broken(self.points)]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StickRecord:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["archives"] = tuple(known.get("archives", ()))
        known["copies"] = tuple(StickFile(**c) for c in known.get("copies", ()))
        return cls(**known)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def path_for(state_dir: Path, uuid: str) -> Path | None:
    """The ledger file of a stick, or None when its UUID cannot name a file safely."""
    if not _SAFE_UUID.match(uuid):
        return None
    return state_dir / "sticks" / f"{uuid.lower()}.json"


def load(state_dir: Path, uuid: str) -> StickRecord | None:
    path = path_for(state_dir, uuid)
    data = read_json(path) if path else None
    if not isinstance(data, dict):
        return None
    try:
        return StickRecord.from_json(data)
    except TypeError:
        return None


def _save(state_dir: Path, record: StickRecord) -> StickRecord:
    path = path_for(state_dir, record.uuid)
    if path is not None:
        write_json(path, record.to_json())
    return record


def _current(state_dir: Path, uuid: str, label: str, fstype: str) -> StickRecord:
    record = load(state_dir, uuid) or StickRecord(uuid=uuid.lower())
    return replace(
        record, label=label or record.label, fstype=fstype or record.fstype, last_seen=_now()
    )


def record_ok(
    state_dir: Path,
    uuid: str,
    label: str,
    archives: tuple[str, ...],
    free_bytes: int | None,
    newest_verified: str,
    fstype: str = "",
    copies: tuple[StickFile, ...] = (),
) -> StickRecord:
    """A sync ended with every wanted archive verified on the stick."""
    now = _now()
    record = replace(
        _current(state_dir, uuid, label, fstype),
        archives=archives,
        copies=copies,
        free_bytes=free_bytes,
        last_ok_sync=now,
        last_verified_copy=newest_verified,
        last_verified_time=now if newest_verified else "",
    )
    return _save(state_dir, record)


def record_error(
    state_dir: Path,
    uuid: str,
    label: str,
    summary: str,
    archives: tuple[str, ...] | None = None,
    free_bytes: int | None = None,
    fstype: str = "",
    copies: tuple[StickFile, ...] | None = None,
) -> StickRecord:
    """A recognised stick did not get a verified backup (failed or refused): say so.

    `archives`/`copies` (when known) are what the stick holds now: a failed sync may still
    have copied, pruned or replaced some, and the next one trusts only what is recorded.
    """
    record = _current(state_dir, uuid, label, fstype)
    record = replace(
        record,
        last_error=summary,
        last_error_time=_now(),
        archives=record.archives if archives is None else archives,
        copies=record.copies if copies is None else copies,
        free_bytes=record.free_bytes if free_bytes is None else free_bytes,
    )
    return _save(state_dir, record)


def sticks(state_dir: Path) -> list[StickRecord]:
    """Every stick ever seen, most recently seen first."""
    folder = state_dir / "sticks"
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = read_json(path)
        if isinstance(data, dict):
            try:
                records.append(StickRecord.from_json(data))
            except TypeError:
                continue
    return sorted(records, key=lambda r: r.last_seen, reverse=True)
