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
    """A D-Bus method call returned an error, no reply, or none in time."""


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
        raise CallFailed(f"{msg.member} on {msg.path} failed: {reply.error_name}: {detail}")
    return reply


def disconnect(bus: MessageBus) -> None:
    bus.disconnect()  # type: ignore[no-untyped-call]  # dbus-next leaves it unannotated
