"""`usbagent restore` of crafted chains: an increment's dumpdirs (deletions, renames) can
undo only what the restore itself made, inside `--to`, never through a symlink.

As in test_restore_hostile.py: archives written on the fly with tarfile (here with GNU
tar's 'D' members), encrypted to a real key, restored by the real CLI, and a snapshot of
the tree around the target taken before must equal the one taken after.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.integration.archive_helpers import new_identity
from tests.integration.tar_helpers import (
    crafted_archive,
    dumpdir,
    entry,
    failures,
    restore,
    snapshot,
)

FULL = "20260101T000000Z"
INC1 = f"20260102T000000Z.inc1.{FULL}"


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, identity, target), the target two levels below root, victims around it."""
    identity = tmp_path / "id.txt"
    new_identity(identity)
    target = tmp_path / "T" / "inner"
    target.mkdir(parents=True)
    for victim in (tmp_path / "victim.txt", tmp_path / "T" / "victim.txt"):
        victim.write_text("do not touch\n")
    (tmp_path / "T" / "folder").mkdir()
    (tmp_path / "T" / "folder" / "inside.txt").write_text("do not touch either\n")
    return tmp_path, identity, target


def full(root: Path, identity: Path) -> Path:
    """A full whose links point out of the target: `up` to T, `abs` to T/folder."""
    return crafted_archive(
        root,
        identity,
        [
            dumpdir("data/", "Dkeep", "Yf", "Yup", "Yabs"),
            dumpdir("data/keep/", "Ymine"),
            entry("data/f", data=b"restored\n"),
            entry("data/keep/mine", data=b"mine\n"),
            entry("data/up", tarfile.SYMTYPE, "../.."),
            entry("data/abs", tarfile.SYMTYPE, str(root / "T" / "folder")),
        ],
        stamp=FULL,
    )


def test_hostile_renames_and_deletions_touch_nothing_outside(
    world: tuple[Path, Path, Path],
) -> None:
    root, identity, target = world
    (target / "data").mkdir()
    (target / "data" / "theirs.txt").write_text("the user's, not in any archive\n")
    (target / "data" / "their-folder").mkdir()
    (target / "data" / "their-link").symlink_to(root / "T" / "folder")
    full(root, identity)
    increment = crafted_archive(
        root,
        identity,
        [
            # purging a folder that is someone else's symlink to outside would empty it
            dumpdir("data/their-link/"),
            # renames out of, into and through links, and of something not restored
            dumpdir("data/keep/", "Nmine", "Rdata/up/victim.txt", "Tdata/stolen.txt"),
            dumpdir("data/x/", "Rdata/f", "Tdata/up/planted.txt"),
            dumpdir("data/v/", "Rdata/their-link/inside.txt", "Tdata/stolen2.txt"),
            dumpdir("data/y/", "Rdata/their-folder", "Tdata/moved"),
            dumpdir("data/z/", "R../../victim.txt", "Tdata/v"),
            dumpdir("data/w/", "Rdata/f", "T/tmp/escaped"),
            dumpdir("../", "Y.."),
            # the top folder's dumpdir lists only `keep`: the rest of what is there goes,
            # but only what this restore made
            dumpdir("data/", "Dkeep", "Dx", "Dy", "Dz", "Dw", "Dv"),
        ],
        stamp=INC1,
    )
    before = snapshot(root, target)

    proc = restore(increment, identity, target)

    assert proc.returncode == 1
    assert snapshot(root, target) == before, "restore changed something outside the target"
    failed = failures(proc.stderr)
    assert failed["data/their-link/"] == "already exists in the target folder (not overwritten)"
    assert "'data/up' in the target folder is a symlink" in failed["data/up/victim.txt"]
    assert (
        "'data/their-link' in the target folder is a symlink"
        in failed["data/their-link/inside.txt"]
    )
    assert "'data/up' in the target folder is a symlink" in failed["data/f"]
    assert "was not made by this restore (not moved)" in failed["data/their-folder"]
    assert "rename source '../../victim.txt' has '..' in the path" in failed["data/z/"]
    assert "rename target '/tmp/escaped' is an absolute path" in failed["data/w/"]
    assert failed["../"] == "'..' in the path"
    assert not Path("/tmp/escaped").exists()
    # what the chain deleted went, of what this restore made; the user's own stayed
    left = sorted(p.name for p in (target / "data").iterdir())
    assert left == ["keep", "their-folder", "their-link", "theirs.txt", "v", "x", "y"]
    assert (target / "data" / "keep" / "mine").read_text() == "mine\n"


def test_a_file_replaced_by_a_later_night_is_replaced_whole(
    world: tuple[Path, Path, Path],
) -> None:
    """The new version is written to a temporary name and renamed over the old one: at no
    time is a partial file under the final name, and a hard link to it keeps the old one
    only if the chain says so."""
    root, identity, target = world
    full(root, identity)
    increment = crafted_archive(
        root,
        identity,
        [
            dumpdir("data/", "Dkeep", "Yf", "Ngone-link"),
            dumpdir("data/keep/", "Nmine"),
            entry("data/f", data=b"night 1\n"),
        ],
        stamp=INC1,
    )
    proc = restore(increment, identity, target)
    assert proc.returncode == 0, proc.stderr
    assert (target / "data" / "f").read_bytes() == b"night 1\n"
    assert sorted(p.name for p in (target / "data").iterdir()) == ["f", "keep"]  # no temp


def test_a_symlink_a_later_night_made_a_folder_is_replaced_not_followed(
    world: tuple[Path, Path, Path],
) -> None:
    """`abs` (a link to T/folder, outside) becomes a folder with an empty dumpdir: the link
    this restore made is replaced by a real, empty folder; T/folder keeps its file."""
    root, identity, target = world
    full(root, identity)
    increment = crafted_archive(
        root,
        identity,
        [dumpdir("data/", "Dkeep", "Yf", "Yup", "Dabs"), dumpdir("data/abs/")],
        stamp=INC1,
    )
    before = snapshot(root, target)
    proc = restore(increment, identity, target)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(root, target) == before
    abs_folder = target / "data" / "abs"
    assert abs_folder.is_dir() and not abs_folder.is_symlink() and not list(abs_folder.iterdir())
    assert (root / "T" / "folder" / "inside.txt").read_text() == "do not touch either\n"
