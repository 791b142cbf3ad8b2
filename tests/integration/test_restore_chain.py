"""`usbagent restore` of a chain (a full, then increments) made by GNU tar: every restore
point comes back as the source tree was that night, deletions and renames included.

The chains are made by the shell pipeline README describes (tar --listed-incremental |
zstd | age), restored by the real CLI, and compared with the source tree as it was at each
night: what exists, type, mode, mtime, content, symlink targets, hard links.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.archive_helpers import new_identity, usbagent
from tests.integration.chain_helpers import Chains, differences, standard_restore, tree
from tests.integration.tar_helpers import crafted_archive, dumpdir, entry, failures, write_sidecar

T0 = 1_700_000_000


def put(root: Path, name: str, text: str, mode: int = 0o644, mtime: int = T0) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))


def restore(
    chains: Chains, archive: Path, target: Path, *members: str
) -> subprocess.CompletedProcess[str]:
    return usbagent(
        "restore", str(archive), "--identity", str(chains.identity), "--to", str(target), *members
    )


def next_second() -> None:
    """tar compares times in whole seconds: a change in the same second as the last night's
    archive could be missed (as by any tar-based backup); the nights here are a second apart."""
    time.sleep(1.05)


def night0(d: Path) -> None:
    put(d, "a/f1", "one")
    put(d, "a/sub/f2", "two", 0o640)
    put(d, "a/sub/deep/f", "deep")
    put(d, "b/f3", "three", 0o755)
    put(d, "gone/x", "deleted with its folder")
    put(d, "gone/inner/y", "also")
    put(d, "file2dir", "a file, then a folder")
    put(d, "dir2file/z", "a folder, then a file")
    put(d, "h1", "hard-linked")
    os.link(d / "h1", d / "h2")
    (d / "lnk").symlink_to("a/f1")
    (d / "abs").symlink_to("/etc/hostname")
    put(d, "becomes-link", "a file, then a symlink")
    put(d, "x/only-x", "x")
    put(d, "y/only-y", "y")
    put(d, "old/kept", "old's content")
    put(d, "new/fresh", "new's content")
    put(d, "unchanged.txt", "never touched", 0o600)
    (d / "private").mkdir(mode=0o700)
    put(d, "private/key", "k", 0o600)
    (d / "b").chmod(0o750)


def night1(d: Path) -> None:
    """Renamed and moved folders, deletions, a file replaced by a folder and the reverse.

    New folders are made before any is deleted: a new folder given the inode of one deleted
    that night is taken by GNU tar for that folder renamed, and its own restore can then
    fail ("Cannot rename"; usbagent's does not), which the standard-tools test must avoid.
    """
    (d / "a").rename(d / "a2")
    (d / "b" / "moved").mkdir()
    (d / "a2" / "sub").rename(d / "b" / "moved" / "sub")
    (d / "file2dir").unlink()
    put(d, "file2dir/n", "now a folder")
    shutil.rmtree(d / "gone")
    shutil.rmtree(d / "dir2file")
    put(d, "dir2file", "now a file")
    (d / "lnk").unlink()
    put(d, "lnk", "a symlink, now a file")
    (d / "becomes-link").unlink()
    (d / "becomes-link").symlink_to("../outside/target")
    put(d, "b/f3", "three, changed", 0o600)
    os.link(d / "b" / "f3", d / "b" / "f3-link")
    (d / "h2").unlink()


def night2(d: Path) -> None:
    """Two folders swapped, a folder replaced by another one, a folder by a symlink."""
    (d / "x").rename(d / "t")
    (d / "y").rename(d / "x")
    (d / "t").rename(d / "y")
    shutil.rmtree(d / "old")
    (d / "new").rename(d / "old")
    shutil.rmtree(d / "b" / "moved" / "sub" / "deep")
    (d / "b" / "moved" / "sub" / "deep").symlink_to("../../f3")
    put(d, "a2/f1", "one, changed again", 0o644, T0 + 5)
    (d / "private").chmod(0o750)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chains:
    """Four nights: a full, two increments full of changes, an increment of no change."""
    c = Chains(tmp_path_factory.mktemp("chain"))
    night0(c.source)
    c.night(full=True)
    for change in (night1, night2):
        next_second()
        change(c.source)
        c.night()
    next_second()
    c.night()  # nothing changed
    return c


@pytest.mark.parametrize("night", range(4))
def test_each_restore_point_is_the_source_tree_of_its_night(
    chain: Chains, night: int, tmp_path: Path
) -> None:
    archive = chain.archives[night]
    proc = restore(chain, archive, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert differences(chain.states[night], tree(tmp_path / "out" / "data")) == {}
    if night:
        full = chain.archives[0].name
        assert f"(its chain: the full {full}, then {night} increments)" in proc.stdout
    assert not list((tmp_path / "out").rglob(".usbagent-restore-*"))


def test_the_states_differ_so_each_point_proves_something(chain: Chains) -> None:
    """Each night changed what the next restore point must show (else the test above would
    pass with the full alone)."""
    s0, s1, s2, s3 = chain.states
    assert "gone/x" in s0 and "gone/x" not in s1  # deleted with its folder
    assert s0["file2dir"][0] != s1["file2dir"][0]  # a file replaced by a folder
    assert "b/moved/sub/f2" in s1 and "a2/sub" not in s1  # moved
    assert s1["x/only-x"] == s0["x/only-x"] and "x/only-y" in s2  # swapped
    assert s2["old/fresh"] and "old/kept" not in s2  # a folder replaced by another
    assert s2 == s3


def test_the_standard_tools_restore_the_same_chain(chain: Chains, tmp_path: Path) -> None:
    """README's equivalent: each member in order through age, zstd and GNU tar, run in the
    target folder, gives what `usbagent restore` gives for night 1 (and the source)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert restore(chain, chain.archives[1], ours).returncode == 0
    standard_restore(chain.archives[:2], chain.identity, theirs)
    assert differences(tree(theirs / "data"), tree(ours / "data")) == {}
    assert differences(chain.states[1], tree(theirs / "data")) == {}


def test_gnu_tar_stops_at_a_folder_replaced_by_another_and_usbagent_does_not(
    chain: Chains, tmp_path: Path
) -> None:
    """Night 2 removed `old` and renamed `new` to `old`. GNU tar records the rename, and on
    extraction renames onto the `old` still there: "Directory not empty", it stops applying
    that folder's changes and exits 2. README says so; usbagent restore applies it."""
    with pytest.raises(subprocess.CalledProcessError):
        standard_restore(chain.archives[:3], chain.identity, tmp_path / "theirs")
    proc = restore(chain, chain.archives[2], tmp_path / "ours")
    assert proc.returncode == 0, proc.stderr
    assert differences(chain.states[2], tree(tmp_path / "ours" / "data")) == {}


def test_a_chain_with_a_missing_member_is_refused_and_nothing_is_written(
    chain: Chains, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for archive in chain.archives:
        shutil.copy(archive, folder)
    full, inc1, inc2, inc3 = (folder / a.name for a in chain.archives)
    inc1.unlink()
    target = tmp_path / "out"

    proc = restore(chain, inc3, target)

    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    fullstamp = full.name.split("-")[-1].removesuffix(".tar.zst.age")
    assert f"cannot restore {inc3.name}: its chain in {folder} is incomplete" in line
    assert f"level 1 (ua-test-*.inc1.{fullstamp}.tar.zst.age) is missing" in line
    assert "nothing was restored" in line
    assert not target.exists()

    full.unlink()
    proc = restore(chain, inc2, target)
    assert proc.returncode == 1
    assert f"level 0 ({full.name}) is missing; level 1" in proc.stderr
    assert not target.exists()

    proc = usbagent("restore", str(inc1), "--identity", str(chain.identity), "--to", str(target))
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_two_archives_of_one_level_are_refused(chain: Chains, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for archive in chain.archives[:3]:
        shutil.copy(archive, folder)
    inc1 = chain.archives[1].name
    stray = inc1.replace("T020000Z.inc1", "T030000Z.inc1")
    shutil.copy(folder / inc1, folder / stray)

    proc = restore(chain, folder / chain.archives[2].name, tmp_path / "out")

    assert proc.returncode == 1
    assert f"level 1 is there 2 times ({inc1}, {stray})" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_selected_members_come_back_as_they_were_at_the_point(
    chain: Chains, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    proc = restore(chain, chain.archives[2], target, "data/b", "/data/old/", "data/unchanged.txt")
    assert proc.returncode == 0, proc.stderr
    expected = {
        k: v
        for k, v in chain.states[2].items()
        if k in ("b", "old", "unchanged.txt") or k.startswith(("b/", "old/"))
    }
    assert differences(expected, tree(target / "data")) == {}


@pytest.mark.parametrize(
    ("night", "wanted"),
    [
        (1, "data/b/moved/sub"),  # moved there from a/sub (renamed from a by then)
        (1, "data/a2"),  # renamed from a
        (2, "data/x"),  # swapped with y
        (2, "data/old"),  # replaced by new, renamed
        (2, "data/b/moved/sub/f2"),
    ],
)
def test_selected_paths_that_were_renamed_come_back_whole(
    chain: Chains, night: int, wanted: str, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    proc = restore(chain, chain.archives[night], target, wanted)
    assert proc.returncode == 0, proc.stderr
    inner = wanted.removeprefix("data/")
    expected = {
        k: v for k, v in chain.states[night].items() if k == inner or k.startswith(inner + "/")
    }
    got = tree(target / "data")
    assert differences(expected, {k: v for k, v in got.items() if k in expected}) == {}
    on_the_way = {k for k in got if inner.startswith(k + "/")}
    assert set(got) == set(expected) | on_the_way  # nothing else, under no earlier name


def test_selected_members_deleted_by_a_later_night_are_reported(
    chain: Chains, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    proc = restore(chain, chain.archives[1], target, "data/gone", "data/x", "data/a")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"usbagent restore: {name!r} is not in the archive's chain, or deleted by then"
        for name in ("data/gone", "data/a")  # deleted; renamed to a2
    ]
    assert sorted(p.name for p in (target / "data").iterdir()) == ["x"]
    assert (target / "data" / "x" / "only-x").read_text() == "x"


def test_a_folder_that_is_not_empty_keeps_what_it_had(chain: Chains, tmp_path: Path) -> None:
    """What was in --to before stays as it was, even where the chain deleted or replaced
    that name: restore replaces, renames and removes only what it created itself."""
    target = tmp_path / "out"
    put(target, "data/gone/x", "the user's own file, named like one the chain deleted")
    put(target, "data/b/f3", "the user's f3")
    put(target, "data/mine.txt", "not in the backup")
    before = {p: (target / p).read_text() for p in ("data/gone/x", "data/b/f3", "data/mine.txt")}

    proc = restore(chain, chain.archives[2], target)

    assert proc.returncode == 1
    failed = failures(proc.stderr)
    assert failed == {
        "data/b/f3": "already exists in the target folder (not overwritten)",
        "data/gone/x": "already exists in the target folder (not overwritten)",
        "data/b/f3-link": "hard link to 'data/b/f3', which is not a regular file this restore "
        "created",
    }, proc.stderr
    assert not (target / "data" / "gone" / "inner").exists()  # restored, then deleted
    assert {p: (target / p).read_text() for p in before} == before
    assert (target / "data" / "old" / "fresh").read_text() == "new's content"


# --- verify ----------------------------------------------------------------------------


def copied(chain: Chains, folder: Path) -> list[Path]:
    folder.mkdir()
    for archive in chain.archives:
        shutil.copy(archive, folder)
        shutil.copy(archive.with_name(archive.name + ".sha256"), folder)
    return [folder / a.name for a in chain.archives]


def test_verify_fails_every_point_whose_chain_is_incomplete(chain: Chains, tmp_path: Path) -> None:
    full, inc1, inc2, inc3 = copied(chain, tmp_path / "copy")
    proc = usbagent("verify", str(tmp_path / "copy"))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "4 checked, 0 failed (checksums only)"

    inc1.unlink()
    proc = usbagent("verify", str(tmp_path / "copy"))

    assert proc.returncode == 1
    fullstamp = full.name.split("-")[-1].removesuffix(".tar.zst.age")
    missing = f"level 1 (ua-test-*.inc1.{fullstamp}.tar.zst.age) is missing"
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert failed == [
        f"FAILED  {a}: cannot be restored, its chain is incomplete: {missing}; put the missing "
        "archives back beside it (from a stick or another copy)"
        for a in (inc2, inc3)
    ]
    assert f"OK      {full}: checksum ok" in proc.stdout


def test_verify_of_one_point_reads_every_member_of_its_chain(chain: Chains, tmp_path: Path) -> None:
    full, inc1, inc2, _ = copied(chain, tmp_path / "copy")
    proc = usbagent("verify", str(inc2), "--identity", str(chain.identity))
    assert proc.returncode == 0, proc.stdout
    for archive in (inc2, full, inc1):
        assert f"OK      {archive}: checksum ok, decrypted and read" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "3 checked, 0 failed"

    # the full damaged, its sidecar made to match: only reading it finds out
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0x01
    full.write_bytes(bytes(data))
    proc = usbagent("verify", str(inc2))
    assert proc.returncode == 1
    assert f"FAILED  {full}: checksum mismatch" in proc.stdout
    write_sidecar(full)
    proc = usbagent("verify", str(inc2), "--identity", str(chain.identity))
    assert proc.returncode == 1
    assert f"FAILED  {full}: checksum ok, but decryption failed" in proc.stdout
    assert f"OK      {inc2}: checksum ok, decrypted and read" in proc.stdout


def test_a_rename_the_chain_cannot_apply_fails_the_restore(tmp_path: Path) -> None:
    """GNU tar (1.34) does not apply --transform to a dumpdir's rename records: members say
    `named/a2`, the rename says `data/a` -> `data/a2`. Neither tar nor usbagent can apply it;
    usbagent says so, instead of a quiet success without the folder's unchanged files."""
    c = Chains(tmp_path)
    put(c.source, "a/f", "kept since the full")
    c.night(full=True, transform="s,^data,named,")
    next_second()
    (c.source / "a").rename(c.source / "a2")
    c.night(transform="s,^data,named,")

    proc = restore(c, c.archives[1], tmp_path / "out")

    assert proc.returncode == 1
    failed = failures(proc.stderr)
    assert failed["data/a"].endswith(
        "not moved to 'data/a2' (renamed in " + c.archives[1].name + "): not there"
    )
    assert not (tmp_path / "out" / "named" / "a2" / "f").exists()


def test_renames_in_the_order_gnu_tar_lists_them_when_an_inode_was_reused(
    tmp_path: Path,
) -> None:
    """`rm -r old; mv new old; rm file; mkdir file` where the new `file` folder got the inode
    of the deleted `old`: GNU tar 1.34 wrote the renames below (captured from a real run):
    `new` onto `old` before `old` (by inode: now `file`) is renamed away, and `new -> old`
    twice. Applied as listed, `old` would lose its files; restore renames `old` away first."""
    identity = tmp_path / "id.txt"
    new_identity(identity)
    full = crafted_archive(
        tmp_path,
        identity,
        [
            dumpdir("data/", "Dnew", "Dold", "Yfile"),
            dumpdir("data/new/", "Yfresh"),
            dumpdir("data/old/", "Ykept"),
            entry("data/file", data=b"a file\n"),
            entry("data/new/fresh", data=b"new's\n"),
            entry("data/old/kept", data=b"old's\n"),
        ],
        stamp="20260101T000000Z",
    )
    renames = ["Rdata/new", "Tdata/old", "Rdata/old", "Tdata/file", "Rdata/new", "Tdata/old"]
    increment = crafted_archive(
        tmp_path,
        identity,
        [
            dumpdir("data/", "Dfile", "Dold", *renames),
            dumpdir("data/file/", "Yinner"),
            dumpdir("data/old/", "Nfresh"),
            entry("data/file/inner", data=b"now a folder\n"),
        ],
        stamp="20260102T000000Z.inc1.20260101T000000Z",
    )
    target = tmp_path / "out"
    proc = usbagent("restore", str(increment), "--identity", str(identity), "--to", str(target))
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "data", "data/file", "data/file/inner", "data/old", "data/old/fresh"
    ]  # fmt: skip
    assert (target / "data" / "old" / "fresh").read_text() == "new's\n"
    assert full.exists()


def test_a_member_restore_into_a_full_folder_leaves_the_rest_alone(
    chain: Chains, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    put(target, "data/mine.txt", "not in the backup")
    put(target, "photos/p.jpg", "the user's")

    proc = restore(chain, chain.archives[2], target, "data/x", "data/a2")

    assert proc.returncode == 0, proc.stderr
    assert (target / "data" / "mine.txt").read_text() == "not in the backup"
    assert (target / "photos" / "p.jpg").read_text() == "the user's"
    assert (target / "data" / "x" / "only-y").read_text() == "y"  # swapped in night 2
    assert (target / "data" / "a2" / "f1").read_text() == "one, changed again"
    assert sorted(p.name for p in (target / "data").iterdir()) == ["a2", "mine.txt", "x"]
