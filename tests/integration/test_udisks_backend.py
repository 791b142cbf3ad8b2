"""The UDisks2 backend on the real system bus with the real udisksd and loop-device sticks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import backend_checks as checks
from tests.stack import MakeStick
from usbagent.udisks import UDisksBackend

pytestmark = pytest.mark.stack


def test_snapshot_finds_plugged_stick(make_stick: MakeStick, unique_label: str) -> None:
    checks.snapshot_finds_plugged_stick(UDisksBackend, make_stick, unique_label)


def test_plug_and_unplug_events(make_stick: MakeStick, unique_label: str) -> None:
    checks.plug_and_unplug_events(UDisksBackend, make_stick, unique_label)


def test_mount_at_media_root_label_and_unmount(make_stick: MakeStick, unique_label: str) -> None:
    checks.mount_and_unmount(
        UDisksBackend, make_stick, unique_label, lambda p: Path("/media/root") / p.label
    )


@pytest.mark.parametrize("options", ["rw,nosuid,nodev", "ro,nosuid,nodev"])
def test_reuses_a_foreign_mount_and_leaves_it_mounted(
    options: str, make_stick: MakeStick, unique_label: str
) -> None:
    checks.reuses_a_foreign_mount(UDisksBackend, make_stick, unique_label, options)


def test_a_dirty_fat_stick_is_repaired(make_stick: MakeStick, unique_label: str) -> None:
    checks.fat_dirty_bit_is_checked_and_repaired(UDisksBackend, make_stick, unique_label)
