"""The notification helper: the one piece of usbagent that runs as the desktop user.

A session bus (`/run/user/UID/bus`) refuses every other uid, root included, so the agent
(root) starts `python -m usbagent.asuser deliver` for each user it tells (`delivery`); the
helper reads the note as JSON on stdin, drops to that user for good and calls
`org.freedesktop.Notifications.Notify` there. It imports nothing of the root side (checked by
tests/unit/test_architecture.py): only the `Note` it is handed and the D-Bus call helper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import sys
import time
from pathlib import Path

from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message
from dbus_next.signature import Variant

from usbagent import dbuscall
from usbagent.outbox import CRITICAL, Note

APP_NAME = "usbagent"
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
# Where each user's session bus lives (`<root>/<uid>/bus`); tests point this at a tmp dir.
RUNTIME_ROOT_ENV = "USBAGENT_RUNTIME_ROOT"
DEFAULT_RUNTIME_ROOT = Path("/run/user")
DEFAULT_WAIT_SECONDS = 5.0
# The bus's answers for a Notify that reached no notification server: worth sending again.
NOT_REACHED = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.Spawn.ChildExited",
        "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
        "org.freedesktop.DBus.Error.Spawn.ExecFailed",
        "org.freedesktop.DBus.Error.Spawn.Failed",
        "org.freedesktop.DBus.Error.Spawn.FailedToSetup",
        "org.freedesktop.DBus.Error.Spawn.NoMemory",
        "org.freedesktop.DBus.Error.TimedOut",
    }
)
NO_REPLY = "org.freedesktop.DBus.Error.NoReply"


def user_bus_address(uid: int) -> str:
    root = Path(os.environ.get(RUNTIME_ROOT_ENV) or DEFAULT_RUNTIME_ROOT)
    return f"unix:path={root / str(uid) / 'bus'}"


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

    Only a call that reached no server is sent again. The bus answers NoReply when the
    server took the call but did not answer within the bus's reply timeout (a desktop slow
    under load): it has the notification and shows it, and a second call would show it
    twice. That counts as shown, with id 0.
    """
    deadline = time.monotonic() + wait
    bus = await _connect_when_ready(address, deadline)
    try:
        while True:
            try:
                reply = await dbuscall.call(bus, _notify_message(note))
                (nid,) = reply.body
                return int(nid)
            except dbuscall.CallFailed as exc:
                if exc.error_name == NO_REPLY:
                    return 0
                if exc.error_name not in NOT_REACHED or time.monotonic() > deadline:
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m usbagent.asuser")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deliver", help="show the notification (JSON on stdin) on a user's bus")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT_SECONDS)
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
        sys.exit(main(sys.argv[1:]))
