"""The rendered udev rule, loaded into the real udevd, marks backup partitions.

The rule is installed under a test-unique name in /run/udev/rules.d (udevd reads it beside
/etc/udev/rules.d) and matches only this test's unique label, so concurrent tests never see
its effect; it is removed and udevd reloaded afterwards, pass or fail.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import MakeStick, PartSpec, StackSession

pytestmark = pytest.mark.stack

USBAGENT = Path(sys.executable).parent / "usbagent"
RUNTIME_RULES = Path("/run/udev/rules.d")


def _properties(device: str) -> dict[str, str]:
    out = subprocess.run(
        ["udevadm", "info", "--query=property", f"--name={device}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def rule_for(stack: StackSession, tmp_path: Path, unique_label: str) -> Iterator[str]:
    """`usbagent install --prefix` renders the rule for [usb] labels = [unique_label]."""
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [archive]
            sources = ["{tmp_path}"]
            [usb]
            labels = ["{unique_label}"]
            """)
    )
    staged = tmp_path / "root"
    done = subprocess.run(
        [str(USBAGENT), "--config", str(config), "install", "--prefix", str(staged)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rendered = (staged / "etc/udev/rules.d/90-usbagent.rules").read_text()
    RUNTIME_RULES.mkdir(parents=True, exist_ok=True)
    target = RUNTIME_RULES / f"90-usbagent-test-{unique_label}.rules"
    target.write_text(rendered)
    try:
        subprocess.run(["udevadm", "control", "--reload"], check=True, timeout=30)
        yield unique_label
    finally:
        target.unlink(missing_ok=True)
        subprocess.run(["udevadm", "control", "--reload"], check=False, timeout=30)


def test_rule_marks_backup_partitions_by_label_or_gpt_name(
    rule_for: str, make_stick: MakeStick
) -> None:
    label = rule_for
    stick = make_stick(
        PartSpec("ext4", label=label),  # the label as configured
        PartSpec("vfat", label=label, name="data"),  # FAT stores it upper-case
        PartSpec("ext4", label=None, name=label.upper()),  # only the GPT partition name
        PartSpec("ext4", label="ua-other", name="other"),  # not ours
    )
    props = [_properties(stick.device(i)) for i in range(4)]
    assert props[1]["ID_FS_LABEL"] == label.upper()  # the case the rule must see through
    for p in props[:3]:
        assert p.get("UDISKS_AUTO") == "0", p
        assert p.get("USBAGENT_BACKUP") == "1", p
    assert "UDISKS_AUTO" not in props[3] and "USBAGENT_BACKUP" not in props[3], props[3]
