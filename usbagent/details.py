"""Typed outcome details per kind: built by producers, read by everyone, JSON on disk.

`Outcome.details` stays plain JSON (old state dirs keep loading, and `status` of a state
dir an earlier version wrote still works), but nobody writes or reads it by key: a producer
builds the dataclass of its kind and serialises it with `to_json` (the one serialiser), a
reader asks for the typed view (`SyncDetails.of`, ...) and gets None or empty fields for a
shape it does not know instead of a KeyError. So a field a reader expects can be neither
missing nor misspelt. Convention: None means "not said" and is left out of the JSON.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from usbagent.events import Outcome, Removal

# A field whose Mapping value is stored as keys of the details themselves (not nested):
# systemd's properties in a unit-failed outcome, as earlier versions stored them.
FLAT = {"flat": True}


def to_json(details: object) -> dict[str, Any]:
    """The JSON of a details dataclass: fields said (not None), tuples as lists, nested
    dataclasses as objects, FLAT mappings merged in."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(details):  # type: ignore[arg-type]
        value = getattr(details, f.name)
        if value is None:
            continue
        if f.metadata.get("flat"):
            out.update(value)
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d.get(key)
    return value if isinstance(value, str) else ""


def _said(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) else None


def _int(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(d: Mapping[str, Any], key: str) -> bool | None:
    value = d.get(key)
    return value if isinstance(value, bool) else None


def _number(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _names(d: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = d.get(key)
    return tuple(str(n) for n in value) if isinstance(value, list) else None


def _objects(d: Mapping[str, Any], key: str) -> list[Mapping[str, Any]] | None:
    value = d.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else None


@dataclass(frozen=True)
class SourceDetails:
    """What one source yielded into an archive."""

    path: str
    members: int
    bytes: int


@dataclass(frozen=True)
class ArchiveDetails:
    """What an archive run made (kind "archive"); build it and store `.to_json()`."""

    archive: str  # the file name, "" when the run made none
    size: int | None = None
    sha256: str = ""
    duration: float | None = None  # seconds
    pruned: tuple[str, ...] | None = None
    warnings: tuple[str, ...] | None = None  # what tar warned about
    sources: tuple[SourceDetails, ...] | None = None
    error: str | None = None  # why the run failed
    level: int | None = None  # 0: a full; None: not said (every older version made fulls)
    full: str | None = None  # the file name of its chain's full
    full_because: str | None = None  # a full: why (usbagent.levels.Why)

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def of(cls, outcome: Outcome) -> ArchiveDetails | None:
        if outcome.kind != "archive":
            return None
        d = outcome.details
        sources = _objects(d, "sources")
        return cls(
            archive=_str(d, "archive"),
            size=_int(d, "size"),
            sha256=_str(d, "sha256"),
            duration=_number(d, "duration"),
            pruned=_names(d, "pruned"),
            warnings=_names(d, "warnings"),
            sources=None
            if sources is None
            else tuple(
                SourceDetails(_str(s, "path"), _int(s, "members") or 0, _int(s, "bytes") or 0)
                for s in sources
            ),
            error=_said(d, "error"),
            level=_int(d, "level"),
            full=_said(d, "full"),
            full_because=_said(d, "full_because"),
        )


@dataclass(frozen=True)
class ForeignDetails:
    """A file named like an archive on the stick that is not a copy usbagent wrote."""

    name: str
    why: str


@dataclass(frozen=True)
class PointDetails:
    """A restore point a sync could not put on the stick whole: what its chain lacks."""

    archive: str
    missing: tuple[int, ...]  # levels absent (0: the full)
    ambiguous: tuple[int, ...]  # levels with two archives


def _points(d: Mapping[str, Any], key: str) -> tuple[PointDetails, ...] | None:
    points = _objects(d, key)
    if points is None:
        return None
    return tuple(
        PointDetails(_str(p, "archive"), _levels(p, "missing"), _levels(p, "ambiguous"))
        for p in points
    )


def _levels(d: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = d.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))


@dataclass(frozen=True)
class SyncDetails:
    """What usbagent said about a stick (kinds "sync", "refused", "stick-recognised").

    The sync's run fills most fields; the agent's own failures (mount, check) and its
    "recognised" note say only which stick (label, uuid, fstype, device).
    """

    label: str = ""
    uuid: str = ""
    fstype: str = ""
    device: str | None = None
    copied: tuple[str, ...] | None = None  # None: the outcome does not say (a failed mount)
    bytes: int | None = None  # copied
    verified: int | None = None  # verified copies the stick holds now
    replaced: tuple[str, ...] | None = None  # corrupt copies of ours deleted and copied again
    corrupt: tuple[str, ...] | None = None  # corrupt copies that could not be replaced
    foreign: tuple[ForeignDetails, ...] | None = None
    future: tuple[str, ...] | None = None  # local archives not copied: dated in the future
    unrecorded: tuple[str, ...] | None = None  # not copied: no run recorded making them
    corrupt_local: tuple[str, ...] | None = None  # local archives found corrupt (paths)
    pruned: tuple[str, ...] | None = None
    free_bytes: int | None = None
    archives: tuple[str, ...] | None = None  # our verified copies on the stick now
    restore_points: int | None = None  # restore points the stick restores completely now
    restore_point: str | None = None  # the newest of them ("" when there is none)
    broken: tuple[PointDetails, ...] | None = None  # chains on the stick a member is missing of
    uncopied: tuple[PointDetails, ...] | None = None  # not copied: the host lacks a member
    duration: float | None = None  # seconds
    removal: Removal | None = None  # how the stick may be taken out; None: not said
    unmounted: bool | None = None
    powered_off: bool | None = None
    repaired: bool | None = None  # its filesystem failed the check and was repaired
    error: str | None = None  # why the sync failed, as the sync said it
    reason: str | None = None  # why the stick was refused

    @property
    def removable(self) -> bool:
        """The person was told the stick may be pulled now (or, from an older version
        that did not say, was told so in words): not for a mount left to them."""
        return self.removal not in ("after-unmount", "left-mounted")

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def of(cls, outcome: Outcome) -> SyncDetails:
        d = outcome.details
        removal = d.get("removal")
        foreign = _objects(d, "foreign")
        return cls(
            label=_str(d, "label"),
            uuid=_str(d, "uuid"),
            fstype=_str(d, "fstype"),
            device=_said(d, "device"),
            copied=_names(d, "copied"),
            bytes=_int(d, "bytes"),
            verified=_int(d, "verified"),
            replaced=_names(d, "replaced"),
            corrupt=_names(d, "corrupt"),
            foreign=None
            if foreign is None
            else tuple(ForeignDetails(_str(f, "name"), _str(f, "why")) for f in foreign),
            future=_names(d, "future"),
            unrecorded=_names(d, "unrecorded"),
            corrupt_local=_names(d, "corrupt_local"),
            pruned=_names(d, "pruned"),
            free_bytes=_int(d, "free_bytes"),
            archives=_names(d, "archives"),
            restore_points=_int(d, "restore_points"),
            restore_point=_said(d, "restore_point"),
            broken=_points(d, "broken"),
            uncopied=_points(d, "uncopied"),
            duration=_number(d, "duration"),
            removal=typing.cast(Removal, removal) if removal in typing.get_args(Removal) else None,
            unmounted=_bool(d, "unmounted"),
            powered_off=_bool(d, "powered_off"),
            repaired=_bool(d, "repaired"),
            error=_said(d, "error"),
            reason=_said(d, "reason"),
        )


@dataclass(frozen=True)
class UnitDetails:
    """Which systemd unit failed and what systemd said (kind "unit-failed")."""

    unit: str
    via: str  # the hook that saw it: "ExecStopPost" (each bad run) or "OnFailure" (final)
    scope: str | None = None  # "user" or "system" manager (OnFailure only)
    journal: str | None = None  # the command that shows its log
    reason: str | None = None  # what the failed program itself recorded
    systemd: Mapping[str, str] = field(default_factory=dict, metadata=FLAT)  # its properties

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def of(cls, outcome: Outcome) -> UnitDetails | None:
        if outcome.kind != "unit-failed":
            return None
        d = outcome.details
        own = {f.name for f in dataclasses.fields(cls)}
        return cls(
            unit=_str(d, "unit"),
            via=_str(d, "via"),
            scope=_said(d, "scope"),
            journal=_said(d, "journal"),
            reason=_said(d, "reason"),
            systemd={k: v for k, v in d.items() if k not in own and isinstance(v, str)},
        )


def unit_of(outcome: Outcome) -> str:
    """The systemd unit a "unit-failed" outcome is about ("" when it names none)."""
    return _str(outcome.details, "unit")
