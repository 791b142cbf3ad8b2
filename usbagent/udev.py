"""udev event source (pyudev) with mount(8)/umount(8), for machines without UDisks2.

The netlink monitor's socket sits on the asyncio loop (`add_reader`): no polling thread, and
a closed socket is visible to `alive()`. The monitor is started BEFORE the snapshot is
listed, so a stick plugged during start-up is seen by one or the other (or both: the diff in
`backend.emit` makes a repeat harmless).

Power-off is deliberately not done here: without UDisks2 it would mean deleting the SCSI
device through sysfs and switching the USB port off by hand, which we cannot test here and
which could hit the wrong device if done wrongly. The stick is synced and unmounted, which
is what makes it safe to pull; the log and the outcome say that power-off was skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Collection
from pathlib import Path

import pyudev

from usbagent import mounts
from usbagent.backend import CHECKED_FSTYPES, DeviceError, EventQueue, Mount, emit
from usbagent.devices import Partition

log = logging.getLogger(__name__)

MOUNT_BASE = Path("/run/usbagent/mnt")
MOUNT_OPTIONS = "nosuid,nodev,noexec"
TOOL_TIMEOUT = 120.0
RECEIVE_BUFFER = 8 * 1024 * 1024  # a burst of events (a hub of sticks) must not overflow it
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _read_mounts() -> dict[tuple[int, int], tuple[str, ...]]:
    return mounts.by_devnum(mounts.read())


def is_candidate(props: dict[str, str]) -> bool:
    """Partitions, and whole disks carrying a filesystem directly (pure)."""
    return props.get("DEVTYPE") == "partition" or (
        props.get("DEVTYPE") == "disk" and props.get("ID_FS_USAGE") == "filesystem"
    )


def facts_from_udev(
    sys_path: str,
    props: dict[str, str],
    size: int,
    drive: str,
    mounts: dict[tuple[int, int], tuple[str, ...]],
) -> Partition:
    """A Partition from a udev property set (pure: every input is passed in)."""
    devnum = (int(props.get("MAJOR", "-1")), int(props.get("MINOR", "-1")))
    device = props.get("DEVNAME", "")
    bus = props.get("ID_BUS", "")
    if not bus and Path(sys_path).name.startswith("loop"):
        bus = "loop"
    return Partition(
        key=sys_path,
        device=device,
        label=props.get("ID_FS_LABEL", ""),
        part_name=props.get("ID_PART_ENTRY_NAME", ""),
        uuid=props.get("ID_FS_UUID", "").lower(),
        fstype=props.get("ID_FS_TYPE", ""),
        size=size,
        bus=bus,
        drive=drive,
        mountpoints=mounts.get(devnum, ()),
    )


def with_usb_bus(props: dict[str, str], ancestor_subsystems: Collection[str]) -> dict[str, str]:
    """ID_BUS=usb for a device below a USB device when udev named no bus (pure).

    Both `usbagent sync` and the agent's udev backend judge `usb.require_usb` by this, so
    the same stick never gets two verdicts.
    """
    if props.get("ID_BUS") or "usb" not in ancestor_subsystems:
        return props
    return {**props, "ID_BUS": "usb"}


def props_of(device: pyudev.Device) -> tuple[dict[str, str], int, str]:
    """The one reading of a udev block device: (properties, size in bytes, drive sys path)."""
    props = {k: str(device.properties[k]) for k in device.properties}
    props = with_usb_bus(props, [a.subsystem for a in device.ancestors])
    try:
        size = int(device.attributes.asint("size")) * 512  # sysfs counts 512-byte sectors
    except (KeyError, ValueError):
        size = 0
    parent = device.find_parent("block", "disk") if props.get("DEVTYPE") == "partition" else None
    drive = str(parent.sys_path) if parent is not None else str(device.sys_path)
    return props, size, drive


def facts_of(device: pyudev.Device) -> Partition | None:
    """The facts of a udev block device, or None when it is no candidate partition."""
    props, size, drive = props_of(device)
    if not is_candidate(props):
        return None
    return facts_from_udev(str(device.sys_path), props, size, drive, _read_mounts())


def facts_for_device(
    device: str,
    defaults: dict[str, str] | None = None,
    mounts: dict[tuple[int, int], tuple[str, ...]] | None = None,
) -> Partition:
    """A device node's facts for `usbagent sync`, read as the agent's udev backend reads
    them (`props_of`), completed by blkid when udev has no filesystem facts (no udevd)."""
    try:
        dev = pyudev.Devices.from_device_file(pyudev.Context(), device)
    except (pyudev.DeviceNotFoundError, ValueError, OSError):
        props: dict[str, str] = {}
        size, sys_path, drive = 0, device, ""
    else:
        props, size, drive = props_of(dev)
        sys_path = str(dev.sys_path)
    if not props.get("ID_FS_TYPE"):
        props.update(_blkid(device))
    for key, value in {"DEVNAME": device, **(defaults or {})}.items():
        props.setdefault(key, value)
    return facts_from_udev(sys_path, props, size, drive, mounts or {})


def _blkid(device: str) -> dict[str, str]:
    try:
        out = subprocess.run(
            ["blkid", "-p", "-o", "export", device],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    keys = {"LABEL": "ID_FS_LABEL", "UUID": "ID_FS_UUID", "TYPE": "ID_FS_TYPE",
            "PART_ENTRY_NAME": "ID_PART_ENTRY_NAME"}  # fmt: skip
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {keys[k]: v for k, v in pairs if k in keys}


def mount_name(p: Partition) -> str:
    """Our mount point's name: the filesystem UUID when it is a plain token (a crafted
    filesystem must not name a path like "../../etc"), else the device's name (pure)."""
    return p.uuid if _TOKEN.match(p.uuid) else Path(p.device).name


