"""Which names tar is given and which it stores: the real GNU tar on real trees."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from usbagent.selection import Problem, Source, member, problems, resolve, tar_command


def stored(cmd: list[str]) -> dict[str, str]:
    """Member name -> what it is ("file", "dir", "symlink to X", "hard link to X")."""
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        members = tar.getmembers()
    kinds = {}
    for m in members:
        kind = "dir" if m.isdir() else "file"
        if m.issym() or m.islnk():
            kind = ("symlink to " if m.issym() else "hard link to ") + m.linkname
        kinds[m.name] = kind
    return kinds


def same(path: Path) -> Source:
    return Source(path, path)


@pytest.mark.parametrize("odd", ["plain", "we&ird\\1 (x)+ $^.|{2}*?[x]"])
def test_a_symlinked_source_is_stored_under_its_name_with_links_intact(
    tmp_path: Path, odd: str
) -> None:
    real = tmp_path / f"real {odd}"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "f").write_text("f\n")
    (real / "hard").hardlink_to(real / "sub" / "f")
    (real / "abs").symlink_to(real / "sub" / "f")  # a target is content: never renamed
    link = tmp_path / f"link {odd}"
    link.symlink_to(real)
    (source,) = resolve((link,))
    assert source == Source(link, real)
    n = member(link)
    assert stored(tar_command("tar", (source,), (), tmp_path / "elsewhere")) == {
        n: "dir",
        f"{n}/abs": f"symlink to {real}/sub/f",
        f"{n}/hard": "file",  # --sort=name: met first, so stored as the file
        f"{n}/sub": "dir",
        f"{n}/sub/f": f"hard link to {n}/hard",  # renamed with the member it points to
    }


def test_absolute_excludes_are_literal_up_to_the_source_and_globs_after(tmp_path: Path) -> None:
    src = tmp_path / "s[1]*"
    for name in ("keep/a.log", "skip/a.log", "skip2/a", "deep/skip/a", "logs/x.log", "logs/y"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("x\n")
    (tmp_path / "s1x").mkdir()  # what "s[1]*" would match as a glob
    (tmp_path / "s1x" / "skip").write_text("x\n")
    patterns = (f"{src}/skip", f"{src}/logs/*.log")
    cmd = tar_command("tar", (same(src), same(tmp_path / "s1x")), patterns, tmp_path / "d")
    n = member(src)
    assert sorted(stored(cmd)) == sorted(
        [
            n,
            f"{n}/deep",
            f"{n}/deep/skip",  # anchored: not any tail
            f"{n}/deep/skip/a",
            f"{n}/keep",
            f"{n}/keep/a.log",
            f"{n}/logs",
            f"{n}/logs/y",
            f"{n}/skip2",  # anchored: not a prefix of a name
            f"{n}/skip2/a",
            member(tmp_path / "s1x"),
            member(tmp_path / "s1x" / "skip"),
        ]
    )


def test_tar_names_under_the_root_and_under_a_symlinked_source() -> None:
    root = same(Path("/"))
    cmd = tar_command("tar", (root,), ("/proc", "*.tmp"), Path("/var/backups"))
    assert cmd[cmd.index("--exclude=./var/backups") - 2 :][:2] == ["--anchored", "--no-wildcards"]
    anchored = ["--anchored", "--wildcards", "--no-wildcards-match-slash"]
    assert cmd[cmd.index("--exclude=./proc") - 3 :][:3] == anchored
    relative = ["--no-anchored", "--wildcards", "--wildcards-match-slash"]
    assert cmd[cmd.index("--exclude=*.tmp") - 3 :][:3] == relative
    linked = Source(Path("/data-link"), Path("/srv/data"))
    cmd = tar_command("tar", (linked,), ("/data-link/cache",), Path("/srv/data/bk"))
    # tar matches excludes before the rename: real paths, spelled as tar names them
    assert "--exclude=srv/data/bk" in cmd and "--exclude=srv/data/cache" in cmd
    assert cmd[-2:] == ["--", "srv/data"]
    assert "--transform=s\x01^srv/data(/|$)\x01data-link\\1\x01xS" in cmd
    unlinked = tar_command("tar", (same(Path("/data")),), (), Path("/elsewhere"))
    assert not [a for a in unlinked if a.startswith(("--transform", "--anchored"))]


def test_problems_compare_resolved_paths() -> None:
    dest = Path("/srv/backups")
    fine = (Source(Path("/data"), Path("/srv/data")), same(Path("/srv/backups2")))
    assert problems(fine, dest) == []
    inside = Source(Path("/b-link/x"), Path("/srv/backups/x"))
    (problem,) = problems((inside,), dest)
    assert problem == Problem(
        "source /b-link/x (that is /srv/backups/x) is inside the destination /srv/backups, "
        "which is never archived: the archive would hold nothing of it",
        "move archive.destination out of it, or remove it from archive.sources",
    )
    twice = (same(Path("/srv/data")), Source(Path("/data"), Path("/srv/data")))
    assert [p.message for p in problems(twice, dest)] == [
        "sources /srv/data and /data are the same folder (/srv/data): its files would be "
        "stored twice"
    ]
    nested = (Source(Path("/docs"), Path("/srv/data/docs")), same(Path("/srv/data")))
    assert [p.fix for p in problems(nested, dest)] == ["remove /docs from archive.sources"]
