"""Facts about a block device partition, as both backends (UDisks2, udev) report them.

The agent decides only from these facts (see `policy` functions below, pure), so the same
decision is made whichever backend saw the device, and decisions are unit-testable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from usbagent.config import UsbConfig


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


# --- policy (pure) --------------------------------------------------------------------------
# Decided before mounting, from the facts alone, so a stick that cannot hold a backup is
# refused with a reason a person can act on instead of being mounted and half-filled.

FAT_MAX_FILE = 4 * 1024**3 - 1  # 4294967295: FAT32 stores a file size in 32 bits
# Filesystems whose Linux drivers honour fsync, O_NOFOLLOW and rename the way the copier needs.
# ntfs is left out on purpose: two competing drivers (ntfs3, ntfs-3g over FUSE) with
# different durability behaviour, and nothing here to test them on.
SUPPORTED_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs", "exfat", "vfat")


def _fold(s: str) -> str:
    return s.casefold().strip()


def label_matches(p: Partition, usb: UsbConfig) -> bool:
    """Is this partition meant as a backup target? Its filesystem label or GPT name says so.

    Case-insensitive because FAT stores labels upper-case; the GPT partition name counts
    because `parted mkpart sovereign-backup ext4 …` + a plain mkfs leaves only that name.
    """
    wanted = {_fold(label) for label in usb.labels}
    return bool({_fold(p.label), _fold(p.part_name)} & wanted - {""})


def describe(p: Partition) -> str:
    """How a person recognises the stick in a message: its label and filesystem UUID."""
    name = p.label or p.part_name or p.device or "unlabelled stick"
    return f"{name} (UUID {p.uuid})" if p.uuid else name


def refusal_reason(
    p: Partition, usb: UsbConfig, to_copy: Mapping[str, int], least: int = 0
) -> str | None:
    """Why a labelled partition must not be used, or None when it is acceptable.

    Only called for partitions where `label_matches` holds. `to_copy`: name -> size of every
    archive file a sync would copy (the encrypted files as they sit on disk: the kept
    restore points with every member of their chains, since a FAT32 stick that cannot take
    one full cannot restore any increment made on it); `least`: the bytes the smallest of
    those restore points needs with its chain (0: none).
    """
    if usb.uuids and p.uuid.lower() not in usb.uuids:
        shown = p.uuid or "(none)"
        return f"label matches but UUID {shown} is not enrolled (add it to usb.uuids)"
    if usb.require_usb and p.bus != "usb":
        bus = p.bus or "unknown"
        return (
            f"label matches but the drive is on the {bus} bus, not USB "
            "(set usb.require_usb = false to allow it)"
        )
    fstype = p.fstype.lower()
    if not fstype:
        return "label matches but the filesystem type is unknown (format it as ext4 or exFAT)"
    if fstype not in SUPPORTED_FSTYPES:
        return (
            f"filesystem {fstype} is not supported (supported: {', '.join(SUPPORTED_FSTYPES)}; "
            "reformat the stick as ext4 or exFAT)"
        )
    too_big = sorted((size, name) for name, size in to_copy.items() if size > FAT_MAX_FILE)
    if fstype == "vfat" and too_big:
        size, name = too_big[-1]
        return (
            f"FAT32 cannot hold {name} ({size} bytes; files are limited to {FAT_MAX_FILE} "
            "bytes, 4 GiB - 1), and the restore points to copy need it; reformat the stick "
            "as exFAT or ext4"
        )
    if least and p.size and p.size < least:
        return (
            f"partition holds {p.size} bytes, less than the smallest restore point to copy "
            f"needs with its chain ({least} bytes); use a bigger stick"
        )
    return None
