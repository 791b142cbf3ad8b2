"""What `usbagent archive` stores: what the user named, never the destination, never nothing.

Real files, the real GNU tar and the real CLI (exit status, stderr, the recorded outcome,
`doctor`); each archive is read back with Debian's age, zstd and tar.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.archive_helpers import (
    Setup,
    age_listing,
    make_setup,
    member,
    write_config,
)
from usbagent.selection import Source, tar_command


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test bind-mounts a folder and needs root", pytrace=False)
        pytest.skip("a bind mount needs root")


def data_tree(root: Path) -> dict[str, int]:
    """Files (relative name -> size) of a small tree: subfolders, a long name, a symlink."""
    files = {
        "docs/a.txt": b"alpha\n",
        "docs/b.txt": b"beta\n" * 1000,
        "docs2/c.txt": b"gamma\n",
        "sub/docs/d.txt": b"delta\n",
        "x" * 120 + "/long-name.txt": b"long\n",  # longer than tar's 100-byte name field
        "keep.txt": b"keep\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "link-to-a").symlink_to("docs/a.txt")
    return {name: len(data) for name, data in files.items()}


def setup_with(tmp_path: Path, **archive: object) -> Setup:
    """make_setup, with data_tree's files added to its data."""
    s = make_setup(tmp_path, **archive)
    data_tree(s.source)
    return s


def rewrite(s: Setup, **archive: object) -> None:
    """Change archive keys of the setup's config file."""
    sections = {
        "archive": {
            "sources": [str(s.source)],
            "destination": str(s.destination),
            "recipients_file": str(s.recipients),
            "prefix": "ua-test",
            **archive,
        },
        "agent": {"state_dir": str(s.state_dir)},
        "notify": {"enabled": False},
    }
    write_config(s.config, sections)


def newest(s: Setup) -> Path:
    return s.archives()[-1]


def doctor_lines(s: Setup) -> list[str]:
    """`usbagent doctor`'s lines about sources (the rest depends on the machine)."""
    proc = s.cli("doctor")
    return [line for line in proc.stdout.splitlines() if "sources:" in line]


