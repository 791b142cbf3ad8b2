"""Checks both event backends must pass on the real stack (used by test_udisks_backend.py
and test_udev_backend.py): the same stick must produce the same facts and events."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.stack import MakeStick, PartSpec, Stick
from tests.stack.sticks import mountpoints_of
from usbagent.backend import Action, Backend, EventQueue, Mount
from usbagent.devices import Partition

TIMEOUT = 15.0


def _tool(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


async def next_event(queue: EventQueue, device: str, action: Action) -> Partition:
    """The next `action` event for `device`, skipping other sticks' events (tests run in
    parallel) and intermediate ones (udev's change events while probing)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            got, p = await queue.get()
            if got == action and p.device == device:
                return p


def assert_facts(p: Partition, stick: Stick, label: str, part_name: str) -> None:
    device = stick.device(0)
    assert p.device == device
    assert p.label == label
    assert p.part_name == part_name
    assert p.fstype == "ext4"
    assert p.uuid == _tool("blkid", "-o", "value", "-s", "UUID", device).lower()
    assert p.size == int(_tool("blockdev", "--getsize64", device))
    assert p.bus == "loop"
    assert p.mountpoints == ()


def snapshot_finds_plugged_stick(
    make: Callable[[], Backend], make_stick: MakeStick, label: str
) -> None:
    stick = make_stick(PartSpec(label=label, name=label))

    async def run() -> None:
        backend = make()
        queue: EventQueue = asyncio.Queue()
        await backend.start(queue)
        try:
            assert backend.alive()
            p = await next_event(queue, stick.device(0), "added")
            assert_facts(p, stick, label=label, part_name=label)
        finally:
            await backend.close()
        assert not backend.alive()

    asyncio.run(run())


def plug_and_unplug_events(make: Callable[[], Backend], make_stick: MakeStick, label: str) -> None:
    """A stick with only a GPT partition name (plain mkfs, no label) is reported with it."""
    stick = make_stick(PartSpec(label=None, name=label), plug=False)

    async def run() -> None:
        backend = make()
        queue: EventQueue = asyncio.Queue()
        await backend.start(queue)
        try:
            await asyncio.to_thread(stick.plug)
            device = stick.device(0)
            p = await next_event(queue, device, "added")
            assert_facts(p, stick, label="", part_name=label)
            await asyncio.to_thread(stick.unplug)
            gone = await next_event(queue, device, "removed")
            assert gone.key == p.key
        finally:
            await backend.close()

    asyncio.run(run())


def mount_and_unmount(
    make: Callable[[], Backend],
    make_stick: MakeStick,
    label: str,
    expected: Callable[[Partition], Path],
) -> None:
    stick = make_stick(PartSpec(label=label))

    async def run() -> None:
        backend = make()
        queue: EventQueue = asyncio.Queue()
        await backend.start(queue)
        try:
            p = await next_event(queue, stick.device(0), "added")
            mounted = await backend.mount(p)
            target = mounted.path
            assert mounted.ours and target == expected(p)
            assert mountpoints_of(stick.partitions) == [target]
            options = _tool("findmnt", "-n", "-o", "OPTIONS", str(target)).split(",")
            assert {"nosuid", "nodev", "noexec"} <= set(options)
            again = await backend.mount(p)  # already mounted by us: reused, not mounted twice
            assert again == Mount(target, ours=True)
            assert mountpoints_of(stick.partitions) == [target]
            await backend.unmount(p, again)
            assert mountpoints_of(stick.partitions) == []
            assert not target.exists()  # the mount point made for us is gone too
            assert await backend.power_off(p) is False  # loop devices have no drive to power off
        finally:
            await backend.close()

    asyncio.run(run())


def reuses_a_foreign_mount(
    make: Callable[[], Backend], make_stick: MakeStick, label: str, options: str
) -> None:
    """A stick somebody mounted already is used where it is, and left as it was found."""
    stick = make_stick(PartSpec(label=label))
    theirs = stick.mount(options=options)

    async def run() -> None:
        backend = make()
        queue: EventQueue = asyncio.Queue()
        await backend.start(queue)
        try:
            p = await next_event(queue, stick.device(0), "added")
            mount = await backend.mount(p)
            assert mount == Mount(theirs, ours=False)
            await backend.unmount(p, mount)
            assert mountpoints_of(stick.partitions) == [theirs]
            found = _tool("findmnt", "-n", "-o", "OPTIONS", str(theirs)).split(",")
            assert found[0] == options.split(",")[0]  # still ro / rw as they mounted it
        finally:
            await backend.close()

    asyncio.run(run())


def fat_dirty_bit_is_checked_and_repaired(
    make: Callable[[], Backend], make_stick: MakeStick, label: str
) -> None:
    """A FAT stick that was not unmounted (dirty bit set) fails the check and is repaired;
    a clean one passes untouched; ext4 is left to its journal."""
    fat = make_stick(PartSpec(fstype="vfat", label=label[:11]))
    other = make_stick(PartSpec(label=label))
    with open(fat.device(0), "r+b") as dev:  # FAT32 BS_Reserved1 bit 0: "not unmounted"
        dev.seek(0x41)
        flags = dev.read(1)[0]
        dev.seek(0x41)
        dev.write(bytes([flags | 0x01]))

    def dirty() -> bool:
        with open(fat.device(0), "rb") as dev:
            dev.seek(0x41)
            return bool(dev.read(1)[0] & 0x01)

    async def run() -> None:
        backend = make()
        queue: EventQueue = asyncio.Queue()
        await backend.start(queue)
        try:
            found: dict[str, Partition] = {}
            async with asyncio.timeout(TIMEOUT):  # the two sticks' events come in any order
                while len(found) < 2:
                    got, part = await queue.get()
                    if got == "added" and part.device in (fat.device(0), other.device(0)):
                        found[part.device] = part
            p, q = found[fat.device(0)], found[other.device(0)]
            assert await backend.check(p) is True  # it had to be repaired
            assert not dirty()
            assert await backend.check(p) is False  # clean now
            assert await backend.check(q) is False
        finally:
            await backend.close()

    assert dirty()
    asyncio.run(run())
