"""Desktop notifications for the people at the machine: the agent's (root's) subscriber.

Design (README "Desktop notifications"): logind on the system bus says which graphical
sessions exist and whose they are (`logind`); a notification is delivered on each such
user's session bus by a short helper process that becomes that user (`asuser`, started by
`delivery`), because a session bus refuses any other uid, root included. Nothing has to be
installed per user, and a desktop that starts its notification server late is waited for.

Nobody logged in graphically: the notification is logged and kept in the state dir
(`usbagent.outbox`), `usbagent status` counts it, and when logind announces a new session
the missed ones are delivered as "missed while you were away" (`missed`). Delivery never
raises into the caller: a broken desktop must not break a backup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message

from usbagent import dbuscall, logind
from usbagent.config import Config
from usbagent.delivery import deliver_to_users
from usbagent.details import SyncDetails, unit_of
from usbagent.events import Outcome
from usbagent.missed import deliver_missed, keep
from usbagent.outbox import CRITICAL, NORMAL, Note

log = logging.getLogger(__name__)

# A user who is logged in has a notification server now; one who just logged in may need
# a while until the desktop has started it.
WAIT_PRESENT_SECONDS = 5.0
WAIT_LOGIN_SECONDS = 120.0


def render(outcome: Outcome) -> Note | None:
    """The notification for an outcome, or None when it is not worth interrupting someone."""
    kind, body = outcome.kind, outcome.summary
    if kind == "stick-recognised":
        title = "Backup stick found: copying, do not remove it"
        return _note(outcome, title, body, NORMAL, routine=True)
    if kind == "sync" and outcome.ok:
        sync = SyncDetails.of(outcome)  # the data, never the summary's words
        title = "stick safe to remove" if sync.removable else "unmount the stick before removing it"
        return _note(outcome, f"Backup copied: {title}", body, NORMAL, routine=not sync.repaired)
    if kind == "sync":
        return _note(outcome, "Backup copy to stick FAILED", body, CRITICAL)
    if kind == "refused":
        return _note(outcome, "Backup stick not used", body, NORMAL)
    if kind == "archive" and not outcome.ok:
        return _note(outcome, "Nightly backup FAILED", body, CRITICAL)
    if kind == "unit-failed":
        unit = unit_of(outcome) or "a usbagent service"
        return _note(outcome, f"Backup service failed: {unit}", body, CRITICAL)
    if kind == "stale":
        return _note(outcome, "Backup is out of date", body, CRITICAL)
    return None  # a successful nightly archive is not news


def _note(outcome: Outcome, summary: str, body: str, urgency: int, routine: bool = False) -> Note:
    return Note(outcome.kind, summary, body, urgency, outcome.time, routine)


async def _deliver_or_keep(bus: MessageBus | None, state_dir: Path, note: Note) -> None:
    """Show `note` to everyone logged in graphically; if nobody saw it, keep it for later."""
    sessions: list[logind.Session] = []
    delivered = False
    try:
        sessions = await logind.graphical_sessions(bus) if bus is not None else []
        delivered = bool(sessions) and await deliver_to_users(sessions, note, WAIT_PRESENT_SECONDS)
        if delivered:  # someone is reachable now: also show what earlier attempts could not
            for session in logind.one_per_user(sessions):
                await deliver_missed(session, state_dir, WAIT_PRESENT_SECONDS)
    except Exception as exc:  # whatever broke (bus, logind, helper), the note must survive
        log.warning("desktop notification failed: %s", exc)
    if delivered:
        return
    log.warning(
        "desktop notification kept for later (%s): %s: %s",
        "no user reached" if sessions else "no graphical session",
        note.summary,
        note.body,
    )
    await keep(state_dir, note)


class Notifier:
    """The agent's subscriber: outcomes in, desktop notifications out, missed ones on login."""

    def __init__(self, config: Config, system_bus_address: str | None = None) -> None:
        self._config = config
        self._address = system_bus_address
        self._bus: MessageBus | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def _state_dir(self) -> Path:
        return self._config.agent.state_dir

    async def start(self) -> None:
        """Connect to logind and watch for logins; without a system bus, notes are kept."""
        if self._config.notify.enabled and await self._connect():
            self._spawn(self._flush_pending())

    async def _connect(self) -> bool:
        try:
            self._bus = await logind.system_bus(self._address)
            await logind.watch_logins(self._bus)
        except Exception as exc:
            log.warning("notifications: no system bus/logind (%s); keeping them for status", exc)
            self._disconnect()
            return False
        self._bus.add_message_handler(self._on_message)
        return True

    def _on_message(self, msg: Message) -> None:
        path = logind.new_session_path(msg)
        if path is not None:
            self._spawn(self._on_login(path))

    async def _on_login(self, path: str) -> None:
        if self._bus is None:
            return
        session = await logind.graphical_session(self._bus, path)
        if session is not None:
            log.info("graphical login of %s: delivering missed notifications", session.user)
            await deliver_missed(session, self._state_dir, WAIT_LOGIN_SECONDS)

    async def _flush_pending(self) -> None:
        """At start: users already logged in get what was kept while the agent was down."""
        if self._bus is None:
            return
        for session in logind.one_per_user(await logind.graphical_sessions(self._bus)):
            await deliver_missed(session, self._state_dir, WAIT_PRESENT_SECONDS)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            log.exception("notification task failed")

    async def handle(self, outcome: Outcome) -> None:
        """Notify about an outcome; never raises (a broken desktop must not break a backup)."""
        if not self._config.notify.enabled:
            return
        try:
            note = render(outcome)
            if note is None:
                return
            if self._bus is None or not self._bus.connected:
                self._disconnect()
                await self._connect()  # the system bus restarted, or was not up at our start
            await _deliver_or_keep(self._bus, self._state_dir, note)
        except Exception:
            log.exception("notification for %s failed", outcome.kind)

    async def drain(self) -> None:
        """Wait for background deliveries (missed notes on login) to finish (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._disconnect()

    def _disconnect(self) -> None:
        if self._bus is not None:
            dbuscall.disconnect(self._bus)
            self._bus = None


def send_once(config: Config, outcome: Outcome) -> None:
    """Deliver (or keep) one notification from a one-shot process; never raises.

    For processes without an event loop (the OnFailure hook): it runs its own.
    """
    if not config.notify.enabled:
        return
    try:
        note = render(outcome)
        if note is not None:
            asyncio.run(_send_once(config.agent.state_dir, note))
    except Exception:
        log.exception("notification for %s failed", outcome.kind)


async def _send_once(state_dir: Path, note: Note) -> None:
    try:
        bus: MessageBus | None = await logind.system_bus(None)
    except Exception as exc:
        log.warning("notifications: no system bus (%s)", exc)
        bus = None
    try:
        await _deliver_or_keep(bus, state_dir, note)
    finally:
        if bus is not None:
            dbuscall.disconnect(bus)