# --- 5: a source that is a symlink -----------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"], ids=["link", "link-with-slash"])
def test_a_source_that_is_a_symlink_to_a_folder_stores_the_folder_as_named(
    tmp_path: Path, slash: str
) -> None:
    s = make_setup(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    sizes = data_tree(real)
    link = tmp_path / "data-link"
    link.symlink_to(real)
    rewrite(s, sources=[str(link) + slash], exclude=[])

    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    names = age_listing(newest(s), s.identity)
    base = member(link)
    assert f"{base}/docs/a.txt" in names and f"{base}/{'x' * 120}/long-name.txt" in names
    assert not any(n.startswith(member(real)) for n in names)  # stored as the user named it
    (recorded,) = s.last()["details"]["sources"]
    assert recorded == {"path": str(link), "members": len(names), "bytes": sum(sizes.values())}

    target = tmp_path / "restored"
    restored = s.cli("restore", str(newest(s)), "--identity", str(s.identity), "--to", str(target))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert (target / base / "docs" / "b.txt").read_bytes() == b"beta\n" * 1000
    inner = target / base / "link-to-a"  # symlinks inside the source stay symlinks
    assert inner.is_symlink() and inner.readlink() == Path("docs/a.txt")
    assert doctor_lines(s) == [f"ok       sources: {link}"]


def test_a_source_that_is_a_symlink_to_a_file_stores_the_file_as_named(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    link = tmp_path / "notes-link"
    link.symlink_to(s.source / "docs" / "b.txt")
    rewrite(s, sources=[str(link)])
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    assert age_listing(newest(s), s.identity) == [member(link)]
    (recorded,) = s.last()["details"]["sources"]
    assert recorded == {"path": str(link), "members": 1, "bytes": 5000}


def test_a_dangling_symlink_source_is_refused_naming_its_target(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    link = tmp_path / "data-link"
    link.symlink_to(tmp_path / "moved-away")
    rewrite(s, sources=[str(link)])
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"usbagent archive: source {link} is a symlink to {tmp_path / 'moved-away'}, "
        "which does not exist (fix the link, or archive.sources)"
    )
    assert s.files() == []


# --- 6: a source in the destination ----------------------------------------------------


@pytest.mark.parametrize("where", ["equal", "inside", "inside-via-link"])
def test_a_source_in_the_destination_is_refused_by_archive_and_doctor(
    tmp_path: Path, where: str
) -> None:
    s = make_setup(tmp_path)
    (s.destination / "mine").mkdir()
    (s.destination / "mine" / "f.txt").write_text("data\n")
    source = {
        "equal": s.destination,
        "inside": s.destination / "mine",
        "inside-via-link": tmp_path / "mine-link",
    }[where]
    if where == "inside-via-link":
        source.symlink_to(s.destination / "mine")
    rewrite(s, sources=[str(source)])
    before = s.files()

    proc = s.cli("archive")
    assert proc.returncode == 1
    how = "is" if where == "equal" else "is inside"
    real = f" (that is {s.destination / 'mine'})" if where == "inside-via-link" else ""
    message = (
        f"source {source}{real} {how} the destination {s.destination}, which is never "
        "archived: the archive would hold nothing of it"
    )
    fix = "move archive.destination out of it, or remove it from archive.sources"
    assert proc.stderr.strip() == f"usbagent archive: {message} ({fix})"
    assert s.files() == before  # nothing written
    assert s.last()["ok"] is False
    assert doctor_lines(s) == [f"PROBLEM  sources: {message}. Fix: {fix}"]
    status = s.cli("status", "--json")  # what monitoring sees before the next night
    assert status.returncode == 2
    (next_run,) = [c for c in json.loads(status.stdout)["checks"] if c["name"] == "next-run"]
    assert next_run["state"] == "CRITICAL" and f"{message} ({fix})" in next_run["message"]


def test_overlapping_sources_are_refused(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    link = tmp_path / "docs-link"
    link.symlink_to(s.source / "docs")
    rewrite(s, sources=[str(link), str(s.source)])
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert (
        f"sources {s.source} and {link} overlap ({s.source / 'docs'} is inside {s.source}): "
        f"its files would be stored twice (remove {link} from archive.sources)"
    ) in proc.stderr
    assert s.files() == []
    assert len(doctor_lines(s)) == 1 and doctor_lines(s)[0].startswith("PROBLEM  sources:")


# --- 7: the destination never ends up in the archive -------------------------------------


def test_a_destination_given_through_a_symlink_is_still_excluded(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    backups = s.source / "backups"
    backups.mkdir()
    dest_link = tmp_path / "dest-link"
    dest_link.symlink_to(backups)
    rewrite(s, destination=str(dest_link))
    for night in range(2):  # the second run finds the first archive inside the source
        (s.source / "docs" / "a.txt").write_text(f"night {night}\n")  # in the increment too
        proc = s.cli("archive")
        assert proc.returncode == 0, proc.stderr
    archives = sorted(p for p in backups.iterdir() if p.name.endswith(".age"))
    assert len(archives) == 2
    names = age_listing(archives[-1], s.identity)
    assert member(s.source / "docs" / "a.txt") in names
    assert not [n for n in names if "backups" in n]


def test_a_source_given_through_a_symlink_still_excludes_the_destination(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path, destination=tmp_path / "data" / "backups")
    link = tmp_path / "data-link"
    link.symlink_to(s.source)
    rewrite(s, sources=[str(link)], destination=str(s.destination))
    for night in range(2):
        (s.source / "docs" / "a.txt").write_text(f"night {night}\n")  # in the increment too
        proc = s.cli("archive")
        assert proc.returncode == 0, proc.stderr
    names = age_listing(newest(s), s.identity)
    assert f"{member(link)}/docs/a.txt" in names
    assert not [n for n in names if "backups" in n]


def test_the_source_root_excludes_the_destination_under_its_dot_names(tmp_path: Path) -> None:
    """sources = ["/"]: tar names members './tmp/...', so the exclude must be spelled so.

    Archiving the real '/' is out of the question in a test; the arguments computed for
    it are run by the real GNU tar on a small tree standing in for '/' (only --directory
    differs), which holds the destination.
    """
    root_source = Source(Path("/"), Path("/"))
    cmd = tar_command("tar", (root_source,), ("*.tmp",), Path("/var/backups"))
    assert "--exclude=./var/backups" in cmd and cmd[-2:] == ["--", "."]

    fake_root = tmp_path / "root"
    for name in ("var/backups/host-1.tar.zst.age", "var/lib/x", "etc/hostname", "a.tmp"):
        (fake_root / name).parent.mkdir(parents=True, exist_ok=True)
        (fake_root / name).write_text("x\n")
    cmd[cmd.index("--directory=/")] = f"--directory={fake_root}"
    tar = subprocess.run(cmd, capture_output=True, check=True)
    listed = subprocess.run(["tar", "-t"], input=tar.stdout, capture_output=True, check=True)
    assert listed.stdout.decode().split() == [
        "./",
        "./etc/",
        "./etc/hostname",
        "./var/",
        "./var/lib/",
        "./var/lib/x",
    ]


def test_a_destination_reached_by_a_bind_mount_fails_the_run_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    """A path that resolves elsewhere but is the destination: tar meets the partial itself."""
    need_root()
    s = make_setup(tmp_path)
    older = s.cli("archive")  # an archive from before the bind mount
    assert older.returncode == 0, older.stderr
    before = s.files()
    view = s.source / "view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(s.destination), str(view)], check=True)
    try:
        proc = s.cli("archive")
    finally:
        subprocess.run(["umount", str(view)], check=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"usbagent archive: the archive would contain itself: tar reached the destination as "
        f"{view} (a bind mount, or another path that does not resolve to it); exclude that "
        "path with archive.exclude, or move archive.destination; no archive was kept"
    )
    assert s.files() == before  # the older archive stays; nothing new, no partial
    rewrite(s, exclude=[str(view)])  # the fix it names works
    subprocess.run(["mount", "--bind", str(s.destination), str(view)], check=True)
    try:
        fixed = s.cli("archive")
    finally:
        subprocess.run(["umount", str(view)], check=True)
    assert fixed.returncode == 0, fixed.stderr
    assert not [n for n in age_listing(newest(s), s.identity) if "view/" in n]


# --- 8: absolute exclude patterns ------------------------------------------------------


def test_absolute_excludes_are_anchored_under_the_source(tmp_path: Path) -> None:
    s = setup_with(tmp_path)
    src = s.source
    rewrite(s, exclude=[f"{src}/docs", f"{src}/{'x' * 120}/*.txt", "*.tmp"])
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    names = set(age_listing(newest(s), s.identity))
    assert not [n for n in names if n.startswith(member(src / "docs") + "/")]
    assert member(src / "docs2" / "c.txt") in names  # anchored: not a prefix of a name
    assert member(src / "sub" / "docs" / "d.txt") in names  # anchored: not any tail
    assert member(src / ("x" * 120)) in names
    assert member(src / ("x" * 120) / "long-name.txt") not in names  # the glob part
    assert member(src / "keep.txt") in names


def test_a_wildcard_in_an_absolute_exclude_stays_within_one_folder(tmp_path: Path) -> None:
    """`/data/*/cache` names data/X/cache, as the shell would read it: GNU tar's default
    lets '*' match '/', which also excluded data/a/b/cache and every deeper file quietly."""
    s = setup_with(tmp_path)
    src = s.source
    for name in ("a.log", "sub/b.log", "a/cache/f", "a/b/cache/g"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("x\n")
    rewrite(s, exclude=[f"{src}/*.log", f"{src}/*/cache"])
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    names = set(age_listing(newest(s), s.identity))
    assert member(src / "a.log") not in names and member(src / "a" / "cache") not in names
    assert member(src / "sub" / "b.log") in names
    assert member(src / "a" / "b" / "cache" / "g") in names


def test_absolute_excludes_under_a_symlinked_source_with_glob_characters(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path)
    real = tmp_path / "da[t]a*"  # its own name must not act as a pattern
    real.mkdir()
    data_tree(real)
    link = tmp_path / "link[1]"
    link.symlink_to(real)
    rewrite(s, sources=[str(link)], exclude=[f"{link}/docs", f"{link}/sub/*"])
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    names = age_listing(newest(s), s.identity)
    assert [n for n in names if "docs" in n] == [
        f"{member(link)}/docs2",
        f"{member(link)}/docs2/c.txt",
    ]
    assert f"{member(link)}/sub" in names and f"{member(link)}/keep.txt" in names


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("/elsewhere/docs", "/elsewhere/docs is not inside any of archive.sources"),
        ("/", "'/' would exclude everything"),
        ("{src}/../x", "'.' and '..' are not allowed in an absolute pattern"),
    ],
)
def test_absolute_excludes_that_would_do_nothing_are_refused_at_load(
    tmp_path: Path, pattern: str, problem: str
) -> None:
    s = make_setup(tmp_path)
    rewrite(s, exclude=[pattern.format(src=s.source)])
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert f"usbagent: config {s.config}: archive.exclude: " in proc.stderr
    assert problem in proc.stderr
    assert s.files() == []


# --- 9: the prefix is one rule with archive names --------------------------------------


@pytest.mark.parametrize(
    "prefix", ["bäckup", "back up", "\uff42\uff41\uff43\uff4b\uff55\uff50", "host\u0661"]
)
def test_a_prefix_whose_archives_nothing_would_find_is_refused_at_load(
    tmp_path: Path, prefix: str
) -> None:
    s = make_setup(tmp_path)
    rewrite(s, prefix=prefix)
    for command in ("archive", "doctor"):
        proc = s.cli(command)
        assert proc.returncode != 0
        assert proc.stderr.strip().startswith(
            f"usbagent: config {s.config}: archive.prefix: may contain only ASCII letters, "
            f"digits, '-', '_' and '.', got {prefix!r}"
        )
    assert s.files() == []


# --- 10: every archive holds what was asked --------------------------------------------


def test_counts_per_source_are_recorded(tmp_path: Path) -> None:
    s = make_setup(tmp_path)  # its scratch.tmp stays, excluded
    sizes = data_tree(s.source)
    empty = tmp_path / "empty"
    empty.mkdir()
    rewrite(s, sources=[str(s.source), str(empty)], exclude=["*.tmp"])
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    names = age_listing(newest(s), s.identity)
    assert member(s.source / "scratch.tmp") not in names
    in_source = [n for n in names if n == member(s.source) or n.startswith(member(s.source) + "/")]
    details = s.last()["details"]
    assert details["sources"] == [
        {"path": str(s.source), "members": len(in_source), "bytes": sum(sizes.values())},
        {"path": str(empty), "members": 1, "bytes": 0},  # an empty folder is no failure
    ]
    assert {"archive", "size", "sha256"} <= details.keys()  # what status judges by
    assert f"{len(names)} members" in proc.stdout


@pytest.mark.parametrize("pattern", ["data", "d?ta", "*"])
def test_a_source_that_yields_nothing_fails_and_leaves_no_archive(
    tmp_path: Path, pattern: str
) -> None:
    s = make_setup(tmp_path)
    rewrite(s, exclude=[pattern])  # matches the source's own name: tar skips it whole
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        f"source {s.source} yielded nothing although it is not empty (all of it excluded by "
        "archive.exclude?); no archive was kept"
    )
    assert s.files() == []  # neither an archive, nor a sidecar, nor a .partial
    last = s.last()
    assert last["ok"] is False and "yielded nothing" in last["summary"]
