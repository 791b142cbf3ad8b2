"""Proof that the device test stack is real: udev and UDisks2 see our sticks come and go,
UDisks2 mounts what this kernel can mount and refuses what it cannot, and nothing leaks.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pyudev
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType
from dbus_next.errors import DBusError
from dbus_next.signature import Variant

from tests.stack import (
    MakeStick,
    PartSpec,
    StackError,
    StackSession,
    Stick,
    Workspace,
    clean_leftovers,
)
from tests.stack.daemons import pid_alive
from tests.stack.sticks import loops, mountpoints_of

pytestmark = pytest.mark.stack

UDISKS = "org.freedesktop.UDisks2"
UDISKS_ROOT = "/org/freedesktop/UDisks2"
BLOCK = "org.freedesktop.UDisks2.Block"
PARTITION = "org.freedesktop.UDisks2.Partition"
FILESYSTEM = "org.freedesktop.UDisks2.Filesystem"
TIMEOUT = 20.0
MOUNT_OPTIONS = {
    "options": Variant("s", "nosuid,nodev,noexec"),
    "auth.no_user_interaction": Variant("b", True),
}


# --- udev, through pyudev --------------------------------------------------------------


def _next_event(monitor: pyudev.Monitor, action: str, node: str) -> pyudev.Device:
    """The next `action` event for device `node`, skipping everyone else's events."""
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        device = monitor.poll(timeout=left)
        if device is not None and device.action == action and device.device_node == node:
            return device
    raise AssertionError(f"no udev {action} event for {node} within {TIMEOUT:.0f}s")


def test_udev_sees_plug_with_filesystem_facts_and_unplug(
    make_stick: MakeStick, unique_label: str
) -> None:
    stick = make_stick(PartSpec("ext4", label=unique_label, name="sovereign-backup"), plug=False)
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.filter_by("block")
    monitor.start()

    stick.plug()
    added = _next_event(monitor, "add", stick.device(0))
    assert added.properties.get("ID_FS_LABEL") == unique_label
    assert added.properties.get("ID_FS_TYPE") == "ext4"
    assert added.properties.get("ID_PART_ENTRY_NAME") == "sovereign-backup"

    node = stick.device(0)
    stick.unplug()
    _next_event(monitor, "remove", node)
    assert not Path(node).exists()


# --- UDisks2, through dbus-next ---------------------------------------------------------


def _plain(props: dict[str, Variant]) -> dict[str, Any]:
    return {name: v.value for name, v in props.items()}


