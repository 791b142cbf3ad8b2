"""Facts about a block device partition, as both backends (UDisks2, udev) report them.

The agent decides only from these facts (see `policy` functions below, pure), so the same
decision is made whichever backend saw the device, and decisions are unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Partition:
    key: str  # stable id while plugged: UDisks2 object path or udev sys path
    device: str  # /dev/sdb1, /dev/loop3p1
    label: str  # filesystem label (IdLabel / ID_FS_LABEL), "" if none
    part_name: str  # GPT partition name (Partition.Name / ID_PART_ENTRY_NAME), "" if none
    uuid: str  # filesystem UUID, lower case, "" if none
    fstype: str  # IdType / ID_FS_TYPE: "ext4", "vfat", "exfat", ... "" if unknown
    size: int  # partition size in bytes
    bus: str  # "usb", "ata", "loop", ... "" when unknown
    drive: str  # the drive this partition is on (UDisks2 Drive path, udev parent); "" if none
    mountpoints: tuple[str, ...] = ()
