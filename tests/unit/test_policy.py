"""Is this partition a backup stick, and may we use it? Decided from facts alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from usbagent.config import UsbConfig
from usbagent.devices import FAT_MAX_FILE, Partition, label_matches, refusal_reason
from usbagent.mounts import mount_at, parse

USB = UsbConfig(labels=("sovereign-backup",), require_usb=True)
UUID = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
STICK = Partition(
    key="/org/freedesktop/UDisks2/block_devices/sdb1",
    device="/dev/sdb1",
    label="sovereign-backup",
    part_name="",
    uuid=UUID,
    fstype="ext4",
    size=32 * 1000**3,
    bus="usb",
    drive="/org/freedesktop/UDisks2/drives/Stick",
)
GB = 1000**3


@pytest.mark.parametrize(
    ("label", "part_name", "expected"),
    [
        ("sovereign-backup", "", True),
        ("SOVEREIGN-BACKUP", "", True),  # vfat stores labels upper-case
        ("", "sovereign-backup", True),  # parted mkpart NAME + plain mkfs
        ("", "Sovereign-Backup", True),
        ("other", "sovereign-backup", True),
        ("sovereign-backup2", "", False),
        ("", "", False),
        ("sovereign", "backup", False),
    ],
)
def test_label_or_gpt_name_matches_case_insensitively(
    label: str, part_name: str, expected: bool
) -> None:
    assert label_matches(replace(STICK, label=label, part_name=part_name), USB) is expected


def test_fat_label_matches_one_of_several_configured_labels() -> None:
    usb = replace(USB, labels=("sovereign-backup", "SOVBAK"))
    assert label_matches(replace(STICK, label="SOVBAK", fstype="vfat"), usb)


def test_an_acceptable_stick_has_no_refusal() -> None:
    assert refusal_reason(STICK, USB, {"a": GB, "b": 2 * GB}) is None


def test_unenrolled_uuid_is_refused_naming_the_uuid_and_the_fix() -> None:
    usb = replace(USB, uuids=("11111111-2222-3333-4444-555555555555",))
    reason = refusal_reason(STICK, usb, {"a": GB})
    assert reason is not None
    assert UUID in reason and "not enrolled" in reason and "usb.uuids" in reason


def test_enrolled_uuid_is_accepted_whatever_its_case() -> None:
    usb = replace(USB, uuids=(UUID,))
    assert refusal_reason(replace(STICK, uuid=UUID.upper()), usb, {"a": GB}) is None


def test_non_usb_drive_refused_only_when_require_usb() -> None:
    loop = replace(STICK, bus="loop")
    reason = refusal_reason(loop, USB, {"a": GB})
    assert reason is not None and "loop" in reason and "require_usb" in reason
    assert refusal_reason(loop, replace(USB, require_usb=False), {"a": GB}) is None


@pytest.mark.parametrize("fstype", ["ext4", "ext3", "ext2", "xfs", "btrfs", "exfat", "vfat"])
def test_supported_filesystems_accepted_with_small_archives(fstype: str) -> None:
    assert refusal_reason(replace(STICK, fstype=fstype), USB, {"a": GB}) is None


@pytest.mark.parametrize("fstype", ["ntfs", "iso9660", "squashfs", "crypto_LUKS", "swap"])
def test_unsupported_filesystems_refused_with_the_type_named(fstype: str) -> None:
    reason = refusal_reason(replace(STICK, fstype=fstype), USB, {"a": GB})
    assert reason is not None and fstype.lower() in reason and "not supported" in reason


def test_unknown_filesystem_refused() -> None:
    reason = refusal_reason(replace(STICK, fstype=""), USB, {"a": GB})
    assert reason is not None and "unknown" in reason


BIG = "host-20261101T020000Z.tar.zst.age"


def test_fat32_refused_for_a_chain_member_over_4gib_naming_it_and_its_size() -> None:
    fat = replace(STICK, fstype="vfat")
    reason = refusal_reason(fat, USB, {"small": GB, BIG: FAT_MAX_FILE + 1})
    assert reason is not None
    assert BIG in reason and "small" not in reason
    assert str(FAT_MAX_FILE + 1) in reason and str(FAT_MAX_FILE) in reason
    assert "exFAT" in reason


def test_fat32_accepts_an_archive_of_exactly_the_limit() -> None:
    assert FAT_MAX_FILE == 4294967295
    assert refusal_reason(replace(STICK, fstype="vfat"), USB, {"a": FAT_MAX_FILE}) is None


def test_exfat_and_ext4_take_archives_over_4gib() -> None:
    for fstype in ("exfat", "ext4"):
        assert refusal_reason(replace(STICK, fstype=fstype), USB, {"big": FAT_MAX_FILE + 1}) is None


def test_partition_smaller_than_the_smallest_restore_point_refused_before_mount() -> None:
    small = replace(STICK, size=500 * 1000**2)
    reason = refusal_reason(small, USB, {"a": GB, "b": 2 * GB}, least=GB)
    assert reason is not None and str(GB) in reason and "bigger stick" in reason
    assert "restore point" in reason


def test_partition_fitting_only_the_smallest_archive_is_left_to_the_plan() -> None:
    # Whether all of them fit is known only after mounting (free space, prunable copies).
    stick = replace(STICK, size=int(1.5 * GB))
    assert refusal_reason(stick, USB, {"a": GB, "b": 2 * GB}, least=GB) is None


def test_unknown_size_or_nothing_to_copy_is_not_a_reason() -> None:
    assert refusal_reason(replace(STICK, size=0), USB, {"a": GB}, least=GB) is None
    assert refusal_reason(replace(STICK, size=1), USB, {}) is None


def test_rules_are_reported_in_order_uuid_first() -> None:
    bad = replace(STICK, uuid="dead", bus="ata", fstype="ntfs")
    reason = refusal_reason(bad, replace(USB, uuids=(UUID,)), {"a": GB})
    assert reason is not None and "not enrolled" in reason


# --- `usbagent sync MOUNTPOINT`: which filesystem is mounted where --------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 27 7:33 / /media/root/sovereign-backup rw,nosuid,nodev,noexec shared:50 - ext4 /dev/loop3p1 rw
91 27 7:34 / /mnt/with\\040space rw,relatime - xfs /dev/loop3p2 rw,attr2
95 90 0:55 / /media/root/sovereign-backup rw,relatime - tmpfs tmpfs rw,size=1024k
"""


def test_mountinfo_parsed_with_optional_fields_and_escapes() -> None:
    entries = parse(MOUNTINFO)
    assert [e.mountpoint for e in entries][2:4] == [
        "/media/root/sovereign-backup",
        "/mnt/with space",
    ]
    stick = entries[2]
    assert (stick.source, stick.fstype, stick.devnum) == ("/dev/loop3p1", "ext4", (7, 33))


def test_mount_at_takes_the_topmost_of_stacked_mounts_and_none_for_plain_folders() -> None:
    top = mount_at(Path("/media/root/sovereign-backup"), parse(MOUNTINFO))
    assert top is not None and top.fstype == "tmpfs"
    assert mount_at(Path("/media/root"), parse(MOUNTINFO)) is None