def _remove_stale_mountpoints(base: Path) -> None:
    """Empty mount points left by a killed agent (only ours, only empty, never mounted)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in base.iterdir():
            if entry.is_dir() and not entry.is_symlink() and not entry.is_mount():
                with contextlib.suppress(OSError):  # not empty: not ours to judge
                    entry.rmdir()


async def fsck_check(partition: Partition) -> bool:
    """`fsck.<type> -n`; when it fails, `-a` and check again. True if it was repaired."""
    fstype = partition.fstype.lower()
    try:
        await _run(f"fsck.{fstype}", "-n", partition.device)
        return False
    except DeviceError:
        log.warning("%s: filesystem check failed; repairing it", partition.device)
    with contextlib.suppress(DeviceError):  # fsck exits 1 when it corrected something
        await _run(f"fsck.{fstype}", "-a", partition.device)
    try:
        await _run(f"fsck.{fstype}", "-n", partition.device)
    except DeviceError:
        raise DeviceError(
            f"{partition.device}: its {fstype} filesystem is damaged and could not be "
            f"repaired (run fsck.{fstype} on it, or reformat it)"
        ) from None
    return True


async def _run(*argv: str) -> None:
    """Run a tool; a non-zero exit becomes DeviceError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TOOL_TIMEOUT):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DeviceError(f"{' '.join(argv)}: no answer after {TOOL_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().replace("\n", "; ")
        raise DeviceError(f"{' '.join(argv)} failed (exit {proc.returncode}): {text}")


class UdevBackend:
    name = "udev"

    def __init__(self, mount_base: Path = MOUNT_BASE) -> None:
        self._mount_base = mount_base
        self._context = pyudev.Context()
        self._monitor: pyudev.Monitor | None = None
        self._queue: EventQueue | None = None
        self._known: dict[str, Partition] = {}

    async def start(self, queue: EventQueue) -> None:
        self._queue = queue
        _remove_stale_mountpoints(self._mount_base)
        monitor = pyudev.Monitor.from_netlink(self._context, source="udev")
        monitor.filter_by("block")
        with contextlib.suppress(OSError, ValueError):  # needs CAP_NET_ADMIN; best effort
            monitor.set_receive_buffer_size(RECEIVE_BUFFER)
        monitor.start()
        self._monitor = monitor
        asyncio.get_running_loop().add_reader(monitor.fileno(), self._on_readable)
        self._resync()

    def _resync(self) -> None:
        """Diff the devices present now against what we reported (start-up, lost events)."""
        assert self._queue is not None
        present = {
            str(d.sys_path): facts_of(d) for d in self._context.list_devices(subsystem="block")
        }
        for key in [*self._known, *present]:
            emit(self._queue, self._known, key, present.get(key))

    def _on_readable(self) -> None:
        assert self._monitor is not None and self._queue is not None
        try:
            while (device := self._monitor.poll(timeout=0)) is not None:
                key = str(device.sys_path)
                new = None if device.action == "remove" else facts_of(device)
                emit(self._queue, self._known, key, new)
        except OSError as exc:  # ENOBUFS: the kernel dropped events; the device list has not
            log.warning("udev events were lost (%s); re-reading the device list", exc)
            self._resync()

    def alive(self) -> bool:
        if self._monitor is None:
            return False
        try:
            os.fstat(self._monitor.fileno())
        except (OSError, ValueError):
            return False
        return True

    def _current_mounts(self, partition: Partition) -> tuple[str, ...]:
        st = Path(partition.device).stat()
        return _read_mounts().get((os.major(st.st_rdev), os.minor(st.st_rdev)), ())

    async def check(self, partition: Partition) -> bool:
        if partition.fstype.lower() not in CHECKED_FSTYPES or self._current_mounts(partition):
            return False
        return await fsck_check(partition)

    async def mount(self, partition: Partition) -> Mount:
        try:
            existing = self._current_mounts(partition)
        except OSError as exc:
            raise DeviceError(f"{partition.device} is gone ({exc.strerror})") from exc
        for point in existing:  # our own mount points are ours by where they are
            if Path(point).parent == self._mount_base:
                return Mount(Path(point), ours=True)
        if existing:
            log.info(
                "%s already mounted at %s; using that and leaving it mounted",
                partition.device,
                existing[0],
            )
            return Mount(Path(existing[0]), ours=False)
        target = self._mount_base / mount_name(partition)
        self._mount_base.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.mkdir(mode=0o700, exist_ok=True)
        fstype = ["-t", partition.fstype] if partition.fstype else []
        try:
            await _run("mount", *fstype, "-o", MOUNT_OPTIONS, partition.device, str(target))
        except DeviceError:
            with contextlib.suppress(OSError):
                target.rmdir()
            raise
        return Mount(target, ours=True)

    async def unmount(self, partition: Partition, mount: Mount) -> None:
        """Unmount our own mount point only; other mounts of the device are not ours."""
        if not mount.ours:
            return
        target = mount.path
        try:
            mounted = str(target) in self._current_mounts(partition)
        except OSError:  # device node gone (stick pulled): the kernel keeps the mount otherwise
            if target.is_mount():
                await _run("umount", "--lazy", str(target))
            mounted = False
        if mounted:
            await _run("umount", str(target))
        if target.parent == self._mount_base:
            with contextlib.suppress(OSError):
                target.rmdir()

    async def power_off(self, partition: Partition) -> bool:
        log.info(
            "%s: power-off skipped (needs UDisks2); it is unmounted and safe to remove",
            partition.device,
        )
        return False

    async def close(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor = None
