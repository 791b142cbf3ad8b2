"""The one D-Bus method-call helper (dbus-next): a reply or one error type, and disconnect.

UDisks2, logind, the notification server and the bus itself are all asked through `call`,
so a failed call reads the same everywhere ("<member> on <path> failed: <error>: <detail>")
and a missing reply is never taken for an empty answer.
"""

from __future__ import annotations

import asyncio

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.message import Message


class CallFailed(OSError):
    """A D-Bus method call returned an error, no reply, or none in time.

    `error_name` is the D-Bus error's name when the bus or the callee answered with one
    ("org.freedesktop.DBus.Error.ServiceUnknown"): it tells a call that never reached
    anybody from one a server received, which a caller must not simply send again.
    """

    def __init__(self, message: str, error_name: str | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name


async def call(bus: MessageBus, msg: Message, within: float | None = None) -> Message:
    """Send `msg` and return its reply; CallFailed (naming the method) otherwise."""
    try:
        async with asyncio.timeout(within):
            reply = await bus.call(msg)
    except TimeoutError:
        raise CallFailed(f"{msg.member} on {msg.path}: no answer in {within:g} s") from None
    if reply is None:
        raise CallFailed(f"{msg.member} on {msg.path} failed: no reply")
    if reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise CallFailed(
            f"{msg.member} on {msg.path} failed: {reply.error_name}: {detail}", reply.error_name
        )
    return reply


def disconnect(bus: MessageBus) -> None:
    bus.disconnect()  # type: ignore[no-untyped-call]  # dbus-next leaves it unannotated
