"""Full and incremental archives on real files, restored with the standard tools.

Every night is a real `usbagent archive` run (the CLI, as the timer runs it). Time is never
slept through: a chain is made older (or newer) by renaming its archives and everything the
state dir records of them, as if the runs had happened then.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.archive_helpers import (
    PREFIX,
    Setup,
    fill_random,
    make_setup,
    wait_for,
    write_config,
)
from usbagent import archive, naming, snapshots
from usbagent.levels import Level


def night(s: Setup) -> tuple[naming.ArchiveName, dict[str, object]]:
    """One archive run that must succeed: the archive it made and its recorded outcome."""
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    last = s.last()
    made = naming.parse(last["details"]["archive"])
    assert made is not None
    return made, last


def standard_restore(archives: list[Path], identity: Path, target: Path) -> None:
    """What README tells a person without usbagent: each member, in order."""
    target.mkdir(exist_ok=True)
    for member in archives:
        subprocess.run(
            f"age -d -i '{identity}' '{member}' | zstd -d -q "
            f"| tar --listed-incremental=/dev/null -x -C '{target}'",
            shell=True,
            check=True,
        )


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a person compares: each path's type, permissions, content or link target, and
    which paths are one file (hard links); not the `*.tmp` files the config excludes."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *(f for f in files if not f.endswith(".tmp"))]:
            path = Path(folder) / name
            st = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                first = inodes.setdefault(st.st_ino, key) if st.st_nlink > 1 else key
                out[key] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), first)
            elif stat.S_ISLNK(st.st_mode):
                out[key] = ("symlink", str(path.readlink()))
            else:
                out[key] = ("dir", stat.S_IMODE(st.st_mode))
    return out


def chain_files(s: Setup) -> list[Path]:
    """The destination's archives in time order (one chain in these tests)."""
    return s.archives()


def restored_source(s: Setup, archives: list[Path], target: Path) -> dict[str, tuple[object, ...]]:
    standard_restore(archives, s.identity, target)
    return tree(target / str(s.source).lstrip("/"))


def shift(s: Setup, by: timedelta) -> None:
    """Move every archive of the setup, and all the state dir says of it, `by` in time."""
    renames = {}
    for path in s.archives():
        old = naming.parse(path.name)
        assert old is not None
        full = old.full + by if old.level else None
        renames[old.filename] = naming.make(PREFIX, old.created + by, old.level, full).filename
    for old, new in renames.items():
        digest = (s.destination / (old + naming.SIDECAR)).read_text().split()[0]
        (s.destination / old).rename(s.destination / new)
        (s.destination / (old + naming.SIDECAR)).unlink()
        (s.destination / (new + naming.SIDECAR)).write_text(f"{digest}  {new}\n")
        for suffix in (snapshots.SUFFIX, snapshots.SUFFIX + snapshots.META):
            was = snapshots.folder(s.state_dir) / (old + suffix)
            if was.exists():
                was.rename(snapshots.folder(s.state_dir) / (new + suffix))
    for file in s.state_dir.rglob("*.json*"):
        text = file.read_text()
        for old, new in renames.items():
            text = text.replace(old, new)
        file.write_text(text)


