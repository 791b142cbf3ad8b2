"""Which graphical sessions exist and whose they are, asked of logind on the system bus.

Root-side half of desktop notifications: a notification goes to each user who sits at a
desktop now (`graphical_sessions`), or, kept, to one who logs in later (`graphical_session`
of the path a `SessionNew` signal names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message

from usbagent import dbuscall

LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
MANAGER_IFACE = "org.freedesktop.login1.Manager"
SESSION_IFACE = "org.freedesktop.login1.Session"
GRAPHICAL_TYPES = ("x11", "wayland", "mir")


@dataclass(frozen=True)
class Session:
    id: str
    uid: int
    user: str
    path: str


def is_graphical(props: Mapping[str, Any]) -> bool:
    """A logind session someone sees a desktop in (not a greeter, ssh or closing session)."""
    return (
        props.get("Type") in GRAPHICAL_TYPES
        and props.get("Class", "user") == "user"
        and props.get("State") != "closing"
    )


async def call(bus: MessageBus, msg: Message) -> list[Any]:
    """The reply's body; `dbuscall.CallFailed` (an OSError) naming the method otherwise."""
    return list((await dbuscall.call(bus, msg)).body)


async def session_props(bus: MessageBus, path: str) -> dict[str, Any]:
    body = await call(
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
    body = await call(
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


def one_per_user(sessions: list[Session]) -> list[Session]:
    """A user with two desktops open is told once."""
    return list({s.uid: s for s in sessions}.values())


async def system_bus(address: str | None) -> MessageBus:
    """The system bus (or, for tests, the bus at `address`)."""
    if address:
        return await MessageBus(bus_address=address).connect()
    return await MessageBus(bus_type=BusType.SYSTEM).connect()


async def watch_logins(bus: MessageBus) -> None:
    """Ask the bus to route logind's SessionNew signals to us."""
    await call(
        bus,
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[
                f"type='signal',sender='{LOGIN1}',interface='{MANAGER_IFACE}',member='SessionNew'"
            ],
        ),
    )


def new_session_path(msg: Message) -> str | None:
    """The session path of a SessionNew signal, None for any other message."""
    if (
        msg.message_type == MessageType.SIGNAL
        and msg.interface == MANAGER_IFACE
        and msg.member == "SessionNew"
    ):
        return str(msg.body[1])
    return None
