"""Stick sync under faults, on real loop devices: full sticks, I/O errors, a filesystem that
turns read-only, symlink attacks and bit rot. Each must end in a clear failed outcome with
nothing lost: never a final-named partial or corrupt copy, older copies untouched, no host
file read, written or deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.sync_helpers import (
    MIB,
    archive_name,
    make_archive,
    served_once,
    sha256_file,
    snapshot,
    stick_files,
    sync_config,
    usbagent,
    write_toml,
)
from tests.stack import MakeStick, PartSpec
from usbagent import journal, ledger, naming, state
from usbagent.config import Config
from usbagent.events import Outcome
from usbagent.sync import Progress, facts_at
from usbagent.synccmd import sync_mounted

pytestmark = pytest.mark.stack

FIBMAP = 1  # linux/fs.h: logical block of a file -> physical block on its device


def sync(
    config: Config, mount: Path, progress: Callable[[Progress], None] | None = None
) -> Outcome:
    return sync_mounted(config, mount, facts_at(mount), threading.Event(), progress)


def once(action: Callable[[Progress], bool]) -> Callable[[Progress], None]:
    """A progress callback that runs `action` until it returns True, then never again."""
    done = False

    def callback(p: Progress) -> None:
        nonlocal done
        if not done:
            done = action(p)

    return callback


def with_sidecars(*names: str) -> set[str]:
    return {*names, *(n + naming.SIDECAR for n in names)}


# --- space --------------------------------------------------------------------------------


def test_stick_smaller_than_one_archive_refused_before_mount_by_the_cli(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, 20 * MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label, size_mb=16)).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert "less than the smallest restore point" in r.stderr and str(20 * MIB) in r.stderr
    assert stick_files(mount) == set()


def test_no_room_even_after_pruning_refuses_and_prunes_nothing(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=1)
    old = make_archive(config.archive.destination, 1, 8 * MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label, size_mb=32)).mount()
    assert sync(config, mount).ok
    make_archive(config.archive.destination, 2, 30 * MIB)  # fits the partition, not its room

    outcome = sync(config, mount)

    assert outcome.kind == "refused" and not outcome.ok
    assert "not enough space" in outcome.summary and " free and pruning" in outcome.summary
    assert stick_files(mount) == with_sidecars(old.name)
    assert sha256_file(mount / "usbagent" / old.name) == old.sha256
    refused = state.last(config.agent.state_dir, "refused")
    assert refused is not None and refused.summary == outcome.summary


def _fill(path: Path) -> bool:
    """Write zeros until the filesystem is full (as root: reserved blocks too)."""
    block = bytes(MIB)
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            with contextlib.suppress(OSError):
                os.fsync(f.fileno())
    return True


def test_disk_full_mid_copy_leaves_no_final_named_partial_and_older_copies_intact(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    old = make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label, size_mb=64)).mount()
    assert sync(config, mount).ok
    new = make_archive(config.archive.destination, 2, 24 * MIB)
    filler = mount / "someone-elses-big-file"

    outcome = sync(config, mount, once(lambda p: _fill(filler)))

    assert not outcome.ok and "the stick is full" in outcome.summary, outcome.summary
    assert unique_label in outcome.summary
    assert stick_files(mount) == with_sidecars(old.name)  # no new.name, no .partial
    assert sha256_file(mount / "usbagent" / old.name) == old.sha256
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None and "full" in record.last_error

    filler.unlink()
    again = sync(config, mount)
    assert again.ok, again.summary
    assert sha256_file(mount / "usbagent" / new.name) == new.sha256


# --- I/O errors and a filesystem that turns read-only ---------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs: a sparse stick image inside fails writes once it is full (real EIO)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_io_error_is_reported_and_leaves_no_final_named_corrupt_copy(
    make_stick: MakeStick, unique_label: str, tmp_path: Path, small_tmpfs: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, 64 * MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label, size_mb=160), image_dir=small_tmpfs)
    try:
        mount = stick.mount()

        outcome = sync(config, mount)

        assert not outcome.ok and outcome.kind == "sync"
        # The loop driver passes tmpfs's ENOSPC up as such (a real stick says EIO): with the
        # filesystem far from full, that is the device failing, and said so.
        assert "the stick refused a write as full although" in outcome.summary, outcome.summary
        assert archive.name not in stick_files(mount)
        assert archive.name + naming.SIDECAR not in stick_files(mount)
    finally:
        stick.unplug()  # before the tmpfs under it goes (the fixture's teardown)


def _trigger_fs_error(device: str) -> bool:
    """Make ext4 hit an error now; mounted with errors=remount-ro it turns read-only."""
    Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("usbagent test\n")
    return True


def test_filesystem_turning_read_only_mid_run_fails_clearly_and_loses_nothing(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    first = make_archive(config.archive.destination, 1, 12 * MIB)
    second = make_archive(config.archive.destination, 2, 12 * MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label))
    mount = stick.mount(options="nosuid,nodev,noexec,errors=remount-ro")
    device = stick.device(0)

    # Newest first: `second` is copied and verified, the error hits during `first`.
    outcome = sync(config, mount, once(lambda p: p.index == 2 and _trigger_fs_error(device)))

    assert not outcome.ok and "turned read-only during the sync" in outcome.summary
    assert "fsck" in outcome.summary and "mounted read-only" not in outcome.summary
    assert "1 of 2 archive(s) copied" in outcome.summary
    on_stick = stick_files(mount)
    assert second.name in on_stick and first.name not in on_stick
    assert sha256_file(mount / "usbagent" / second.name) == second.sha256

    # Nothing lost: after a re-plug the leftovers are cleaned and the copy completes.
    stick.unplug()
    subprocess.run(["e2fsck", "-fy", stick.image], capture_output=True, check=False)
    stick.plug()
    mount = stick.mount()
    again = sync(config, mount)
    assert again.ok, again.summary
    assert stick_files(mount) == with_sidecars(first.name, second.name)
    assert sha256_file(mount / "usbagent" / first.name) == first.sha256


# --- symlinks on a stick someone else controls ------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Host files a malicious stick points at: they must stay exactly as they are."""
    root = tmp_path / "host"
    root.mkdir()
    (root / "secret.txt").write_text("host data\n")
    (root / archive_name(1)).write_bytes(b"a host file with an archive name")
    (root / (archive_name(0) + naming.PARTIAL)).write_bytes(b"looks like our leftover")
    (root / "sub").mkdir()
    return root


