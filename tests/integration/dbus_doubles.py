"""D-Bus test doubles for what cannot run here: logind and a desktop notification server.

Both speak the real interfaces (names, paths, signatures, signals) on real dbus-daemons,
so the code under test cannot tell them from the real services.

No `from __future__ import annotations` here: dbus-next reads D-Bus signatures from the
annotations, and postponed evaluation would turn `-> "s"` into the string "'s'".

Run as a script (`python dbus_doubles.py notifyd USER [DELAY]`, started as root) it is the
notification server: it drops to USER (after its imports: the interpreter may live where
only root can read), owns org.freedesktop.Notifications on $DBUS_SESSION_BUS_ADDRESS and
prints one JSON line per call, including the uid the bus daemon vouches for, so a test can
prove who delivered.
"""

# ruff: noqa: F821, F722  (D-Bus signatures are string annotations, not Python names)

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal as signals
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType, PropertyAccess
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property, method, signal

LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"


# --- a private system-like bus -----------------------------------------------------------------

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  {limits}
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


@contextlib.contextmanager
def private_system_bus(
    socket_path: Path | None = None, reply_timeout_ms: int | None = None
) -> Iterator[str]:
    """A dbus-daemon of our own (own config and socket), so tests never touch the names on
    the machine's system bus; yields its address, stops it at exit. `reply_timeout_ms`:
    how long the daemon waits for a method's reply before it answers NoReply itself."""
    folder = Path(tempfile.mkdtemp(prefix="ua-sysbus-"))
    socket_path = socket_path or folder / "system_bus_socket"
    limits = f'<limit name="reply_timeout">{reply_timeout_ms}</limit>' if reply_timeout_ms else ""
    (folder / "bus.conf").write_text(BUS_CONFIG.format(socket=socket_path, limits=limits))
    out = subprocess.run(
        ["dbus-daemon", f"--config-file={folder / 'bus.conf'}", "--fork", "--print-pid"],
        check=True, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    pid = int(out.stdout.split()[0])
    try:
        yield f"unix:path={socket_path}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signals.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)


# --- logind ---------------------------------------------------------------------------------


class LogindSession(ServiceInterface):
    """org.freedesktop.login1.Session with the properties a session manager exposes."""

    def __init__(self, sid: str, uid: int, user: str, type_: str, class_: str = "user") -> None:
        super().__init__("org.freedesktop.login1.Session")
        self.sid, self.uid, self.user, self.type, self.class_ = sid, uid, user, type_, class_
        self.path = f"{LOGIN1_PATH}/session/_3{sid}"

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":
        return self.sid

    @dbus_property(access=PropertyAccess.READ)
    def User(self) -> "(uo)":
        return [self.uid, f"{LOGIN1_PATH}/user/_{self.uid}"]

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.user

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> "s":
        return self.type

    @dbus_property(access=PropertyAccess.READ)
    def Class(self) -> "s":
        return self.class_

    @dbus_property(access=PropertyAccess.READ)
    def Active(self) -> "b":
        return True

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return "active"

    @dbus_property(access=PropertyAccess.READ)
    def Remote(self) -> "b":
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Seat(self) -> "(so)":
        return ["seat0", f"{LOGIN1_PATH}/seat/seat0"]


class LogindManager(ServiceInterface):
    """org.freedesktop.login1.Manager: ListSessions and the SessionNew/Removed signals."""

    def __init__(self, bus: MessageBus) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.bus = bus
        self.sessions: dict[str, LogindSession] = {}

    @method()
    def ListSessions(self) -> "a(susso)":
        return [[s.sid, s.uid, s.user, "seat0", s.path] for s in self.sessions.values()]

    @method()
    def GetSession(self, session_id: "s") -> "o":
        return self.sessions[session_id].path

    @signal()
    def SessionNew(self, session_id: str, path: str) -> "so":
        return [session_id, path]

    @signal()
    def SessionRemoved(self, session_id: str, path: str) -> "so":
        return [session_id, path]

    def login(self, session: LogindSession) -> None:
        """A user logs in: the session object appears, then SessionNew is emitted."""
        self.bus.export(session.path, session)
        self.sessions[session.sid] = session
        self.SessionNew(session.sid, session.path)


async def start_logind(address: str) -> tuple[MessageBus, LogindManager]:
    bus = await MessageBus(bus_address=address).connect()
    manager = LogindManager(bus)
    bus.export(LOGIN1_PATH, manager)
    await bus.request_name(LOGIN1)
    return bus, manager


# --- desktop notification server --------------------------------------------------------------


class Notifications(ServiceInterface):
    """org.freedesktop.Notifications (Desktop Notifications Specification 1.2)."""

    def __init__(self, bus: MessageBus, delay: float = 0.0) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.bus = bus
        self.delay = delay  # seconds between showing a notification and answering the call
        self.next_id = 1
        self.sender = ""

    def observe(self, msg: Message) -> None:
        """Runs just before dispatch: remember who is calling (the method cannot see it)."""
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "Notify":
            self.sender = msg.sender

    @method()
    async def Notify(
        self,
        app_name: "s",
        replaces_id: "u",
        app_icon: "s",
        summary: "s",
        body: "s",
        actions: "as",
        hints: "a{sv}",
        expire_timeout: "i",
    ) -> "u":
        sender, nid = self.sender, self.next_id
        self.next_id += 1
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionUnixUser",
                signature="s",
                body=[sender],
            )
        )
        uid = reply.body[0] if reply and reply.message_type == MessageType.METHOD_RETURN else -1
        emit({
            "event": "notify", "id": nid, "uid": uid, "app_name": app_name, "app_icon": app_icon,
            "summary": summary, "body": body, "expire_timeout": expire_timeout,
            "hints": {k: v.value for k, v in hints.items()},
        })  # fmt: skip
        await asyncio.sleep(self.delay)  # a desktop slow to answer under load
        return nid

    @method()
    def GetCapabilities(self) -> "as":
        return ["body"]

    @method()
    def GetServerInformation(self) -> "ssss":
        return ["usbagent-test-double", "usbagent", "1.0", "1.2"]

    @method()
    def CloseNotification(self, nid: "u") -> None:
        self.NotificationClosed(nid, 3)

    @signal()
    def NotificationClosed(self, nid: int, reason: int) -> "uu":
        return [nid, reason]

    @signal()
    def ActionInvoked(self, nid: int, action: str) -> "us":
        return [nid, action]


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


async def serve_notifications(delay: float) -> None:
    bus = await MessageBus().connect()  # $DBUS_SESSION_BUS_ADDRESS
    server = Notifications(bus, delay)
    bus.add_message_handler(server.observe)
    bus.export("/org/freedesktop/Notifications", server)
    await bus.request_name("org.freedesktop.Notifications")
    emit({"event": "ready", "name": bus.unique_name})
    await bus.wait_for_disconnect()


def become(user: str) -> None:
    account = pwd.getpwnam(user)
    os.setgroups([account.pw_gid])
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)


if __name__ == "__main__" and sys.argv[1:2] == ["notifyd"]:
    become(sys.argv[2])
    asyncio.run(serve_notifications(float(sys.argv[3]) if sys.argv[3:] else 0.0))
