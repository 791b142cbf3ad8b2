"""Desktop notifications nobody has seen yet, kept in the state dir until someone logs in.

Separate from `notify` so that `usbagent status` can count them without importing D-Bus.
Several processes write here (the agent, the OnFailure hook), so every read-modify-write
holds an flock on a lock file beside the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from usbagent import state
from usbagent.fsutil import flocked

# Freedesktop urgency hint values.
LOW, NORMAL, CRITICAL = 0, 1, 2
# A desktop nobody logs into for months must not grow the state dir without bound.
MAX_PENDING = 100


@dataclass(frozen=True)
class Note:
    """One desktop notification, as data (rendered from an Outcome by `notify.render`)."""

    kind: str
    summary: str
    body: str
    urgency: int
    time: datetime
    # Nothing went wrong (a stick found, a clean copy): a digest of missed notes may fold it
    # into a count. Notes stored before this field existed read as problems, never dropped.
    routine: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = self.time.isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Note:
        return cls(
            kind=str(d["kind"]),
            summary=str(d["summary"]),
            body=str(d["body"]),
            urgency=int(d["urgency"]),
            time=datetime.fromisoformat(d["time"]),
            routine=d.get("routine") is True,
        )


def path(state_dir: Path) -> Path:
    return state_dir / "notifications-pending.json"


def pending(state_dir: Path) -> list[Note]:
    """Undelivered notifications, oldest first; unreadable entries are skipped."""
    data = state.read_json(path(state_dir))
    notes = []
    for item in data if isinstance(data, list) else []:
        try:
            notes.append(Note.from_json(item))
        except (KeyError, TypeError, ValueError):
            continue
    return notes


def _update(state_dir: Path, change: Callable[[list[Note]], list[Note]]) -> list[Note]:
    with flocked(state_dir / "notifications-pending.lock"):
        before = pending(state_dir)
        after = change(before)[-MAX_PENDING:]
        if after != before:
            state.write_json(path(state_dir), [n.to_json() for n in after])
        return before


def add(state_dir: Path, note: Note) -> None:
    _update(state_dir, lambda notes: [*notes, note])


def discard(state_dir: Path, delivered: list[Note]) -> None:
    """Remove notes once they were delivered (not before: a crash must not lose them)."""
    _update(state_dir, lambda notes: [n for n in notes if n not in delivered])
