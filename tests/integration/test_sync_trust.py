"""Only copies usbagent wrote and verified count: junk named like an archive on a real
loop-device stick is reported, never counted toward `keep`, never named in the ledger and
never a reason to delete (issue 9, item 3). Run through the real `usbagent sync`."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.sync_helpers import (
    MIB,
    PREFIX,
    archive_name,
    make_archive,
    served_once,
    sha256_file,
    stick_files,
    sync_config,
    usbagent,
    write_toml,
)
from tests.stack import MakeStick, PartSpec
from usbagent import journal, ledger, naming, state
from usbagent.events import Outcome
from usbagent.sync import facts_at

pytestmark = pytest.mark.stack

FUTURE = naming.make(PREFIX, datetime(2099, 1, 1, tzinfo=UTC)).filename


def _forge(folder: Path, name: str, data: bytes, sidecar: bool) -> None:
    """A file that only looks like a copy: any content, optionally a sidecar that matches it."""
    (folder / name).write_bytes(data)
    if sidecar:
        digest = hashlib.sha256(data).hexdigest()
        (folder / (name + naming.SIDECAR)).write_text(f"{digest}  {name}\n")


def test_reproduction_a_future_dated_junk_file_no_longer_deletes_the_real_copies(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=3)
    first = make_archive(config.archive.destination, 1, MIB)
    second = make_archive(config.archive.destination, 2, MIB)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    assert usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount)).returncode == 0
    (mount / "usbagent" / FUTURE).write_bytes(b"junk\n")  # 5 bytes, no sidecar
    config = replace(config, usb=replace(config.usb, keep=1))

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 0, r.stderr
    files = stick_files(mount)
    assert {second.name, second.name + naming.SIDECAR, FUTURE} <= files
    assert first.name not in files  # keep = 1 of the real ones: the older one goes
    assert sha256_file(mount / "usbagent" / second.name) == second.sha256
    assert (mount / "usbagent" / FUTURE).read_bytes() == b"junk\n"  # reported, not removed
    assert "up to date, 1 archive(s) verified" in r.stdout
    assert FUTURE in r.stdout and "dated in the future" in r.stdout
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None
    assert record.last_verified_copy == second.name and record.archives == (second.name,)
    assert [c.name for c in record.copies] == [second.name]


@pytest.mark.parametrize(
    ("name", "sidecar", "why"),
    [
        (FUTURE, True, "future"),  # future-dated, with a sidecar that matches the junk
        (archive_name(3), False, "unrecorded"),  # a valid, plausible name the host never made
        (archive_name(3), True, "unrecorded"),  # ... with a forged sidecar
        (archive_name(0), True, "unrecorded"),  # older than the real ones, forged sidecar
        (archive_name(3) + naming.PARTIAL, False, "partial"),  # not a leftover of ours
    ],
)
def test_files_usbagent_never_wrote_do_not_count_toward_keep_and_stay(
    name: str,
    sidecar: bool,
    why: str,
    make_stick: MakeStick,
    unique_label: str,
    tmp_path: Path,
) -> None:
    config = sync_config(tmp_path, unique_label, keep=2)
    real = [make_archive(config.archive.destination, day, MIB) for day in (1, 2)]
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    toml = write_toml(config, tmp_path / "c.toml")
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    folder = mount / "usbagent"
    _forge(folder, name, b"not a backup " * 1000, sidecar)
    junk = {name, name + naming.SIDECAR} if sidecar else {name}

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == {*junk, *(f for a in real for f in (a.name, a.name + ".sha256"))}
    assert "up to date, 2 archive(s) verified" in r.stdout and name in r.stdout
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None and name not in record.archives
    assert record.last_verified_copy == real[1].name
    last = state.last(config.agent.state_dir, "sync")
    assert last is not None and {"name": name, "why": why} in last.details["foreign"]


def test_a_file_under_the_name_of_a_new_archive_is_left_alone_and_the_sync_fails(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config, old, mount, toml = served_once(make_stick, unique_label, tmp_path, keep=2)
    new = make_archive(config.archive.destination, 2, MIB)
    folder = mount / "usbagent"
    _forge(folder, new.name, b"planted " * 100, sidecar=True)  # usbagent never wrote it
    before = sha256_file(folder / new.name)

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 1
    assert new.name in r.stderr and "not the archive usbagent made" in r.stderr
    assert "move that file off the stick" in r.stderr
    assert sha256_file(folder / new.name) == before  # not deleted, not overwritten
    assert sha256_file(folder / old.name) == old.sha256  # the real copy is kept
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None and record.archives == (old.name,)


def test_a_folder_named_like_an_archive_is_refused_and_nothing_is_deleted(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config, old, mount, toml = served_once(make_stick, unique_label, tmp_path, keep=1)
    make_archive(config.archive.destination, 2, MIB)
    (mount / "usbagent" / FUTURE).mkdir()
    before = stick_files(mount)

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 1 and "not a regular file" in r.stderr and FUTURE in r.stderr
    assert stick_files(mount) == before
    assert sha256_file(mount / "usbagent" / old.name) == old.sha256


def test_an_archive_the_host_never_made_is_not_copied_and_pushes_no_real_copy_out(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=1)
    dest = config.archive.destination
    now = datetime.now(UTC).replace(microsecond=0)
    real = make_archive(dest, 0, MIB)
    # As `usbagent archive` records it: the history of the state dir starts here.
    journal.record(
        config.agent, Outcome("archive", True, "written", details={"archive": real.name})
    )
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    toml = write_toml(config, tmp_path / "c.toml")
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    planted = naming.make(PREFIX, now + timedelta(minutes=1)).filename  # newer, plausible
    (dest / planted).write_bytes(b"x" * 1000)
    digest = hashlib.sha256(b"x" * 1000).hexdigest()
    (dest / (planted + naming.SIDECAR)).write_text(f"{digest}  {planted}\n")

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == {real.name, real.name + naming.SIDECAR}
    assert planted in r.stdout and "no `usbagent archive` run recorded making them" in r.stdout
    record = ledger.load(config.agent.state_dir, facts_at(mount).uuid)  # type: ignore[union-attr]
    assert record is not None and record.archives == (real.name,)


def test_a_stick_left_without_any_verified_copy_is_a_failure(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label)
    dest = config.archive.destination
    made = make_archive(dest, 0, MIB)
    (dest / archive_name(0)).rename(dest / FUTURE)  # only a future-dated archive here
    (dest / (archive_name(0) + naming.SIDECAR)).unlink()
    (dest / (FUTURE + naming.SIDECAR)).write_bytes(naming.sidecar_line(FUTURE, made.sha256))
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 1
    assert "the stick holds no verified copy" in r.stderr and FUTURE in r.stderr
    assert FUTURE not in stick_files(mount)


def test_a_future_dated_local_file_no_run_made_is_named_once(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """It is both dated in the future and unrecorded; the summary (which status shows as
    last-sync) named it twice, once per reason."""
    config = sync_config(tmp_path, unique_label)
    dest = config.archive.destination
    real = make_archive(dest, 0, MIB)
    journal.record(
        config.agent, Outcome("archive", True, "written", details={"archive": real.name})
    )
    _forge(dest, FUTURE, b"junk\n", sidecar=True)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert r.stdout.count(FUTURE) == 1, r.stdout
    assert "dated in the future" in r.stdout
    assert stick_files(mount) == {real.name, real.name + naming.SIDECAR}
