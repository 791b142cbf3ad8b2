"""`usbagent restore` and `usbagent verify` of chains that real `usbagent archive` runs made
(the CLI, as the timer runs it): every restore point comes back as the source was that
night, including the nights GNU tar's own restore of a chain stops at."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.archive_helpers import Setup, make_setup, usbagent
from tests.integration.chain_helpers import differences, tree


def night(s: Setup) -> Path:
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    return s.archives()[-1]


def restored(s: Setup, archive: Path, target: Path, *members: str) -> dict[str, tuple[object, ...]]:
    proc = usbagent(
        "restore", str(archive), "--identity", str(s.identity), "--to", str(target), *members
    )
    assert proc.returncode == 0, proc.stderr
    return tree(target / str(s.source).lstrip("/"))


def source_tree(s: Setup) -> dict[str, tuple[object, ...]]:
    return {k: v for k, v in tree(s.source).items() if not k.endswith(".tmp")}


def test_every_point_of_an_archived_chain_restores_to_its_night(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    src = s.source
    (src / "old").mkdir()
    (src / "old" / "kept").write_text("old's\n")
    (src / "new").mkdir()
    (src / "new" / "fresh").write_text("new's\n")
    (src / "x").mkdir()
    (src / "x" / "only-x").write_text("x\n")
    (src / "y").mkdir()
    (src / "y" / "only-y").write_text("y\n")
    (src / "file").write_text("a file, then a folder\n")
    points = [(night(s), source_tree(s))]

    shutil.rmtree(src / "old")
    (src / "new").rename(src / "old")  # GNU tar's restore stops here ("Directory not empty")
    (src / "x").rename(src / "t")
    (src / "y").rename(src / "x")
    (src / "t").rename(src / "y")  # swapped
    (src / "file").unlink()
    (src / "file").mkdir()
    (src / "file" / "inner").write_text("now a folder\n")
    (src / "docs" / "a.txt").write_text("alpha, changed\n")
    points.append((night(s), source_tree(s)))

    points.append((night(s), source_tree(s)))  # nothing changed

    assert [a.name.count(".inc") for a, _ in points] == [0, 1, 1]
    for n, (archive, expected) in enumerate(points):
        assert differences(expected, restored(s, archive, tmp_path / f"r{n}")) == {}, n

    last = points[-1][0]
    proc = usbagent("verify", str(last), "--identity", str(s.identity))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "3 checked, 0 failed"
    old = restored(s, last, tmp_path / "old", str(src / "old"))
    assert differences({k: v for k, v in points[-1][1].items() if k.startswith("old")}, old) == {}
