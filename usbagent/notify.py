"""Desktop notifications for the people at the machine, from an agent that runs as root.

Design (README "Desktop notifications"): logind on the system bus says which graphical
sessions exist and whose they are; a notification is delivered on each such user's session
bus (`/run/user/UID/bus`) by a short helper process that becomes that user
(`python -m usbagent.notify deliver`), because a session bus refuses any other uid, root
included. Nothing has to be installed per user, and a desktop that starts its notification
server late is waited for.

Nobody logged in graphically: the notification is logged and kept in the state dir
(`usbagent.outbox`), `usbagent status` counts it, and when logind announces a new session
the missed ones are delivered as "missed while you were away". Delivery never raises into
the caller: a broken desktop must not break a backup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

from usbagent import dbuscall, outbox
from usbagent.config import Config
from usbagent.details import SyncDetails, unit_of
from usbagent.events import Outcome
from usbagent.outbox import CRITICAL, NORMAL, Note

log = logging.getLogger(__name__)

APP_NAME = "usbagent"
LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
MANAGER_IFACE = "org.freedesktop.login1.Manager"
SESSION_IFACE = "org.freedesktop.login1.Session"
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
GRAPHICAL_TYPES = ("x11", "wayland", "mir")
# Where each user's session bus lives (`<root>/<uid>/bus`); tests point this at a tmp dir.
RUNTIME_ROOT_ENV = "USBAGENT_RUNTIME_ROOT"
DEFAULT_RUNTIME_ROOT = Path("/run/user")
# A user who is logged in has a notification server now; one who just logged in may need
# a while until the desktop has started it.
WAIT_PRESENT_SECONDS = 5.0
WAIT_LOGIN_SECONDS = 120.0
# More missed notifications than this become one digest instead of a burst of pop-ups.
MAX_MISSED_SINGLY = 3
DIGEST_LINES = 5
MISSED = "Missed while you were away"


# --- what to say (pure) ---------------------------------------------------------------------


def render(outcome: Outcome) -> Note | None:
    """The notification for an outcome, or None when it is not worth interrupting someone."""
    kind, body = outcome.kind, outcome.summary
    if kind == "stick-recognised":
        return _note(outcome, "Backup stick found: copying, do not remove it", body, NORMAL)
    if kind == "sync" and outcome.ok:
        removable = SyncDetails.of(outcome).removable  # the data, never the summary's words
        title = "stick safe to remove" if removable else "unmount the stick before removing it"
        return _note(outcome, f"Backup copied: {title}", body, NORMAL)
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


def _note(outcome: Outcome, summary: str, body: str, urgency: int) -> Note:
    return Note(kind=outcome.kind, summary=summary, body=body, urgency=urgency, time=outcome.time)


def missed(notes: list[Note]) -> list[Note]:
    """What to show someone who just logged in: each missed note, or one digest of many."""
    if len(notes) <= MAX_MISSED_SINGLY:
        return [
            Note(n.kind, f"{MISSED}: {n.summary}", f"{_stamp(n.time)}: {n.body}", n.urgency, n.time)
            for n in notes
        ]
    newest = notes[-DIGEST_LINES:]
    lines = [f"{_stamp(n.time)}: {n.summary}. {n.body}" for n in reversed(newest)]
    if len(notes) > len(newest):
        lines.append(f"... and {len(notes) - len(newest)} earlier")
    return [
        Note(
            kind="digest",
            summary=f"{MISSED}: {len(notes)} backup notifications",
            body="\n".join(lines),
            urgency=max(n.urgency for n in notes),
            time=notes[-1].time,
        )
    ]


def _stamp(t: datetime) -> str:
    return t.astimezone().strftime("%a %d %b %H:%M")


def is_graphical(props: Mapping[str, Any]) -> bool:
    """A logind session someone sees a desktop in (not a greeter, ssh or closing session)."""
    return (
        props.get("Type") in GRAPHICAL_TYPES
        and props.get("Class", "user") == "user"
        and props.get("State") != "closing"
    )


def user_bus_address(uid: int) -> str:
    root = Path(os.environ.get(RUNTIME_ROOT_ENV) or DEFAULT_RUNTIME_ROOT)
    return f"unix:path={root / str(uid) / 'bus'}"


# --- logind ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    id: str
    uid: int
    user: str
    path: str


async def _call(bus: MessageBus, msg: Message) -> list[Any]:
    return list((await dbuscall.call(bus, msg)).body)  # CallFailed is an OSError


async def session_props(bus: MessageBus, path: str) -> dict[str, Any]:
    body = await _call(
        bus,
        Message(
            destination=LOGIN1,
            path=path,
            interface="org.freedesktop.DBus.Properties",
            member="GetAll",
            signature="s",
            body=[SESSION_IFACE],
        ),
    )
    return {k: v.value for k, v in body[0].items()}


async def graphical_session(bus: MessageBus, path: str) -> Session | None:
    props = await session_props(bus, path)
    if not is_graphical(props):
        return None
    uid = props["User"][0]
    return Session(str(props.get("Id", "")), int(uid), str(props.get("Name", "")), path)


async def graphical_sessions(bus: MessageBus) -> list[Session]:
    body = await _call(
        bus,
        Message(
            destination=LOGIN1, path=LOGIN1_PATH, interface=MANAGER_IFACE, member="ListSessions"
        ),
    )
    found = []
    for _sid, _uid, _user, _seat, path in body[0]:
        session = await graphical_session(bus, path)
        if session is not None:
            found.append(session)
    return found


async def _system_bus(address: str | None) -> MessageBus:
    if address:
        return await MessageBus(bus_address=address).connect()
    return await MessageBus(bus_type=BusType.SYSTEM).connect()


# --- delivery as the user ---------------------------------------------------------------------


async def deliver_as(uid: int, note: Note, wait: float) -> bool:
    """Run the helper as `uid` to show `note` on that user's session bus; True if shown."""
    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        log.warning("notification for uid %d not delivered: no such user", uid)
        return False
    if os.geteuid() not in (0, uid):
        log.warning("cannot notify uid %d: only root can deliver to another user", uid)
        return False
    groups = ",".join(str(g) for g in os.getgrouplist(account.pw_name, account.pw_gid))
    env = {
        "HOME": account.pw_dir,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DBUS_SESSION_BUS_ADDRESS": user_bus_address(uid),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    # Started as root and dropping to the user itself (after its imports), because the
    # interpreter may live where only root can read (a venv on a pyenv under /root).
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "usbagent.notify", "deliver", "--wait", str(wait),
            "--uid", str(uid), "--gid", str(account.pw_gid), "--groups", groups,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd="/", env=env,
        )  # fmt: skip
    except OSError as exc:
        log.warning("cannot start the notification helper for %s: %s", account.pw_name, exc)
        return False
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(note.to_json()).encode()), timeout=wait + 15
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("notification helper for %s timed out", account.pw_name)
        return False
    if proc.returncode != 0:
        log.warning(
            "notification for %s not delivered: %s",
            account.pw_name,
            err.decode(errors="replace").strip() or f"helper exit {proc.returncode}",
        )
        return False
    log.info("notified %s (id %s): %s", account.pw_name, out.decode().strip(), note.summary)
    return True