def test_a_week_of_changes_restores_with_the_standard_tools_at_every_point(
    tmp_path: Path,
) -> None:
    """No night here deletes a folder and creates one: GNU tar tells folders apart by
    inode, and a new folder that reuses a deleted one's inode that same night is recorded
    as a rename of it (README, "Incremental archives": a known GNU tar limitation)."""
    s = make_setup(tmp_path)
    src = s.source
    (src / "dir-to-file").mkdir()
    (src / "dir-to-file" / "inner").write_text("inner\n")
    (src / "file-to-dir").write_text("plain\n")
    (src / "moved" / "deep").mkdir(parents=True)
    (src / "moved" / "deep" / "f").write_text("deep\n")
    (src / "gone").mkdir()
    (src / "gone" / "x").write_text("x\n")
    (src / "link").symlink_to("docs/a.txt")
    full, first = night(s)
    assert full.is_full and first["details"]["level"] == 0
    assert "full (no earlier archive to build on)" in first["summary"]
    points = [(full, tree(src))]

    (src / "docs" / "a.txt").write_text("alpha, changed\n")  # modified
    (src / "docs" / "new.txt").write_text("added\n")  # added
    (src / "docs" / "b.txt").unlink()  # deleted
    (src / "moved").rename(src / "renamed")  # directory renamed
    (src / "file-to-dir").unlink()
    (src / "file-to-dir").mkdir()  # file replaced by a directory
    (src / "file-to-dir" / "child").write_text("child\n")
    os.link(src / "docs" / "new.txt", src / "hard")  # a hard link to a new file
    inc1, second = night(s)
    assert (inc1.level, inc1.full) == (1, full.created)
    assert second["details"]["level"] == 1 and second["details"]["full"] == full.filename
    assert f"increment level 1 of {full.filename}" in second["summary"]
    points.append((inc1, tree(src)))

    (src / "gone" / "x").unlink()
    (src / "gone").rmdir()  # directory deleted
    (src / "dir-to-file" / "inner").unlink()
    (src / "dir-to-file").rmdir()
    (src / "dir-to-file").write_text("now a file\n")  # directory replaced by a file
    (src / "renamed" / "deep").rename(src / "docs" / "deep")  # moved elsewhere
    (src / "link").unlink()
    (src / "link").symlink_to("renamed")  # symlink re-pointed
    (src / "docs" / "a.txt").chmod(0o600)  # only the mode changed
    inc2, _ = night(s)
    assert (inc2.level, inc2.full) == (2, full.created)
    points.append((inc2, tree(src)))

    files = [s.destination / a.filename for a, _ in points]
    for n, (_, expected) in enumerate(points):
        assert restored_source(s, files[: n + 1], tmp_path / f"restored-{n}") == expected
        by_usbagent = tmp_path / f"usbagent-{n}"
        proc = s.cli(
            "restore", str(files[n]), "--identity", str(s.identity), "--to", str(by_usbagent)
        )
        assert proc.returncode == 0, proc.stderr
        assert tree(by_usbagent / str(src).lstrip("/")) == expected