def test_folder_symlink_to_a_host_dir_is_refused_and_the_host_untouched(
    make_stick: MakeStick, unique_label: str, tmp_path: Path, host: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, MIB)
    make_archive(config.archive.destination, 2, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    (mount / "usbagent").symlink_to(host)
    before = snapshot(host)

    outcome = sync(config, mount)

    assert outcome.kind == "refused" and "is a symlink" in outcome.summary, outcome.summary
    assert snapshot(host) == before
    assert (mount / "usbagent").is_symlink()


@pytest.mark.parametrize(
    "link_name",
    [
        archive_name(2),  # the archive about to be copied
        archive_name(1) + naming.SIDECAR,  # the sidecar of a copy to audit
        archive_name(0),  # an old copy that pruning would delete
        archive_name(3) + naming.PARTIAL,  # a "leftover" the cleanup would remove
    ],
)
@pytest.mark.parametrize("target", ["secret.txt", "sub"])
def test_symlink_named_like_an_archive_is_refused_and_the_host_untouched(
    link_name: str,
    target: str,
    make_stick: MakeStick,
    unique_label: str,
    tmp_path: Path,
    host: Path,
) -> None:
    config = sync_config(tmp_path, unique_label, keep=2)
    make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    assert sync(config, mount).ok
    make_archive(config.archive.destination, 2, MIB)
    folder = mount / "usbagent"
    if link_name == archive_name(0):
        make_archive(folder, 0, MIB)  # a real old copy, then its name turned into a link
    (folder / link_name).unlink(missing_ok=True)
    (folder / link_name).symlink_to(host / target)
    before = snapshot(host)
    stick_before = stick_files(mount)

    outcome = sync(config, mount)

    assert outcome.kind == "refused" and not outcome.ok
    assert link_name in outcome.summary and "symlink" in outcome.summary
    assert snapshot(host) == before
    assert stick_files(mount) == stick_before


def test_unrelated_symlinks_on_the_stick_are_left_alone(
    make_stick: MakeStick, unique_label: str, tmp_path: Path, host: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    (mount / "usbagent").mkdir()
    (mount / "usbagent" / "README").symlink_to(host / "secret.txt")
    before = snapshot(host)

    outcome = sync(config, mount)

    assert outcome.ok, outcome.summary
    assert stick_files(mount) == {"README", *with_sidecars(archive.name)}
    assert snapshot(host) == before


def test_a_mount_stacked_on_the_stick_folder_is_refused(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label), PartSpec("ext4", label="other"))
    mount = stick.mount(0)
    (mount / "usbagent").mkdir()
    subprocess.run(["mount", stick.device(1), str(mount / "usbagent")], check=True)

    outcome = sync(config, mount)

    assert outcome.kind == "refused" and "another filesystem" in outcome.summary
    assert stick_files(mount) == {"lost+found"}  # the other partition: nothing written


# --- bit rot ---------------------------------------------------------------------------------


def _flip_byte_on_device(device: str, path: Path, offset: int) -> None:
    """Corrupt one byte of `path` on the block device, behind the page cache's back."""
    block = os.statvfs(path).f_bsize
    fd = os.open(path, os.O_RDONLY)
    try:
        arg = struct.pack("i", offset // block)
        physical = struct.unpack("i", fcntl.ioctl(fd, FIBMAP, arg))[0]
    finally:
        os.close(fd)
    assert physical > 0
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
    dev = os.open(device, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.preadv(dev, [buf], physical * block) == block
        buf[offset % block] ^= 0xFF
        assert os.pwritev(dev, [buf], physical * block) == block
        os.fsync(dev)
    finally:
        os.close(dev)


def test_corrupted_copy_is_detected_from_the_device_and_replaced(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, 3 * MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label))
    mount = stick.mount()
    assert sync(config, mount).ok
    copy = mount / "usbagent" / archive.name
    assert sha256_file(copy) == archive.sha256  # now the page cache holds the good bytes

    _flip_byte_on_device(stick.device(0), copy, 1_234_567)
    assert sha256_file(copy) == archive.sha256  # the cache still says all is well

    outcome = sync(config, mount)

    assert outcome.ok, outcome.summary
    assert outcome.details["replaced"] == [archive.name]
    assert "replaced 1 corrupt" in outcome.summary
    stick.unplug()
    stick.plug()
    assert sha256_file(stick.mount() / "usbagent" / archive.name) == archive.sha256


def test_corrupted_copy_that_cannot_be_replaced_is_kept_and_reported(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    old = make_archive(config.archive.destination, 1, MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label))
    mount = stick.mount()
    assert sync(config, mount).ok
    for name in with_sidecars(old.name):  # retention removed it here; the stick has the only copy
        (config.archive.destination / name).unlink()
    make_archive(config.archive.destination, 2, MIB)
    _flip_byte_on_device(stick.device(0), mount / "usbagent" / old.name, 10)

    outcome = sync(config, mount)

    assert not outcome.ok and "corrupt" in outcome.summary and old.name in outcome.summary
    assert old.name in stick_files(mount)  # a damaged only copy still holds readable data
    assert archive_name(2) in stick_files(mount)  # the new archive was still copied
    assert ledger.load(config.agent.state_dir, facts_at(mount).uuid).last_error  # type: ignore[union-attr]


# --- read-only: found so vs turned so ---------------------------------------------------------


def test_a_stick_mounted_read_only_by_the_user_is_not_blamed_and_not_written(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount(options="ro,nosuid,nodev")

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert f"{mount} is mounted read-only" in r.stderr, r.stderr
    assert "remount it read-write" in r.stderr and "unmount it and plug" in r.stderr
    assert "fsck" not in r.stderr and "kernel" not in r.stderr
    assert stick_files(mount) == set()  # not even the folder
    last = state.last_error(config.agent.state_dir)
    assert last is not None and "mounted read-only" in last.summary


# --- a corrupt archive on this host -----------------------------------------------------------


def _corrupt_local(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupt_local_archive_is_a_host_problem_and_nothing_of_it_is_copied(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config, old, mount, toml = served_once(make_stick, unique_label, tmp_path, keep=2)
    bad = make_archive(config.archive.destination, 2, 3 * MIB)
    good = make_archive(config.archive.destination, 3, MIB)
    _corrupt_local(config.archive.destination / bad.name, 2 * MIB + 17)

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 1
    bad_path = config.archive.destination / bad.name
    assert f"the local archive {bad_path} is corrupt on this host" in r.stderr, r.stderr
    assert "stick is not at fault" in r.stderr and "read back from the stick" not in r.stderr
    assert "run `usbagent archive`" in r.stderr
    # Nothing of it on the stick (not even a partial); the older copy keeps its place.
    assert stick_files(mount) == with_sidecars(old.name, good.name)
    assert sha256_file(mount / "usbagent" / good.name) == good.sha256
    assert sha256_file(mount / "usbagent" / old.name) == old.sha256
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None and record.archives == (good.name, old.name)
    assert "corrupt on this host" in record.last_error


def test_a_write_protected_stick_is_told_apart_from_a_read_only_mount(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    make_archive(config.archive.destination, 1, MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label), plug=False)
    # A read-only loop device: the kernel's view of a stick with its lock switch on.
    loop = subprocess.run(
        ["losetup", "-r", "-f", "--show", str(stick.image)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    stick.loop, stick.partitions = loop, [f"{loop}p1"]  # the fixture's unplug detaches it
    subprocess.run(["partx", "-a", loop], capture_output=True, check=False)
    deadline = time.monotonic() + 20
    while not Path(f"{loop}p1").exists():
        assert time.monotonic() < deadline, "no partition node"
        time.sleep(0.05)
    mount = stick.mount(options="ro,noload")

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert "is write-protected" in r.stderr and "lock switch" in r.stderr, r.stderr
    assert "fsck" not in r.stderr and "remount" not in r.stderr
    assert stick_files(mount) == set()


def test_a_corrupt_copy_is_kept_when_the_local_archive_to_replace_it_is_corrupt_too(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    archive = make_archive(config.archive.destination, 1, 3 * MIB)
    stick = make_stick(PartSpec("ext4", label=unique_label))
    mount = stick.mount()
    assert sync(config, mount).ok
    _flip_byte_on_device(stick.device(0), mount / "usbagent" / archive.name, 1_234_567)
    _corrupt_local(config.archive.destination / archive.name, 2 * MIB)

    outcome = sync(config, mount)

    assert not outcome.ok and "corrupt on this host" in outcome.summary, outcome.summary
    assert archive.name in stick_files(mount)  # damaged twice over: the stick's copy stays
    assert outcome.details["replaced"] == []


def test_a_local_archive_changed_since_its_run_is_not_copied_though_its_sidecar_matches(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """Bit rot plus a rewritten sidecar (`sha256sum F > F.sha256`): the sidecar agrees with
    the damaged file, but the state dir holds the sha256 its run wrote. Copying it would
    push the good older copy off the stick (keep = 1) for an archive that cannot decrypt."""
    config = sync_config(tmp_path, unique_label, keep=1)
    dest = config.archive.destination
    old = make_archive(dest, 1, MIB)
    new = make_archive(dest, 2, MIB)
    for made in (old, new):
        details = {"archive": made.name, "size": made.size, "sha256": made.sha256}
        journal.record(config.agent, Outcome("archive", True, "written", details=details))
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    (dest / new.name).rename(dest / "held")
    toml = write_toml(config, tmp_path / "c.toml")
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    (dest / "held").rename(dest / new.name)
    _corrupt_local(dest / new.name, MIB // 2)
    rewritten = sha256_file(dest / new.name)
    (dest / (new.name + naming.SIDECAR)).write_text(f"{rewritten}  {new.name}\n")

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 1, r.stdout
    assert f"the local archive {dest / new.name} is corrupt on this host" in r.stderr, r.stderr
    assert new.sha256 in r.stderr  # what its run recorded, not what the new sidecar says
    assert stick_files(mount) == with_sidecars(old.name)
    assert sha256_file(mount / "usbagent" / old.name) == old.sha256
