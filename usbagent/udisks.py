"""UDisks2 event source over the system bus (dbus-next), plus mount/unmount/power-off.

We keep our own copy of UDisks2's object tree (path -> interface -> properties), fed by the
ObjectManager snapshot and then by InterfacesAdded/InterfacesRemoved/PropertiesChanged, and
derive partitions from it. Deriving from a cache (rather than reacting to single signals)
means a label probed after the partition appeared, a drive object arriving late, or a
filesystem being reformatted all end up as the same simple diff.

Ordering: the match rules are added BEFORE GetManagedObjects is sent, and the snapshot is
applied inside the message handler at the exact position of its reply in the message stream.
Signals before the reply are already contained in it; signals after it are applied on top.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

from usbagent import dbuscall
from usbagent.backend import CHECKED_FSTYPES, UDISKS_NAME, DeviceError, EventQueue, Mount, emit
from usbagent.devices import Partition
from usbagent.udev import fsck_check

log = logging.getLogger(__name__)

ROOT = "/org/freedesktop/UDisks2"
IFACE = "org.freedesktop.UDisks2."
BLOCK, FILESYSTEM, PARTITION, DRIVE, LOOP = (
    IFACE + n for n in ("Block", "Filesystem", "Partition", "Drive", "Loop")
)
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
MOUNT_OPTIONS = "nosuid,nodev,noexec"
CALL_TIMEOUT = 120.0  # Mount may run a filesystem check on a large stick

# path -> interface -> property -> plain value (Variants unwrapped one level)
Objects = dict[str, dict[str, dict[str, Any]]]


def _text(raw: Any) -> str:
    """A D-Bus `ay` path (NUL-terminated bytes) as text."""
    return bytes(raw or b"").rstrip(b"\0").decode(errors="surrogateescape")


def partition_facts(
    path: str, objects: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> Partition | None:
    """The Partition an object denotes, or None if it is not a candidate (pure).

    Candidates are block devices that are partitions or carry a filesystem directly (a
    stick formatted without a partition table); partitioned whole disks are not. A
    filesystem whose Filesystem interface has not appeared yet is not ready (it could not
    be mounted): it is reported once it is.
    """
    ifaces = objects.get(path, {})
    block = ifaces.get(BLOCK)
    if block is None or (PARTITION not in ifaces and FILESYSTEM not in ifaces):
        return None
    part = ifaces.get(PARTITION, {})
    fs = ifaces.get(FILESYSTEM)
    if block.get("IdUsage") == "filesystem" and fs is None:
        return None  # probed, but UDisks2 has not added the Filesystem interface yet
    drive_path = str(block.get("Drive", "/"))
    drive = objects.get(drive_path, {}).get(DRIVE)
    device = _text(block.get("Device"))
    if drive is not None:
        bus = str(drive.get("ConnectionBus", ""))
    else:
        table = objects.get(str(part.get("Table", "/")), {})
        is_loop = LOOP in ifaces or LOOP in table or device.startswith("/dev/loop")
        bus = "loop" if is_loop else ""
    return Partition(
        key=path,
        device=device,
        label=str(block.get("IdLabel", "")),
        part_name=str(part.get("Name", "")),
        uuid=str(block.get("IdUUID", "")).lower(),
        fstype=str(block.get("IdType", "")),
        size=int(block.get("Size", 0)),
        bus=bus,
        drive=drive_path if drive is not None else "",
        mountpoints=tuple(_text(m) for m in (fs or {}).get("MountPoints", [])),
    )


def _unwrap(props: Mapping[str, Variant]) -> dict[str, Any]:
    return {k: v.value for k, v in props.items()}


async def _call(bus: MessageBus, msg: Message) -> Message:
    """A method call with a timeout; a failed one becomes DeviceError naming the method."""
    try:
        return await dbuscall.call(bus, msg, CALL_TIMEOUT)
    except dbuscall.CallFailed as exc:
        raise DeviceError(str(exc)) from None


async def on_bus(address: str | None = None, activatable: bool = False) -> bool:
    """Whether UDisks2 runs now (NameHasOwner, which starts nothing), or, with `activatable`,
    whether the bus would start it on the first call (what a configured "udisks2" needs).

    The one answer to "is UDisks2 there": the agent's `auto` choice and doctor both ask it.
    Raises OSError/ValueError when there is no system bus to ask.
    """
    system = MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)
    bus = await system.connect()
    try:
        if (await _call(bus, _bus_call("NameHasOwner", "s", [UDISKS_NAME]))).body[0]:
            return True
        if not activatable:
            return False
        names = (await _call(bus, _bus_call("ListActivatableNames", "", []))).body[0]
        return UDISKS_NAME in names
    finally:
        dbuscall.disconnect(bus)


def _bus_call(member: str, signature: str, body: list[Any]) -> Message:
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member=member,
        signature=signature,
        body=body,
    )


class UDisksBackend:
    name = "udisks2"

    def __init__(self) -> None:
        self._bus: MessageBus | None = None
        self._queue: EventQueue | None = None
        self._objects: Objects = {}
        self._known: dict[str, Partition] = {}
        self._snapshot_serial = 0
        self._owner_present = False
        self._resnapshot: asyncio.Task[None] | None = None
        self._ours: set[str] = set()  # object paths we mounted (only these we unmount)

    # --- events -------------------------------------------------------------------------

    async def start(self, queue: EventQueue) -> None:
        self._queue = queue
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, ValueError) as exc:
            raise DeviceError(
                f"cannot connect to the system D-Bus ({exc}); is dbus running?"
            ) from exc
        self._bus = bus
        bus.add_message_handler(self._on_message)
        for rule in (
            f"type='signal',sender='{UDISKS_NAME}',interface='{OBJECT_MANAGER}',path='{ROOT}'",
            f"type='signal',sender='{UDISKS_NAME}',interface='{PROPERTIES}',path_namespace='{ROOT}'",
            f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{UDISKS_NAME}'",
        ):
            await _call(bus, _bus_call("AddMatch", "s", [rule]))
        await self._request_snapshot()
        if not self._owner_present:
            raise DeviceError(
                f'{UDISKS_NAME} is not running (start udisksd or use backend = "udev")'
            )

    async def _request_snapshot(self) -> None:
        assert self._bus is not None
        msg = Message(
            destination=UDISKS_NAME,
            path=ROOT,
            interface=OBJECT_MANAGER,
            member="GetManagedObjects",
            serial=self._bus.next_serial(),
        )
        self._snapshot_serial = msg.serial
        await _call(self._bus, msg)  # applied by _on_message, in stream order

    def _on_message(self, msg: Message) -> None:
        """Runs for every incoming message, in order, on the event loop."""
        if (
            msg.message_type == MessageType.METHOD_RETURN
            and msg.reply_serial == self._snapshot_serial
        ):
            self._objects = {
                path: {iface: _unwrap(props) for iface, props in ifaces.items()}
                for path, ifaces in msg.body[0].items()
            }
            self._owner_present = True
            self._refresh()
        elif msg.message_type != MessageType.SIGNAL:
            return
        elif msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
            self._on_owner_changed(msg)
        elif self._owner_present:  # before the snapshot, a signal is already contained in it
            self._on_signal(msg)

    def _on_signal(self, msg: Message) -> None:
        if msg.interface == OBJECT_MANAGER and msg.member == "InterfacesAdded":
            path, ifaces = msg.body
            obj = self._objects.setdefault(path, {})
            for iface, props in ifaces.items():
                obj[iface] = _unwrap(props)
            self._refresh()
        elif msg.interface == OBJECT_MANAGER and msg.member == "InterfacesRemoved":
            path, names = msg.body
            obj = self._objects.get(path, {})
            for iface in names:
                obj.pop(iface, None)
            if not obj:
                self._objects.pop(path, None)
            self._refresh()
        elif msg.interface == PROPERTIES and msg.member == "PropertiesChanged":
            iface, changed, invalidated = msg.body
            props = self._objects.get(msg.path or "", {}).get(iface)
            if props is not None:
                props.update(_unwrap(changed))
                for name in invalidated:
                    props.pop(name, None)
                self._refresh()

    def _on_owner_changed(self, msg: Message) -> None:
        """udisksd went away: not alive (no watchdog pings); it came back: take a new snapshot."""
        name, _old, new = msg.body
        if name != UDISKS_NAME:
            return
        if not new:
            # Keep the cache: a udisksd restart must not look like every stick being pulled
            # (that would cancel copies in progress). The next snapshot diffs against it.
            log.error("UDisks2 left the system bus; no stick events until it returns")
            self._owner_present = False
        else:
            log.warning("UDisks2 (re)appeared on the system bus; reading its devices again")
            self._resnapshot = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        try:
            await self._request_snapshot()
        except (DeviceError, TimeoutError) as exc:
            log.error("reading UDisks2 devices again failed: %s", exc)

    def _refresh(self) -> None:
        assert self._queue is not None
        current = {p: partition_facts(p, self._objects) for p in self._objects}
        for key in list(self._known) + [k for k in current if k not in self._known]:
            emit(self._queue, self._known, key, current.get(key))

    def alive(self) -> bool:
        return self._bus is not None and self._bus.connected and self._owner_present

    # --- actions ------------------------------------------------------------------------

    def _method(self, path: str, iface: str, member: str, options: dict[str, Variant]) -> Message:
        return Message(
            destination=UDISKS_NAME,
            path=path,
            interface=iface,
            member=member,
            signature="a{sv}",
            body=[options],
        )

    def _mountpoints(self, key: str) -> list[str]:
        fs = self._objects.get(key, {}).get(FILESYSTEM, {})
        return [_text(m) for m in fs.get("MountPoints", [])]

    async def mount(self, partition: Partition) -> Mount:
        assert self._bus is not None
        if existing := self._mountpoints(partition.key):
            ours = partition.key in self._ours
            if not ours:
                log.info(
                    "%s already mounted at %s; using that and leaving it mounted",
                    partition.device,
                    existing[0],
                )
            return Mount(Path(existing[0]), ours)
        options = {
            "options": Variant("s", MOUNT_OPTIONS),
            "auth.no_user_interaction": Variant("b", True),
        }
        reply = await _call(self._bus, self._method(partition.key, FILESYSTEM, "Mount", options))
        self._ours.add(partition.key)
        return Mount(Path(reply.body[0]), ours=True)

    async def check(self, partition: Partition) -> bool:
        assert self._bus is not None
        if partition.fstype.lower() not in CHECKED_FSTYPES or self._mountpoints(partition.key):
            return False
        options = {"auth.no_user_interaction": Variant("b", True)}
        try:
            reply = await _call(
                self._bus, self._method(partition.key, FILESYSTEM, "Check", options)
            )
        except DeviceError as exc:
            if "not supported" not in str(exc):
                raise
            # UDisks2 2.9 cannot check exFAT: the filesystem's own fsck does it.
            return await fsck_check(partition)
        if reply.body[0]:
            return False
        log.warning("%s: filesystem check failed; repairing it", partition.device)
        try:
            await _call(self._bus, self._method(partition.key, FILESYSTEM, "Repair", options))
        except DeviceError as exc:
            # udisks 2.9 calls fsck.fat's exit status 1 ("errors corrected") a failure:
            # whether the repair worked is what a second check says.
            log.info("%s: Repair reported: %s", partition.device, str(exc).splitlines()[0])
        reply = await _call(self._bus, self._method(partition.key, FILESYSTEM, "Check", options))
        if not reply.body[0]:
            raise DeviceError(
                f"{partition.device}: its {partition.fstype} filesystem is damaged and could not "
                f"be repaired (run fsck.{partition.fstype} on it, or reformat it)"
            )
        return True

    async def unmount(self, partition: Partition, mount: Mount) -> None:
        assert self._bus is not None
        if not mount.ours:
            return
        if str(mount.path) in self._mountpoints(partition.key):
            options = {"auth.no_user_interaction": Variant("b", True)}
            await _call(self._bus, self._method(partition.key, FILESYSTEM, "Unmount", options))
        self._ours.discard(partition.key)

    async def power_off(self, partition: Partition) -> bool:
        assert self._bus is not None
        if not partition.drive:
            log.debug(
                "%s has no UDisks2 drive object (loop device?): no power-off", partition.device
            )
            return False
        options = {"auth.no_user_interaction": Variant("b", True)}
        await _call(self._bus, self._method(partition.drive, DRIVE, "PowerOff", options))
        return True

    async def close(self) -> None:
        if self._bus is not None:
            dbuscall.disconnect(self._bus)
            self._bus = None
