"""Stick sync on real loop-device sticks: copy, verify, prune, ledger, and `usbagent sync`."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.sync_helpers import (
    MIB,
    archive_name,
    make_archive,
    sha256_file,
    stick_files,
    sync_config,
    usbagent,
    write_toml,
)
from tests.stack import MakeStick, PartSpec
from usbagent import ledger, naming, state
from usbagent.config import Config
from usbagent.devices import FAT_MAX_FILE
from usbagent.events import Outcome
from usbagent.sync import Progress, facts_at, precheck
from usbagent.synccmd import sync_mounted
from usbagent.udev import facts_for_device

pytestmark = pytest.mark.stack


def sync(config: Config, mount: Path) -> Outcome:
    return sync_mounted(config, mount, facts_at(mount), threading.Event())


def test_copies_newest_archives_with_sidecars_that_sha256sum_accepts(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=2)
    dest = config.archive.destination
    archives = [make_archive(dest, day, 3 * MIB) for day in (1, 2, 3)]
    stick = make_stick(PartSpec("ext4", label=unique_label))
    mount = stick.mount()
    seen: list[Progress] = []

    outcome = sync_mounted(config, mount, facts_at(mount), threading.Event(), seen.append)

    assert outcome.ok and outcome.kind == "sync", outcome.summary
    newest = [a.name for a in archives[:0:-1]]  # day 3, day 2
    assert stick_files(mount) == {*newest, *(n + naming.SIDECAR for n in newest)}
    for name in newest:
        assert sha256_file(mount / "usbagent" / name) == sha256_file(dest / name)
    check = subprocess.run(
        ["sha256sum", "-c", *(n + naming.SIDECAR for n in newest)],
        cwd=mount / "usbagent",
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "copied 2 archive(s)" in outcome.summary and unique_label in outcome.summary
    assert "verified" in outcome.summary and "free" in outcome.summary
    assert outcome.details["copied"] == newest and outcome.details["verified"] == 2
    assert seen[-1].done_bytes == seen[-1].total_bytes == 6 * MIB
    assert seen[0].index == 1 and seen[-1].index == seen[-1].total == 2

    uuid = facts_at(mount).uuid  # type: ignore[union-attr]
    record = ledger.load(config.agent.state_dir, uuid)
    assert record is not None and record.label == unique_label
    assert record.archives == tuple(newest)
    assert record.last_verified_copy == newest[0] and record.last_ok_sync
    assert record.free_bytes == outcome.details["free_bytes"] > 0
    last = state.last(config.agent.state_dir, "sync")
    assert last is not None and last.summary == outcome.summary


def test_second_sync_is_up_to_date_and_reverifies(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    assert sync(config, mount).ok
    before = (mount / "usbagent" / archive_name(1)).stat().st_mtime_ns

    again = sync(config, mount)

    assert again.ok and "up to date, 1 archive(s) verified" in again.summary
    assert (mount / "usbagent" / archive_name(1)).stat().st_mtime_ns == before


def test_prunes_only_our_archives_beyond_keep_and_nothing_else(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=2)
    dest = config.archive.destination
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    folder = mount / "usbagent"
    for day in (1, 2):
        make_archive(dest, day, MIB)
    assert sync(config, mount).ok
    others = {
        "notes.txt": b"mine",
        archive_name(0, prefix="otherhost"): b"another host's archive",
        archive_name(0) + ".bak": b"not an archive name",
    }
    for name, data in others.items():
        (folder / name).write_bytes(data)
    (mount / "photos").mkdir()
    for day in (3, 4):
        make_archive(dest, day, MIB)

    outcome = sync(config, mount)

    assert outcome.ok, outcome.summary
    ours = {archive_name(4), archive_name(3)}
    assert stick_files(mount) == {*ours, *(n + ".sha256" for n in ours), *others}
    for name, data in others.items():
        assert (folder / name).read_bytes() == data
    assert (mount / "photos").is_dir()
    assert outcome.details["pruned"] == [archive_name(1), archive_name(2)]


def test_leftover_partial_of_a_killed_run_is_removed_and_the_copy_completes(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, 2 * MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    folder = mount / "usbagent"
    folder.mkdir()
    (folder / (archive.name + naming.PARTIAL)).write_bytes(b"half a copy")
    (folder / (archive.name + naming.SIDECAR + naming.PARTIAL)).write_bytes(b"")
    (folder / "unrelated.partial").write_bytes(b"not ours")

    outcome = sync(config, mount)

    assert outcome.ok, outcome.summary
    assert stick_files(mount) == {archive.name, archive.name + ".sha256", "unrelated.partial"}
    assert sha256_file(folder / archive.name) == archive.sha256


def test_cancel_mid_copy_stops_and_leaves_no_partial_or_final_file(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    old = make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    assert sync(config, mount).ok
    new = make_archive(config.archive.destination, 2, 24 * MIB)
    cancel = threading.Event()

    outcome = sync_mounted(config, mount, facts_at(mount), cancel, lambda p: cancel.set())

    assert not outcome.ok and "stopped before it finished" in outcome.summary
    assert stick_files(mount) == {old.name, old.name + ".sha256"}
    assert sha256_file(mount / "usbagent" / old.name) == old.sha256
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None and "stopped" in record.last_error
    assert new.name not in record.archives


def test_nothing_to_copy_is_an_error_not_a_healthy_sync(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    outcome = sync(config, mount)

    assert not outcome.ok and "no archives in" in outcome.summary
    assert state.last_error(config.agent.state_dir) is not None


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_other_linux_filesystems_work(
    fstype: str, make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, 10 * MIB)
    mount = make_stick(PartSpec(fstype, label=unique_label)).mount()

    outcome = sync(config, mount)

    assert outcome.ok, outcome.summary
    assert sha256_file(mount / "usbagent" / archive.name) == archive.sha256


# --- `usbagent sync MOUNTPOINT` -----------------------------------------------------------------


def test_cli_syncs_a_stick_known_only_by_its_gpt_partition_name(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=None, name=unique_label)).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert "copied 1 archive(s)" in r.stdout and "safe to remove" in r.stdout
    assert stick_files(mount) == {archive.name, archive.name + ".sha256"}


def test_cli_refuses_a_folder_that_is_not_a_mount_point(tmp_path: Path) -> None:
    config = sync_config(tmp_path, "ua-nomount")
    make_archive(config.archive.destination, 1, MIB)
    target = tmp_path / "not-mounted"
    target.mkdir()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(target))

    assert r.returncode == 1
    assert "is not a mount point" in r.stderr and str(target) in r.stderr
    assert list(target.iterdir()) == []


def test_cli_refuses_a_mount_whose_label_does_not_match(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label="holiday-pix")).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert "not a backup stick" in r.stderr and "holiday-pix" in r.stderr
    assert stick_files(mount) == set()


def test_cli_refuses_an_unenrolled_uuid_and_records_it(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, uuids=("12345678-1234-1234-1234-123456789abc",))
    make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    uuid = facts_at(mount).uuid  # type: ignore[union-attr]

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert f"UUID {uuid} is not enrolled" in r.stderr
    assert stick_files(mount) == set()
    refused = state.last(config.agent.state_dir, "refused")
    assert refused is not None and "not enrolled" in refused.summary
    record = ledger.load(config.agent.state_dir, uuid)
    assert record is not None and "not enrolled" in record.last_error


def test_cli_with_require_usb_refuses_a_loop_device(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, require_usb=True)
    make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert "loop bus, not USB" in r.stderr
    assert stick_files(mount) == set()


# --- FAT and exFAT: decided from the filesystem type before mounting ----------------------------


def _sparse_archive(dest: Path, day: int, size: int) -> None:
    """A local archive of `size` bytes without writing them (only its size matters here)."""
    dest.mkdir(parents=True, exist_ok=True)
    name = archive_name(day)
    with (dest / name).open("wb") as f:
        f.truncate(size)
    (dest / (name + ".sha256")).write_text(f"{'0' * 64}  {name}\n")


@pytest.mark.parametrize(
    ("fstype", "big", "refused"),
    [
        ("vfat", True, True),
        ("vfat", False, False),
        ("exfat", True, False),
    ],
)
def test_fat_partitions_judged_from_the_udev_facts_before_mount(
    fstype: str,
    big: bool,
    refused: bool,
    make_stick: MakeStick,
    unique_label: str,
    tmp_path: Path,
) -> None:
    config = sync_config(tmp_path, unique_label)
    size = FAT_MAX_FILE + 1 if big else 10 * MIB
    _sparse_archive(config.archive.destination, 1, size)
    stick = make_stick(PartSpec(fstype, label=unique_label, size_mb=4200))
    facts = facts_for_device(stick.device(0))
    assert facts.fstype == fstype and facts.bus == "loop"
    assert facts.label.casefold() == unique_label.casefold()

    reason = precheck(config, facts)

    if refused:
        assert reason is not None and "FAT32" in reason and str(size) in reason
    else:
        assert reason is None


def test_local_archives_without_a_sidecar_are_not_copied(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    done = make_archive(config.archive.destination, 1, MIB)
    writing = make_archive(config.archive.destination, 2, MIB)
    (config.archive.destination / (writing.name + ".sha256")).unlink()
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    outcome = sync(config, mount)

    assert outcome.ok
    assert stick_files(mount) == {done.name, done.name + ".sha256"}


def test_a_local_archive_whose_sidecar_names_another_file_is_not_copied(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """The sidecar is read as `status` and `verify` read it (naming.parse_sidecar): one
    that states the digest of another name states nothing about this archive (before, the
    sync took its digest, copied the archive and wrote a fresh sidecar on the stick)."""
    config = sync_config(tmp_path, unique_label)
    done = make_archive(config.archive.destination, 1, MIB)
    odd = make_archive(config.archive.destination, 2, MIB)
    sidecar = config.archive.destination / (odd.name + ".sha256")
    sidecar.write_text(f"{odd.sha256}  some-other-file\n")
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    outcome = sync(config, mount)

    assert outcome.ok, outcome.summary
    assert stick_files(mount) == {done.name, done.name + ".sha256"}


def test_sync_core_never_writes_to_a_folder_whose_stick_is_gone(tmp_path: Path) -> None:
    # The agent's mount point after the stick was pulled: a plain, empty folder.
    config = sync_config(tmp_path, "ua-gone")
    make_archive(config.archive.destination, 1, MIB)
    folder = tmp_path / "media-root-ua-gone"
    folder.mkdir()

    outcome = sync_mounted(config, folder, None, threading.Event())

    assert not outcome.ok and "disappeared" in outcome.summary, outcome.summary
    assert list(folder.iterdir()) == []
    assert state.last_error(config.agent.state_dir) == outcome


def _signal_mid_copy(config: Config, mount: Path, tmp_path: Path, signum: int) -> tuple[int, str]:
    """Run `usbagent sync`, send `signum` once its `.partial` exists; (exit status, stderr)."""
    (archive,) = [p for p in config.archive.destination.iterdir() if naming.parse(p.name)]
    partial = mount / "usbagent" / (archive.name + naming.PARTIAL)
    cmd = [sys.executable, "-m", "usbagent", "--config", str(write_toml(config, tmp_path / "c"))]
    proc = subprocess.Popen([*cmd, "sync", str(mount)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not partial.exists():  # the copy (or its read-back) is under way
            assert proc.poll() is None and time.monotonic() < deadline, "no copy started"
            time.sleep(0.01)
        proc.send_signal(signum)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=5)
        assert time.monotonic() - signalled < 5
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err


def test_cli_stops_on_sigterm_mid_copy_and_removes_its_partial(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, 512 * MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label, size_mb=700)).mount()

    status, err = _signal_mid_copy(config, mount, tmp_path, signal.SIGTERM)

    assert status == 1
    assert "stopped before it finished" in err
    assert stick_files(mount) == set()


def test_after_kill_9_mid_copy_the_next_sync_cleans_up_and_completes(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, 512 * MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label, size_mb=700)).mount()

    status, _ = _signal_mid_copy(config, mount, tmp_path, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert stick_files(mount) == {archive.name + naming.PARTIAL}  # no final name

    r = usbagent(tmp_path / "c", "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == {archive.name, archive.name + naming.SIDECAR}
    assert sha256_file(mount / "usbagent" / archive.name) == archive.sha256