async def _deliver_to_users(sessions: list[Session], note: Note, wait: float) -> bool:
    """Deliver to every user with a graphical session (once per user); True if anyone saw it."""
    uids = sorted({s.uid for s in sessions})
    results = await asyncio.gather(*(deliver_as(uid, note, wait) for uid in uids))
    return any(results)


async def _deliver_or_keep(bus: MessageBus | None, state_dir: Path, note: Note) -> None:
    """Show `note` to everyone logged in graphically; if nobody saw it, keep it for later."""
    sessions: list[Session] = []
    delivered = False
    try:
        sessions = await graphical_sessions(bus) if bus is not None else []
        delivered = bool(sessions) and await _deliver_to_users(sessions, note, WAIT_PRESENT_SECONDS)
        if delivered:  # someone is reachable now: also show what earlier attempts could not
            for session in {s.uid: s for s in sessions}.values():
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
    await asyncio.to_thread(outbox.add, state_dir, note)


async def deliver_missed(session: Session, state_dir: Path, wait: float) -> None:
    """Show a user who just logged in what they missed; keep it if that fails."""
    notes = await asyncio.to_thread(outbox.pending, state_dir)
    if not notes:
        return
    shown = [await deliver_as(session.uid, n, wait) for n in missed(notes)]
    if all(shown):
        await asyncio.to_thread(outbox.discard, state_dir, notes)


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
            self._bus = await _system_bus(self._address)
            await _call(
                self._bus,
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[
                        f"type='signal',sender='{LOGIN1}',interface='{MANAGER_IFACE}',"
                        "member='SessionNew'"
                    ],
                ),
            )
        except Exception as exc:
            log.warning("notifications: no system bus/logind (%s); keeping them for status", exc)
            self._disconnect()
            return False
        self._bus.add_message_handler(self._on_message)
        return True

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.interface == MANAGER_IFACE
            and msg.member == "SessionNew"
        ):
            self._spawn(self._on_login(str(msg.body[1])))

    async def _on_login(self, path: str) -> None:
        if self._bus is None:
            return
        session = await graphical_session(self._bus, path)
        if session is not None:
            log.info("graphical login of %s: delivering missed notifications", session.user)
            await deliver_missed(session, self._state_dir, WAIT_LOGIN_SECONDS)

    async def _flush_pending(self) -> None:
        """At start: users already logged in get what was kept while the agent was down."""
        if self._bus is None:
            return
        for session in {s.uid: s for s in await graphical_sessions(self._bus)}.values():
            await deliver_missed(session, self._state_dir, WAIT_PRESENT_SECONDS)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Any) -> None:
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
        bus: MessageBus | None = await _system_bus(None)
    except Exception as exc:
        log.warning("notifications: no system bus (%s)", exc)
        bus = None
    try:
        await _deliver_or_keep(bus, state_dir, note)
    finally:
        if bus is not None:
            dbuscall.disconnect(bus)


