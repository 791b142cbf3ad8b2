"""Outcomes: what happened, as plain data, recorded for `status` and raised for notifications.

Every producer (archive job, stick sync, unit-failure hook) describes its result as an
`Outcome`; `journal.record` persists it and the agent's `EventBus` hands it to subscribers
(notifications, metrics) without the producer knowing who listens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal[
    "archive",  # nightly archive job finished (ok or not)
    "stick-recognised",  # a backup stick appeared and passed the rules; copying starts
    "sync",  # copy + verify + prune onto a stick finished (ok or not)
    "refused",  # a stick has a backup label but fails a rule (fs type, space, UUID, bus)
    "unit-failed",  # systemd OnFailure= hook: a service failed, whatever its ExecStart was
    "stale",  # newest archive is older than agent.stale_after_hours
]


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    ok: bool
    summary: str  # one human line, used as the notification body and the status message
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = self.time.isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        return cls(
            kind=d["kind"],
            ok=bool(d["ok"]),
            summary=str(d["summary"]),
            time=datetime.fromisoformat(d["time"]),
            details=dict(d.get("details", {})),
        )


# How a stick that got its copies may be taken out, as the person was told (details["removal"]):
# the person unmounts it (`usbagent sync`), the agent unmounted (and powered off) it, or the
# agent left someone else's mount as it found it. Readers never search the summary for it.
Removal = Literal["after-unmount", "unmounted", "powered-off", "left-mounted"]


Subscriber = Callable[[Outcome], Awaitable[None]]


class EventBus:
    """Fan-out of outcomes to async subscribers; a failing subscriber is logged, never fatal."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def publish(self, outcome: Outcome) -> None:
        for callback in self._subscribers:
            task = asyncio.get_running_loop().create_task(self._deliver(callback, outcome))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, callback: Subscriber, outcome: Outcome) -> None:
        try:
            await callback(outcome)
        except Exception:
            log.exception("event subscriber %r failed for %s", callback, outcome.kind)

    async def drain(self) -> None:
        """Wait until every delivery in flight has finished (used at shutdown and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
