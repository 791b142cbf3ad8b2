"""The pure judgements of `usbagent doctor` and the credential lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from usbagent import credentials, doctorfiles, doctorhost, mounts
from usbagent.config import ArchiveConfig, Config

GiB = 2**30


def test_parse_unit_reads_exec_programs_and_required_rw_paths_with_continuations() -> None:
    text = """[Unit]
Description=x
[Service]
ExecStartPre=/bin/echo pre
ExecStart=-/usr/local/bin/usbagent --config /etc/usbagent/config.toml \\
    archive
ExecStart=
ReadWritePaths=/data/backups -/run/media +/var/lib/usbagent
"""
    unit = doctorhost.parse_unit(text)
    assert unit.exec_paths == ("/usr/local/bin/usbagent",)
    # "-/run/media" may be missing (systemd skips it): doctor must not call that a problem.
    assert unit.read_write_paths == ("/data/backups", "/var/lib/usbagent")


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /data rw,relatime shared:2 - xfs /dev/sdb1 rw
31 30 8:33 / /data/usb\\040stick rw,relatime - vfat /dev/sdc1 rw,fmask=0022
32 22 0:26 / /database rw - btrfs /dev/sdd1 rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/", "ext4"),
        ("/etc", "ext4"),
        ("/data", "xfs"),
        ("/data/backups", "xfs"),
        ("/data/usb stick/usbagent", "vfat"),
        ("/database/x", "btrfs"),  # /data is not a prefix of /database
    ],
)
def test_fstype_of_picks_the_innermost_mount(path: str, fstype: str) -> None:
    entry = mounts.containing(Path(path), mounts.parse(MOUNTINFO))
    assert entry is not None and entry.fstype == fstype


def test_fat_limits() -> None:
    assert doctorfiles.fs_limit_problem("ext4", 10 * GiB) is None
    assert doctorfiles.fs_limit_problem("vfat", 1 * GiB) is None
    soon = doctorfiles.fs_limit_problem("vfat", 3 * GiB)
    assert soon is not None and "already 3.0 GiB" in soon
    over = doctorfiles.fs_limit_problem("msdos", 5 * GiB)
    assert over is not None and "files stop at 4 GiB" in over
    assert doctorfiles.fs_limit_problem("exfat", 100 * GiB) is None  # exFAT has no 4 GiB limit


def test_identity_path_prefers_a_systemd_credential(tmp_path: Path) -> None:
    plain = tmp_path / "key.txt"
    config = Config(archive=ArchiveConfig(identity_file=plain))
    creds = tmp_path / "creds"
    creds.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert credentials.identity_path(config, env) == plain  # no credential: the plain file
    (creds / "age-identity").write_text("AGE-SECRET-KEY-1...")
    assert credentials.identity_path(config, env) == creds / "age-identity"
    (creds / "key.txt").write_text("AGE-SECRET-KEY-1...")
    assert credentials.identity_path(config, env) == creds / "key.txt"  # named like the file
    assert credentials.identity_path(config, {}) == plain
    assert credentials.identity_path(Config(), env) == creds / "age-identity"
    assert credentials.identity_path(Config(), {}) is None


def test_a_source_that_is_a_device_is_a_problem(tmp_path: Path) -> None:
    config = Config(archive=ArchiveConfig(sources=(Path("/dev/null"),), destination=tmp_path))
    (finding,) = [f for f in doctorfiles.check_paths(config) if f.name == "source"]
    assert not finding.ok
    assert (
        finding.message
        == "/dev/null is a character device: tar stores it as a node, not what it holds"
    )
