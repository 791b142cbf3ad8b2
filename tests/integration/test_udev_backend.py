"""The udev backend (pyudev netlink monitor + mount(8)) with the real udevd and loop sticks."""

from __future__ import annotations

import pytest

from tests.integration import backend_checks as checks
from tests.stack import MakeStick
from usbagent.udev import MOUNT_BASE, UdevBackend

pytestmark = pytest.mark.stack


def test_snapshot_finds_plugged_stick(make_stick: MakeStick, unique_label: str) -> None:
    checks.snapshot_finds_plugged_stick(UdevBackend, make_stick, unique_label)


def test_plug_and_unplug_events(make_stick: MakeStick, unique_label: str) -> None:
    checks.plug_and_unplug_events(UdevBackend, make_stick, unique_label)


def test_mount_under_run_by_uuid_and_unmount(make_stick: MakeStick, unique_label: str) -> None:
    checks.mount_and_unmount(UdevBackend, make_stick, unique_label, lambda p: MOUNT_BASE / p.uuid)


@pytest.mark.parametrize("options", ["rw,nosuid,nodev", "ro,nosuid,nodev"])
def test_reuses_a_foreign_mount_and_leaves_it_mounted(
    options: str, make_stick: MakeStick, unique_label: str
) -> None:
    checks.reuses_a_foreign_mount(UdevBackend, make_stick, unique_label, options)


def test_a_dirty_fat_stick_is_repaired(make_stick: MakeStick, unique_label: str) -> None:
    checks.fat_dirty_bit_is_checked_and_repaired(UdevBackend, make_stick, unique_label)