class UDisksWatch:
    """ObjectManager signals, merged per object path: what UDisks2 says exists right now."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.removed: dict[str, list[str]] = {}
        self.changed = asyncio.Condition()

    def on_added(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        obj = self.objects.setdefault(path, {})
        obj.update({name: _plain(props) for name, props in interfaces.items()})
        self._notify()

    def on_removed(self, path: str, interfaces: list[str]) -> None:
        self.removed.setdefault(path, []).extend(interfaces)
        for name in interfaces:
            self.objects.get(path, {}).pop(name, None)
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(condition)

        try:
            await asyncio.wait_for(wait(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"UDisks2 did not report {what} within {TIMEOUT:.0f}s") from None

    def block_path(self, node: str) -> str:
        """UDisks2 object path of device `node`, from the signals seen ('' if none yet)."""
        for path, ifaces in self.objects.items():
            device = ifaces.get(BLOCK, {}).get("Device", b"")
            if bytes(device).rstrip(b"\0").decode() == node:
                return path
        return ""

    def has_filesystem(self, node: str) -> bool:
        path = self.block_path(node)
        return bool(path) and FILESYSTEM in self.objects[path]


@asynccontextmanager
async def udisks_watch(stack: StackSession) -> AsyncIterator[UDisksWatch]:
    """Subscribed to InterfacesAdded/Removed before the caller plugs anything."""
    bus = await MessageBus(bus_address=stack.system_bus_address, bus_type=BusType.SYSTEM).connect()
    try:
        intro = await bus.introspect(UDISKS, UDISKS_ROOT)
        # Any: dbus-next generates on_*/call_* members at run time from the introspection.
        manager: Any = bus.get_proxy_object(UDISKS, UDISKS_ROOT, intro).get_interface(
            "org.freedesktop.DBus.ObjectManager"
        )
        watch = UDisksWatch(bus)
        manager.on_interfaces_added(watch.on_added)
        manager.on_interfaces_removed(watch.on_removed)
        yield watch
    finally:
        bus.disconnect()  # type: ignore[no-untyped-call]  # dbus-next leaves it unannotated


async def _plug_and_wait(watch: UDisksWatch, stick: Stick) -> str:
    """Plug `stick`; UDisks2 object path of its first partition once it has a filesystem."""
    await asyncio.to_thread(stick.plug)
    node = stick.device(0)
    await watch.until(f"a filesystem on {node}", lambda: watch.has_filesystem(node))
    return watch.block_path(node)


async def _filesystem(bus: MessageBus, path: str) -> Any:
    """The Filesystem interface of `path` (Any: its call_* methods are made at run time)."""
    intro = await bus.introspect(UDISKS, path)
    return bus.get_proxy_object(UDISKS, path, intro).get_interface(FILESYSTEM)


def test_udisks_signals_plug_with_ids_and_unplug(
    stack: StackSession, make_stick: MakeStick, unique_label: str
) -> None:
    stick = make_stick(PartSpec("ext4", label=unique_label, name="sovereign-backup"), plug=False)

    async def scenario() -> None:
        async with udisks_watch(stack) as watch:
            path = await _plug_and_wait(watch, stick)
            block = watch.objects[path][BLOCK]
            assert block["IdLabel"] == unique_label
            assert block["IdType"] == "ext4"
            assert block["Size"] == 64 * 1024 * 1024
            assert watch.objects[path][PARTITION]["Name"] == "sovereign-backup"

            await asyncio.to_thread(stick.unplug)
            await watch.until(f"{path} removed", lambda: BLOCK in watch.removed.get(path, []))

    asyncio.run(scenario())


def test_udisks_mounts_and_unmounts_ext4(
    stack: StackSession, make_stick: MakeStick, unique_label: str
) -> None:
    stick = make_stick(PartSpec("ext4", label=unique_label), plug=False)

    async def scenario() -> None:
        async with udisks_watch(stack) as watch:
            path = await _plug_and_wait(watch, stick)
            fs = await _filesystem(watch.bus, path)
            mountpoint = Path(await fs.call_mount(MOUNT_OPTIONS))
            try:
                assert await asyncio.to_thread(mountpoints_of, [stick.device(0)]) == [mountpoint]
                options = await asyncio.to_thread(_mount_options, mountpoint)
                assert {"nosuid", "nodev", "noexec"} <= options
                reported = [bytes(p).rstrip(b"\0").decode() for p in await fs.get_mount_points()]
                assert reported == [str(mountpoint)]
            finally:
                await fs.call_unmount({"auth.no_user_interaction": Variant("b", True)})
            assert await asyncio.to_thread(mountpoints_of, [stick.device(0)]) == []

    asyncio.run(scenario())


def _mount_options(mountpoint: Path) -> set[str]:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "OPTIONS", "--mountpoint", str(mountpoint)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.strip().split(","))


@pytest.mark.parametrize("fstype", ["vfat", "exfat"])
def test_fat_sticks_are_identified_but_not_mountable_here(
    stack: StackSession, make_stick: MakeStick, unique_label: str, fstype: str
) -> None:
    """The agent checks IdType before mounting; these sticks give it a real vfat/exfat."""
    stick = make_stick(PartSpec(fstype, label=unique_label), plug=False)

    async def scenario() -> None:
        async with udisks_watch(stack) as watch:
            path = await _plug_and_wait(watch, stick)
            block = watch.objects[path][BLOCK]
            assert block["IdType"] == fstype
            # vfat stores labels upper-case; exfat keeps the case.
            expected = unique_label.upper() if fstype == "vfat" else unique_label
            assert block["IdLabel"] == expected
            fs = await _filesystem(watch.bus, path)
            with pytest.raises(DBusError, match="not configured in kernel"):
                await fs.call_mount(MOUNT_OPTIONS)

    asyncio.run(scenario())
    with pytest.raises(StackError, match=f"unknown filesystem type '{fstype}'"):
        stick.mount()
    assert mountpoints_of([stick.device(0)]) == []


# --- the stick helper itself -------------------------------------------------------------


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_mountable_filesystems_mount_and_unplug_unmounts(
    make_stick: MakeStick, unique_label: str, fstype: str
) -> None:
    stick = make_stick(PartSpec(fstype, label=unique_label))
    mountpoint = stick.mount()
    (mountpoint / "probe").write_bytes(b"x")
    assert _mount_options(mountpoint) >= {"nosuid", "nodev", "noexec"}
    stick.unplug()
    assert not mountpoint.is_mount()
    assert stick.loop is None and stick.partitions == []


def test_stick_with_several_partitions_and_replug(make_stick: MakeStick, unique_label: str) -> None:
    stick = make_stick(
        PartSpec("ext4", label=unique_label, size_mb=16, name="first"),
        PartSpec("none", size_mb=8, name="raw"),
        PartSpec("vfat", label=None, size_mb=40),
    )
    assert len(stick.partitions) == 3
    stick.unplug()
    stick.plug()  # a stick can be pulled out and plugged in again
    assert [Path(p).exists() for p in stick.partitions] == [True, True, True]
    first, raw, fat = (_udev_properties(stick.device(i)) for i in range(3))
    assert (first["ID_FS_LABEL"], first["ID_PART_ENTRY_NAME"]) == (unique_label, "first")
    assert "ID_FS_TYPE" not in raw and raw["ID_PART_ENTRY_NAME"] == "raw"
    assert fat["ID_FS_TYPE"] == "vfat" and "ID_FS_LABEL" not in fat
    assert fat["ID_PART_ENTRY_NAME"] == "part3"


def _udev_properties(node: str) -> dict[str, str]:
    out = subprocess.run(
        ["udevadm", "info", "--query=property", node], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_unplug_unmounts_mounts_made_by_anyone(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """A test that forgot to unmount (or an agent that mounted elsewhere) leaks nothing."""
    stick = make_stick(PartSpec("ext4", label=unique_label))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["mount", stick.device(0), str(elsewhere)], check=True)
    ours = stick.mount()
    stick.unplug()
    assert not elsewhere.is_mount() and not ours.is_mount()
    assert not any(stick.image.name in back for _, back in loops())


def test_unplug_refuses_loudly_while_a_file_is_open(
    make_stick: MakeStick, unique_label: str
) -> None:
    """Busy is an error naming the mountpoint, not a silent lazy unmount that leaks the loop."""
    stick = make_stick(PartSpec("ext4", label=unique_label))
    mountpoint = stick.mount()
    with (mountpoint / "held-open").open("w"), pytest.raises(StackError, match="busy"):
        stick.unplug()
    stick.unplug()  # once the file is closed
    assert stick.loop is None and not mountpoint.is_mount()


# --- leftovers of killed runs ----------------------------------------------------------


def test_leftovers_of_a_killed_run_are_cleaned_and_live_runs_left_alone(
    stack: StackSession, tmp_path: Path, unique_label: str
) -> None:
    """Loop devices and mounts are kernel state: a killed run leaves them for the next one."""
    dead = Workspace.create(parent=tmp_path)
    live = Workspace.create(parent=tmp_path)  # owned by this (running) process
    elsewhere = tmp_path / "image-dir"  # a test's own image_dir, outside the workspace
    elsewhere.mkdir()
    try:
        killed = dead.make_stick(PartSpec("ext4", label=f"{unique_label}-k"))
        killed_mount = killed.mount()
        far = dead.make_stick(PartSpec("ext4", label=f"{unique_label}-f"), image_dir=elsewhere)
        orphan = live.make_stick(PartSpec("ext4", label=f"{unique_label}-o"))  # image deleted
        kept = live.make_stick(PartSpec("ext4", label=f"{unique_label}-l"), image_dir=elsewhere)
        kept_mount = kept.mount()
        (dead.root / "owner").write_text(f"{_exited_pid()} 1\n")
        orphan.image.unlink()

        cleaned = clean_leftovers(tmp_path)

        assert not killed_mount.is_mount() and not dead.root.exists()
        attached = {back.removesuffix(" (deleted)") for _, back in loops()}
        gone = {str(killed.image), str(far.image), str(orphan.image)}
        assert attached & gone == set()
        assert str(kept.image) in attached and kept_mount.is_mount()
        assert {img for img in gone if any(img in c for c in cleaned)} == gone
    finally:
        live.close()
        dead.close()
    assert live.leaks() == [] and dead.leaks() == []


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- the daemons: cold start and stop, without touching the machine's running stack -----

COLD_START = """
set -e
mount -t tmpfs tmpfs /run/dbus
mkdir -p /run/udisks2 && mount -t tmpfs tmpfs /run/udisks2
echo 99999 > /run/dbus/pid     # what a killed bus leaves behind
{python} -m tests.stack up --log-dir {logs}
{python} -m tests.stack up --log-dir {logs}    # a second `up` starts nothing more
{python} -m tests.stack status --log-dir {logs}
cp {logs}/started.json {logs}/after-up.json
dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \\
    org.freedesktop.DBus.GetConnectionUnixProcessID string:org.freedesktop.PolicyKit1 \\
    | awk '/uint32/ {{print $2}}' > {logs}/polkitd.pid || true
{python} -m tests.stack down --log-dir {logs}
! {python} -m tests.stack status --log-dir {logs}
"""


def test_cold_start_starts_missing_daemons_and_down_stops_exactly_them(
    stack: StackSession, tmp_path: Path
) -> None:
    """In a private mount namespace /run/dbus is empty: the stack must start its own system
    bus (past a stale pid file) and udisksd, use the machine's udevd, and stop all it
    started, bus-activated polkitd included. The machine's own daemons are not touched."""
    before = stack.daemons.status()
    script = COLD_START.format(python=sys.executable, logs=tmp_path)
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "udevd    answering\n" in run.stdout  # the machine's, not started again
    after_up = json.loads((tmp_path / "after-up.json").read_text())
    assert after_up["started"] == ["dbus", "udisksd"]
    pids = [after_up["dbus_pid"], after_up["udisksd_pid"]]
    polkitd = (tmp_path / "polkitd.pid").read_text().split()
    pids += [int(p) for p in polkitd]
    assert all(isinstance(p, int) for p in pids), pids
    assert [p for p in pids if pid_alive(p)] == []
    assert "Acquired the name org.freedesktop.UDisks2" in (tmp_path / "udisksd.log").read_text()
    assert not (tmp_path / "started.json").exists()
    assert stack.daemons.status() == before == {"dbus": True, "udevd": True, "udisksd": True}


# --- no leaks ----------------------------------------------------------------------------


@pytest.mark.stack_last
def test_no_loop_device_or_mount_of_this_session_remains(stack: StackSession) -> None:
    """Runs after every other test: their teardowns must have left nothing attached."""
    assert stack.workspace.leaks() == []
    ours = [(dev, back) for dev, back in loops() if stack.workspace.session in back]
    assert ours == []