def test_an_unchanged_night_is_a_small_increment_not_a_failure(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    flat = tmp_path / "flat"  # files only: its increment holds nothing but its listing
    flat.mkdir()
    fill_random(flat / "big.bin", 2)
    (flat / "note").write_text("note\n")
    write_config(
        s.config,
        {
            "archive": {
                "sources": [str(s.source), str(flat)],
                "destination": str(s.destination),
                "recipients_file": str(s.recipients),
                "prefix": PREFIX,
            },
            "agent": {"state_dir": str(s.state_dir)},
            "notify": {"enabled": False},
        },
    )
    full, _ = night(s)
    inc, second = night(s)
    assert inc.level == 1
    assert [c["bytes"] for c in second["details"]["sources"]] == [0, 0]  # type: ignore[index]
    size = (s.destination / inc.filename).stat().st_size
    assert size < 2048 < (s.destination / full.filename).stat().st_size
    restored = restored_source(s, chain_files(s), tmp_path / "r")
    assert restored == tree(s.source)
    assert tree(tmp_path / "r" / str(flat).lstrip("/")) == tree(flat)


def test_a_source_that_vanished_fails_and_leaves_the_chain_in_force(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    full, _ = night(s)
    kept = sorted(snapshots.folder(s.state_dir).iterdir())
    aside = tmp_path / "aside"
    s.source.rename(aside)
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert f"source {s.source} does not exist" in proc.stderr
    assert [p.name for p in s.archives()] == [full.filename]
    assert sorted(snapshots.folder(s.state_dir).iterdir()) == kept
    aside.rename(s.source)
    inc, _ = night(s)
    assert inc.level == 1


def test_exclusions_changed_force_a_full_which_fails_a_source_now_excluded_whole(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path)
    night(s)
    config = s.config.read_text()
    s.config.write_text(config.replace('prefix = "', 'exclude = ["b.txt"]\nprefix = "'))
    full, told = night(s)
    assert full.is_full and told["details"]["full_because"] == "selection"
    assert "archive.sources or archive.exclude changed" in str(told["summary"])
    everything = 'exclude = ["*.txt", "*.tmp", "docs"]\nprefix = "'
    s.config.write_text(config.replace('prefix = "', everything))
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert "yielded nothing although it is not empty" in proc.stderr
    assert len(s.archives()) == 2


@pytest.mark.parametrize("fault", ["missing", "damaged", "another-archives"])
def test_a_snapshot_that_is_not_the_newest_archives_own_makes_a_full(
    tmp_path: Path, fault: str
) -> None:
    s = make_setup(tmp_path)
    full, _ = night(s)
    inc, _ = night(s)
    own = snapshots.path(s.state_dir, inc.filename)
    if fault == "missing":
        own.unlink()
    elif fault == "damaged":
        with own.open("ab") as f:
            f.write(b"\0")
    else:
        other = snapshots.path(s.state_dir, full.filename)
        own.write_bytes(other.read_bytes())
        meta = Path(str(other) + snapshots.META)
        Path(str(own) + snapshots.META).write_bytes(meta.read_bytes())
    made, told = night(s)
    assert made.is_full
    why = "snapshot-missing" if fault == "missing" else "snapshot-unreadable"
    assert told["details"]["full_because"] == why
    assert "snapshot" in str(told["summary"])
    after, then = night(s)
    assert (after.level, after.full) == (1, made.created), then["summary"]


def test_a_full_is_due_after_full_every_days_and_not_before(tmp_path: Path) -> None:
    s = make_setup(tmp_path, full_every_days=3)
    night(s)
    night(s)
    shift(s, -timedelta(days=2))  # the chain's full was two days ago
    inc, _ = night(s)
    assert inc.level == 2
    shift(s, -timedelta(days=1))  # now three
    made, told = night(s)
    assert made.is_full and told["details"]["full_because"] == "due"
    assert "full (archive.full_every_days have passed" in str(told["summary"])


def test_a_clock_behind_the_newest_archive_makes_a_full(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    night(s)
    night(s)
    shift(s, timedelta(minutes=30))  # as if the clock were set back half an hour since
    made, told = night(s)
    assert made.is_full and told["details"]["full_because"] == "clock"
    assert "clock is earlier than the newest archive" in str(told["summary"])


def test_kill_9_mid_increment_leaves_the_chain_and_its_snapshot_and_the_next_night_is_right(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path)
    full, _ = night(s)
    snapshot_dir = snapshots.folder(s.state_dir)
    before = {p.name: p.read_bytes() for p in snapshot_dir.iterdir()}
    fill_random(s.source / "big.bin", 200)
    proc = s.popen("archive")

    def partial_growing() -> bool:
        return any(p.stat().st_size > 1024**2 for p in s.destination.glob("*.partial"))

    wait_for(partial_growing, 30, "the increment's .partial to grow")
    assert any(p.name.endswith(".snar.partial") for p in snapshot_dir.iterdir())
    proc.kill()
    proc.wait(timeout=30)
    assert [p.name for p in s.archives()] == [full.filename]
    left = {p.name: p.read_bytes() for p in snapshot_dir.iterdir()}
    assert {k: v for k, v in left.items() if not k.endswith(".partial")} == before

    (s.source / "docs" / "after.txt").write_text("made after the kill\n")
    inc, _ = night(s)
    assert (inc.level, inc.full) == (1, full.created)
    assert not [p for p in snapshot_dir.iterdir() if p.name.endswith(".partial")]
    assert restored_source(s, chain_files(s), tmp_path / "r") == tree(s.source)


@pytest.fixture
def loop_image(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 image and a mount point; whatever loop devices the test attached are
    detached and the mount undone afterwards."""
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt.mkdir()
    yield image, mnt
    subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    listed = subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True, check=False
    ).stdout
    for line in listed.splitlines():
        subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)


def attach(image: Path) -> str:
    return subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_source_remounted_with_new_device_numbers_is_still_a_small_increment(
    tmp_path: Path, loop_image: tuple[Path, Path]
) -> None:
    image, mnt = loop_image
    first = attach(image)
    subprocess.run(["mount", first, str(mnt)], check=True)
    for n in range(20):
        fill_random(mnt / "data" / f"f{n}.bin", 1)
    s = make_setup(tmp_path / "setup", sources=[mnt / "data"])
    full, _ = night(s)
    device = (mnt / "data").stat().st_dev
    subprocess.run(["umount", str(mnt)], check=True)
    second = attach(image)  # while the first is still attached: another device number
    subprocess.run(["losetup", "-d", first], check=True)
    subprocess.run(["mount", second, str(mnt)], check=True)
    assert (mnt / "data").stat().st_dev != device
    (mnt / "data" / "one-change.txt").write_text("the only change\n")
    inc, told = night(s)
    assert inc.level == 1
    (count,) = told["details"]["sources"]  # type: ignore[misc]
    assert count["bytes"] == len("the only change\n")
    full_size = (s.destination / full.filename).stat().st_size
    assert (s.destination / inc.filename).stat().st_size < full_size / 100
    standard_restore(chain_files(s), s.identity, tmp_path / "r")
    restored = tree(tmp_path / "r" / str(mnt / "data").lstrip("/"))
    assert restored == tree(mnt / "data") and len(restored) == 21


def test_retention_keeps_the_chain_a_kept_increment_needs_and_prunes_old_chains_whole(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path, keep_days=14, full_every_days=30)
    night(s)
    night(s)
    shift(s, -timedelta(days=20))  # full and inc1 are 20 days old, beyond keep_days
    inc2, told = night(s)
    assert inc2.level == 2 and told["details"]["pruned"] == []
    assert len(s.archives()) == 3
    assert len(snapshots.described(s.state_dir)) == 3

    shift(s, -timedelta(days=20))  # now the whole chain is old: a full is due
    old = [p.name for p in s.archives()]
    made, told = night(s)
    assert made.is_full and told["details"]["full_because"] == "due"
    assert [p.name for p in s.archives()] == [made.filename]
    newest_first = reversed(old)  # a prune cut short leaves a start of the chain
    assert told["details"]["pruned"] == [f for n in newest_first for f in (n, n + naming.SIDECAR)]
    assert snapshots.described(s.state_dir) == [made.filename]


def test_a_crash_after_the_archives_rename_makes_the_next_night_a_full_saying_why(
    tmp_path: Path,
) -> None:
    """The order is archive, sidecar, snapshot, record: a crash after the first two leaves
    an archive that has neither snapshot nor record (simulated by removing them)."""
    s = make_setup(tmp_path)
    night(s)
    inc, _ = night(s)
    for suffix in (snapshots.SUFFIX, snapshots.SUFFIX + snapshots.META):
        (snapshots.folder(s.state_dir) / (inc.filename + suffix)).unlink()
    journal = s.state_dir / "archives.json"
    entries = json.loads(journal.read_text())
    journal.write_text(json.dumps([e for e in entries if e["name"] != inc.filename]))
    history = s.state_dir / "events.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    history.write_text("".join(line for line in lines if inc.filename not in line))
    for kind in ("last", "last-ok"):
        (s.state_dir / kind / "archive.json").unlink()
    made, told = night(s)
    assert made.is_full and told["details"]["full_because"] == "unrecorded"
    assert "not one a run recorded" in str(told["summary"])


def test_a_new_archive_is_dated_after_every_archive_already_there(tmp_path: Path) -> None:
    """One second holding two archives would not say which came first (names have 1 s
    resolution): a run in the second of the newest archive there waits for the next."""
    now = datetime.now(UTC)
    there = naming.make(PREFIX, now, 1, now - timedelta(days=1))  # an increment, this second
    (tmp_path / there.filename).write_bytes(b"")
    name = archive._free_name(tmp_path, PREFIX, Level(0, why="due"))  # a full, now
    assert name.created > there.created


def test_a_source_named_through_a_symlink_restores_after_a_folder_rename(tmp_path: Path) -> None:
    """GNU tar writes an increment's rename records under the real path, past the
    `--transform` that stores a symlinked source under its name: no restore could apply
    them. Such a source gets a full every night, and the summary says why and the fix."""
    s = make_setup(tmp_path)
    link = tmp_path / "named"
    link.symlink_to(s.source)
    write_config(
        s.config,
        {
            "archive": {
                "sources": [str(link)],
                "destination": str(s.destination),
                "recipients_file": str(s.recipients),
                "prefix": PREFIX,
            },
            "agent": {"state_dir": str(s.state_dir)},
            "notify": {"enabled": False},
        },
    )
    night(s)
    (s.source / "docs").rename(s.source / "papers")
    made, last = night(s)
    assert made.level == 0
    assert "named through a symlink" in str(last["summary"])
    assert "archive.sources" in str(last["summary"])
    target = tmp_path / "r"
    archive_file = str(s.destination / made.filename)
    proc = s.cli("restore", archive_file, "--identity", str(s.identity), "--to", str(target))
    assert proc.returncode == 0, proc.stderr
    assert tree(target / str(link).lstrip("/")) == tree(s.source)