# --- the helper, running as the desktop user ----------------------------------------------------


async def _connect_when_ready(address: str, deadline: float) -> MessageBus:
    """The user's session bus, waiting (until `deadline`) for its socket to appear."""
    while True:
        try:
            return await MessageBus(bus_address=address).connect()
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


def _notify_message(note: Note) -> Message:
    hints = {"urgency": Variant("y", note.urgency), "category": Variant("s", "device")}
    icon = "dialog-error" if note.urgency >= CRITICAL else "drive-removable-media"
    # The body may be read as markup by the server: escape it.
    body = html.escape(note.body, quote=False)
    return Message(
        destination=NOTIFICATIONS,
        path=NOTIFICATIONS_PATH,
        interface=NOTIFICATIONS,
        member="Notify",
        signature="susssasa{sv}i",
        body=[APP_NAME, 0, icon, note.summary, body, [], hints, -1],
    )


async def show(address: str, note: Note, wait: float) -> int:
    """Call Notify on the session bus at `address`; the server's notification id.

    Right after a login the desktop's notification server may not run yet, and D-Bus
    activation of one may fail until the session has exported $DISPLAY: retry until `wait`
    seconds have passed, then give up with the last error.
    """
    deadline = time.monotonic() + wait
    bus = await _connect_when_ready(address, deadline)
    try:
        while True:
            try:
                (nid,) = await _call(bus, _notify_message(note))
                return int(nid)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        dbuscall.disconnect(bus)


def drop_privileges(uid: int, gid: int, groups: list[int]) -> None:
    """Become the desktop user for good (real, effective and saved ids), groups first."""
    if os.geteuid() == uid:
        return
    try:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except PermissionError as exc:  # e.g. a unit whose CapabilityBoundingSet lacks CAP_SETUID
        raise PermissionError(
            f"could not become uid {uid} ({exc.strerror}): the service needs CAP_SETUID and "
            "CAP_SETGID"
        ) from None
    if os.getresuid() != (uid, uid, uid):
        raise PermissionError(f"could not become uid {uid}")


def _helper_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m usbagent.notify")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deliver", help="show the notification (JSON on stdin) on a user's bus")
    p.add_argument("--wait", type=float, default=WAIT_PRESENT_SECONDS)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--groups", default="", help="supplementary group ids, comma-separated")
    args = parser.parse_args(argv)
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS") or user_bus_address(args.uid)
    try:
        note = Note.from_json(json.loads(sys.stdin.read()))
        groups = [int(g) for g in args.groups.split(",") if g]
        drop_privileges(args.uid, args.gid, groups or [args.gid])
        nid = asyncio.run(show(address, note, args.wait))
    except Exception as exc:
        print(f"uid {os.getuid()}: cannot notify on {address}: {exc}", file=sys.stderr)
        return 1
    print(nid)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(_helper_main(sys.argv[1:]))
