"""What the agent needs from an event source (UDisks2 or udev); `sources` picks one.

Both backends turn their own device model into the same stream of `(action, Partition)` on an
asyncio queue, and offer the same three actions (mount, unmount, power off), so the agent's
logic never depends on which one saw the stick.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from usbagent.devices import Partition
from usbagent.errors import UsbagentError

Action = Literal["added", "changed", "removed"]
DeviceEvent = tuple[Action, Partition]
EventQueue = asyncio.Queue[DeviceEvent]

UDISKS_NAME = "org.freedesktop.UDisks2"


class DeviceError(UsbagentError):
    """A mount, unmount or power-off failed; the message says which device and why."""


@dataclass(frozen=True)
class Mount:
    """Where a stick is mounted, and whether we mounted it.

    A mount somebody else made (a person, their desktop) is used where it is and left as it
    was found: unmounting it would pull the stick out from under them.
    """

    path: Path
    ours: bool


# Filesystems without a journal: checked (and repaired if needed) before every mount.
CHECKED_FSTYPES = frozenset({"vfat", "exfat"})


class Backend(Protocol):
    name: str

    async def start(self, queue: EventQueue) -> None:
        """Subscribe to device events, THEN queue an `added` event per partition present now.

        Subscribing first means a stick plugged during start-up is never missed (at worst it
        is reported twice, which the agent tolerates).
        """

    def alive(self) -> bool:
        """True while events can still arrive (bus connected / monitor socket open)."""

    async def check(self, partition: Partition) -> bool:
        """Check a FAT/exFAT filesystem before use and repair it when the check fails (a
        stick pulled without unmount keeps its dirty bit); True if it had to be repaired.
        DeviceError when it cannot be repaired. Other filesystems: False, untouched (the
        kernel replays an ext4/xfs/btrfs journal at mount)."""

    async def mount(self, partition: Partition) -> Mount:
        """Mount with nosuid,nodev,noexec, or use the existing mount (then `ours` is False)."""

    async def unmount(self, partition: Partition, mount: Mount) -> None:
        """Undo `mount` if it is ours; a mount we did not make is left alone."""

    async def power_off(self, partition: Partition) -> bool:
        """Power the drive off; False (with a log line saying why) when not possible."""

    async def close(self) -> None: ...


def emit(queue: EventQueue, known: dict[str, Partition], key: str, new: Partition | None) -> None:
    """Diff one device's new facts against what was reported before and queue the change.

    Shared by both backends so that "added/changed/removed" means exactly the same thing:
    identical facts produce no event, a vanished candidate produces `removed`.
    """
    old = known.get(key)
    if new is None:
        if old is not None:
            del known[key]
            queue.put_nowait(("removed", old))
        return
    if old == new:
        return
    known[key] = new
    queue.put_nowait(("added" if old is None else "changed", new))
