"""Whole chains on real loop-device sticks (issue 11): a stick gets restore points, never an
increment without everything it depends on; a broken chain is repaired or reported.

The archives are random bytes under full and increment names with their sidecars, and each
is recorded in the state dir as the archive run that made it records it: the copier never
decrypts, so this is exactly what a sync sees of real ones.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.integration.archive_helpers import make_setup
from tests.integration.sync_helpers import (
    MIB,
    archive_name,
    chain_names,
    increment_name,
    make_named,
    sha256_file,
    stick_files,
    sync_config,
    usbagent,
    write_toml,
)
from tests.stack import MakeStick, PartSpec
from usbagent import journal, ledger, naming
from usbagent.config import Config
from usbagent.devices import FAT_MAX_FILE
from usbagent.events import Outcome
from usbagent.plan import LocalArchive
from usbagent.sync import Progress, facts_at, precheck
from usbagent.synccmd import sync_mounted
from usbagent.udev import facts_for_device

pytestmark = pytest.mark.stack


def made(config: Config, names: list[str], size: int = MIB) -> list[LocalArchive]:
    """Archives in the destination, each recorded as its (successful) archive run does."""
    out = []
    for name in names:
        archive = make_named(config.archive.destination, name, size)
        parsed = naming.parse(name)
        assert parsed is not None
        details = {
            "archive": name,
            "size": archive.size,
            "sha256": archive.sha256,
            "level": parsed.level,
            "full": naming.make(parsed.prefix, parsed.full).filename,
        }
        journal.record(config.agent, Outcome("archive", True, f"wrote {name}", details=details))
        out.append(archive)
    return out


def with_sidecars(names: list[str]) -> set[str]:
    return {*names, *(n + naming.SIDECAR for n in names)}


def forget(folder: Path, name: str) -> None:
    """An archive and its sidecar gone (deleted by a person, or a prune that was cut)."""
    (folder / name).unlink()
    (folder / (name + naming.SIDECAR)).unlink()


def record_of(config: Config, mount: Path) -> ledger.StickRecord:
    facts = facts_at(mount)
    assert facts is not None
    record = ledger.load(config.agent.state_dir, facts.uuid)
    assert record is not None
    return record


def restore_point_of(config: Config, mount: Path) -> str:
    point = record_of(config, mount).restore_point
    return point.archive.filename if point else ""


def test_a_chain_is_copied_whole_its_full_first_then_levels_in_order(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    # keep = 1: the one restore point is level 3, and it needs the whole chain.
    config = sync_config(tmp_path, unique_label, keep=1)
    week = chain_names(0, 4)
    archives = made(config, week)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    seen: list[Progress] = []

    outcome = sync_mounted(config, mount, facts_at(mount), threading.Event(), seen.append)

    assert outcome.ok, outcome.summary
    assert stick_files(mount) == with_sidecars(week)
    assert list(dict.fromkeys(p.name for p in seen)) == week  # full, then levels 1, 2, 3
    assert outcome.details["copied"] == week
    for archive in archives:
        assert sha256_file(mount / "usbagent" / archive.name) == archive.sha256
    assert outcome.details["restore_point"] == week[-1]
    assert outcome.details["restore_points"] == 4
    assert restore_point_of(config, mount) == week[-1]


def test_a_stick_stopped_midway_holds_a_restorable_prefix_of_the_chain(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """Copying stops (Ctrl-C, shutdown) while level 2 is being copied: what the stick holds
    is the full and level 1, a chain that restores, and the ledger says exactly that."""
    config = sync_config(tmp_path, unique_label, keep=1)
    week = chain_names(0, 4)
    made(config, week)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    stop = threading.Event()

    def progress(p: Progress) -> None:
        if p.name == week[2]:
            stop.set()

    outcome = sync_mounted(config, mount, facts_at(mount), stop, progress)

    assert not outcome.ok and "2 of 4 archive(s) copied" in outcome.summary, outcome.summary
    assert stick_files(mount) == with_sidecars(week[:2])
    assert restore_point_of(config, mount) == week[1]
    shown = usbagent(write_toml(config, tmp_path / "c.toml"), "status").stdout
    assert f"restores completely to {week[1]} (made 2026-11-02 02:00 UTC)" in shown, shown


def test_a_member_missing_or_corrupt_on_the_stick_is_copied_again_from_the_host(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=1)
    week = chain_names(0, 4)
    archives = made(config, week)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    toml = write_toml(config, tmp_path / "c.toml")
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    folder = mount / "usbagent"
    forget(folder, week[1])  # level 1 gone
    with (folder / week[2]).open("r+b") as f:  # level 2 damaged: fails its sidecar
        f.write(b"\0" * 16)
    assert restore_point_of(config, mount) == week[-1]  # the ledger has not seen it yet

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == with_sidecars(week)
    for archive in archives:
        assert sha256_file(folder / archive.name) == archive.sha256
    assert restore_point_of(config, mount) == week[-1]
    last = json.loads((config.agent.state_dir / "last" / "sync.json").read_text())
    assert last["details"]["copied"] == [week[1], week[2]]  # in chain order
    assert last["details"]["replaced"] == [week[2]]


def test_a_member_the_host_no_longer_has_is_reported_and_its_points_not_counted(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=2)
    week = chain_names(0, 4)
    made(config, week)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    toml = write_toml(config, tmp_path / "c.toml")
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    folder = mount / "usbagent"
    forget(folder, week[1])  # level 1 gone from the stick...
    for name in week:  # ...and the whole chain gone from the host (pruned there)
        forget(config.archive.destination, name)
    new_full = archive_name(7)
    made(config, [new_full])

    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 1, r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert "cannot be restored" in said and f"{week[2]} (chain of {week[0]}: lacks level 1)" in said
    assert week[3] in said
    # nothing usbagent cannot replace was deleted; the new full was copied all the same
    assert stick_files(mount) == with_sidecars([new_full, week[0], week[2], week[3]])
    record = record_of(config, mount)
    assert "cannot be restored" in record.last_error
    assert restore_point_of(config, mount) == new_full
    saved = json.loads(ledger.path_for(config.agent.state_dir, record.uuid).read_text())  # type: ignore[union-attr]
    assert saved["broken"] == [week[2], week[3]]
    last = json.loads((config.agent.state_dir / "last" / "sync.json").read_text())
    assert last["details"]["restore_points"] == 2  # the new full and the old full alone
    assert [b["archive"] for b in last["details"]["broken"]] == [week[2], week[3]]
    assert [b["missing"] for b in last["details"]["broken"]] == [[1], [1]]


def test_an_increment_whose_chain_the_host_lacks_is_never_copied_and_is_named(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=3)
    week = chain_names(0, 4)
    made(config, week)
    forget(config.archive.destination, week[1])
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    r = usbagent(write_toml(config, tmp_path / "c.toml"), "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == with_sidecars([week[0]])
    assert "not copied, their chain is incomplete" in r.stdout + r.stderr
    assert f"{week[2]} (chain of {week[0]}: lacks level 1)" in r.stdout + r.stderr
    assert restore_point_of(config, mount) == week[0]


def test_keep_counts_restore_points_and_an_unneeded_chain_goes_highest_level_first(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    config = sync_config(tmp_path, unique_label, keep=3)
    toml = write_toml(config, tmp_path / "c.toml")
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()
    week0 = chain_names(0, 4)
    made(config, week0)
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    week7 = [archive_name(7), increment_name(8, 1, 7)]
    made(config, week7)

    # points: level 1 of day 7, the full of day 7, level 3 of day 0: all of day 0's chain
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    assert stick_files(mount) == with_sidecars([*week0, *week7])

    made(config, [increment_name(9, 2, 7)])
    r = usbagent(toml, "sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == with_sidecars([*week7, increment_name(9, 2, 7)])
    last = json.loads((config.agent.state_dir / "last" / "sync.json").read_text())
    assert last["details"]["pruned"] == list(reversed(week0))
    assert restore_point_of(config, mount) == increment_name(9, 2, 7)


def _sparse(config: Config, name: str, size: int) -> None:
    """An archive of `size` bytes without writing them (only its size matters here)."""
    dest = config.archive.destination
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / name).open("wb") as f:
        f.truncate(size)
    (dest / (name + naming.SIDECAR)).write_text(f"{'0' * 64}  {name}\n")


@pytest.mark.parametrize(("fstype", "refused"), [("vfat", True), ("exfat", False)])
def test_fat32_is_judged_on_every_member_of_the_chain_before_mount(
    fstype: str, refused: bool, make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """The newest restore point is a 1 MiB increment, but it needs its full of 4 GiB: a
    FAT32 stick cannot restore it, and the refusal names the full and its size."""
    config = sync_config(tmp_path, unique_label, keep=1)
    big = FAT_MAX_FILE + 1
    full, inc1 = chain_names(0, 2)
    _sparse(config, full, big)
    _sparse(config, inc1, MIB)
    stick = make_stick(PartSpec(fstype, label=unique_label, size_mb=4200))
    facts = facts_for_device(stick.device(0))
    assert facts.fstype == fstype

    reason = precheck(config, facts)

    if refused:
        assert reason is not None and "FAT32" in reason
        assert f"{full} ({big} bytes" in reason
    else:
        assert reason is None


def test_a_chain_real_archive_runs_made_is_copied_whole_and_restores_from_the_stick(
    make_stick: MakeStick, unique_label: str, tmp_path: Path
) -> None:
    """Three real `usbagent archive` nights (a full, then levels 1 and 2), `usbagent sync`
    with keep = 1, then `usbagent restore` of the newest copy on the stick: the stick alone
    brings back the source as it was that night, deletions and renames included."""
    s = make_setup(tmp_path)
    with s.config.open("a") as f:
        f.write(f'[usb]\nlabels = ["{unique_label}"]\nrequire_usb = false\nkeep = 1\n')
    for change in range(3):
        if change == 1:
            (s.source / "docs" / "b.txt").unlink()
            (s.source / "docs" / "c.txt").write_text("gamma\n")
        elif change == 2:
            (s.source / "docs").rename(s.source / "papers")
        night = s.cli("archive")
        assert night.returncode == 0, night.stderr
    made_here = [p.name for p in s.archives()]
    parsed = [naming.parse(n) for n in made_here]
    assert [a.level for a in parsed if a] == [0, 1, 2]
    expected = tree_of(s.source)
    mount = make_stick(PartSpec("ext4", label=unique_label)).mount()

    r = s.cli("sync", str(mount))

    assert r.returncode == 0, r.stderr
    assert stick_files(mount) == with_sidecars(made_here)
    target = tmp_path / "restored"
    newest = mount / "usbagent" / made_here[-1]
    back = s.cli("restore", str(newest), "--identity", str(s.identity), "--to", str(target))
    assert back.returncode == 0, back.stderr
    assert tree_of(target / str(s.source).lstrip("/")) == expected
    assert not (target / str(s.source).lstrip("/") / "docs").exists()


def tree_of(root: Path) -> dict[str, str]:
    """Each path under `root`: a folder, or a file's content."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else p.read_text()
        for p in sorted(root.rglob("*"))
        if not p.name.endswith(".tmp")
    }
