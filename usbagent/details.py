"""Typed outcome details per kind, read once from the JSON an Outcome carries.

`Outcome.details` stays plain JSON on disk (old state dirs keep loading, and `status` of a
state dir an earlier version wrote still works); modules never read it by key: they ask for
the typed view of the kind they care about, and get None (or empty fields) for a shape
they do not know instead of a KeyError.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from usbagent.events import Outcome, Removal


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d.get(key)
    return value if isinstance(value, str) else ""


def _int(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class ArchiveDetails:
    """What an archive run made (kind "archive")."""

    archive: str  # the file name, "" when the run made none
    size: int | None = None
    sha256: str = ""
    duration: float | None = None  # seconds

    @classmethod
    def of(cls, outcome: Outcome) -> ArchiveDetails | None:
        if outcome.kind != "archive":
            return None
        d = outcome.details
        return cls(_str(d, "archive"), _int(d, "size"), _str(d, "sha256"), _number(d, "duration"))


@dataclass(frozen=True)
class SyncDetails:
    """What a stick sync (kind "sync" or "refused") reported about the stick."""

    label: str
    uuid: str
    copied: tuple[str, ...] | None  # None: the outcome does not say (e.g. a failed mount)
    verified: int | None
    free_bytes: int | None
    removal: Removal | None  # how the stick may be taken out; None: not said
    error: str = ""  # why the sync failed, as the sync said it ("" when it did not fail)
    repaired: bool = False  # its filesystem failed the check before mount and was repaired

    @property
    def removable(self) -> bool:
        """The person was told the stick may be pulled now (or, from an older version
        that did not say, was told so in words): not for a mount left to them."""
        return self.removal not in ("after-unmount", "left-mounted")

    @classmethod
    def of(cls, outcome: Outcome) -> SyncDetails:
        d = outcome.details
        copied = d.get("copied")
        names = tuple(str(n) for n in copied) if isinstance(copied, list) else None
        removal = d.get("removal")
        known = typing.get_args(Removal)
        return cls(
            label=_str(d, "label"),
            uuid=_str(d, "uuid"),
            copied=names,
            verified=_int(d, "verified"),
            free_bytes=_int(d, "free_bytes"),
            removal=typing.cast(Removal, removal) if removal in known else None,
            error=_str(d, "error"),
            repaired=d.get("repaired") is True,
        )


def unit_of(outcome: Outcome) -> str:
    """The systemd unit a "unit-failed" outcome is about ("" when it names none)."""
    return _str(outcome.details, "unit")
