"""`usbagent restore` on crafted archives: nothing outside `--to` changes, ever.

Each archive is written on the fly with tarfile, compressed and encrypted to a real age key,
and restored by the real CLI. A snapshot of the tree around the target (content, mode, mtime,
link count) taken before must equal the one taken after.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.archive_helpers import new_identity, usbagent, wait_for
from tests.integration.tar_helpers import (
    Member,
    archive_with_a_large_file,
    crafted_archive,
    entry,
    failures,
    restore,
    snapshot,
    write_sidecar,
)

OLD = 1_000_000_000  # 2001-09-09: an mtime a hostile archive would like to set


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, identity, target): the target is three levels below root (`root/T/u/inner`),
    with a victim file next to it and one at the top."""
    identity = tmp_path / "id.txt"
    new_identity(identity)
    target = tmp_path / "T" / "u" / "inner"
    target.mkdir(parents=True)
    for victim in (tmp_path / "victim.txt", tmp_path / "T" / "u" / "victim.txt"):
        victim.write_text("do not touch\n")
        os.utime(victim, (1_700_000_000, 1_700_000_000))
    return tmp_path, identity, target


def assert_untouched(before: dict[str, tuple[object, ...]], root: Path, target: Path) -> None:
    after = snapshot(root, target)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"restore changed paths outside the target: {sorted(changed)}"


def symlink_chain(levels_up: int) -> tuple[list[Member], str]:
    """The CVE-2025-4517 pattern: symlinks to long folder names nest until the resolved path
    is longer than PATH_MAX, where os.path.realpath (and so tarfile's filter) stops resolving;
    the returned `escape` link then climbs `levels_up` levels above the target."""
    long = "d" * 240
    steps = "abcdefghijklmnop"
    members = []
    path = ""
    for step in steps:
        members.append(entry(f"{path}{long}", tarfile.DIRTYPE))
        members.append(entry(f"{path}{step}", tarfile.SYMTYPE, long))
        path += long + "/"
    deep = "/".join(steps) + "/" + "l" * 250
    members.append(entry(deep, tarfile.SYMTYPE, "../" * len(steps)))
    members.append(entry("escape", tarfile.SYMTYPE, deep + "/.." * levels_up))
    return members, deep


def test_nested_symlink_chain_cannot_write_above_the_target(
    world: tuple[Path, Path, Path],
) -> None:
    root, identity, target = world
    members, deep = symlink_chain(3)
    members.append(entry("escape/pwned.txt", data=b"written through the chain\n"))
    members.append(entry("after.txt", data=b"still restored\n"))
    archive = crafted_archive(root, identity, members)
    before = snapshot(root, target)

    proc = restore(archive, identity, target)

    assert proc.returncode == 1, proc.stderr
    assert_untouched(before, root, target)
    failed = failures(proc.stderr)
    # `escape/pwned.txt` made a real folder first; the link, created last, finds it there
    assert failed["escape"] == "already exists in the target folder (not overwritten)"
    assert "'a' in the target folder is a symlink or not a folder" in failed[deep]
    assert (target / "after.txt").read_text() == "still restored\n"
    assert (target / "a").readlink() == Path("d" * 240)  # harmless links are restored
    assert (target / "escape" / "pwned.txt").is_file()  # a real folder inside the target
    assert not (target / "escape").is_symlink()
    assert f"{len(failed)} of {len(members)} members not restored" in proc.stderr


def test_hard_links_cannot_reach_or_retime_files_outside(world: tuple[Path, Path, Path]) -> None:
    root, identity, target = world
    victim = root / "victim.txt"
    inside_alias = target / "pre-existing.txt"  # the user's own hard link to a file outside
    os.link(victim, inside_alias)
    chain, _ = symlink_chain(3)
    members = [
        *chain,
        entry("retime", tarfile.LNKTYPE, "escape/victim.txt", mtime=OLD),
        entry("ok.txt", data=b"mine\n", mtime=1_650_000_000),
        entry("good-link", tarfile.LNKTYPE, "ok.txt", mtime=OLD),
        entry("dotdot", tarfile.LNKTYPE, "../../../victim.txt", mtime=OLD),
        entry("absolute", tarfile.LNKTYPE, str(victim), mtime=OLD),
        entry("via-dotdot", tarfile.LNKTYPE, "sub/../../victim.txt", mtime=OLD),
        entry("up", tarfile.SYMTYPE, "."),
        entry("via-symlink", tarfile.LNKTYPE, "up/ok.txt", mtime=OLD),
        entry("to-symlink", tarfile.LNKTYPE, "up", mtime=OLD),
        entry("folder", tarfile.DIRTYPE),
        entry("to-folder", tarfile.LNKTYPE, "folder", mtime=OLD),
        entry("to-theirs", tarfile.LNKTYPE, "pre-existing.txt", mtime=OLD),
        entry("pre-existing.txt", data=b"overwrite\n", mtime=OLD),
        entry("dotdot", data=b"regular member named like the refused link\n", mtime=OLD),
    ]
    archive = crafted_archive(root, identity, members)
    before = snapshot(root, target)
    alias_before = inside_alias.stat()

    proc = restore(archive, identity, target)

    assert proc.returncode == 1
    assert_untouched(before, root, target)
    assert victim.read_text() == "do not touch\n" and victim.stat().st_mtime == 1_700_000_000
    assert inside_alias.stat() == alias_before  # not overwritten, not re-timed
    failed = failures(proc.stderr)
    assert failed["absolute"] == f"hard link to the absolute path {victim}"
    assert failed["via-dotdot"].startswith("hard link pointing outside the target folder")
    for name in ("retime", "via-symlink", "to-symlink", "to-folder", "to-theirs"):
        assert "which is not a regular file this restore created" in failed[name], name
    assert failed["pre-existing.txt"] == "already exists in the target folder (not overwritten)"
    good = target / "good-link"
    assert good.read_bytes() == b"mine\n"
    assert good.stat().st_ino == (target / "ok.txt").stat().st_ino
    assert good.stat().st_mtime == 1_650_000_000  # the link did not re-time its source
    assert (target / "dotdot").read_bytes().startswith(b"regular member")


def test_symlinks_are_never_written_through(world: tuple[Path, Path, Path]) -> None:
    root, identity, target = world
    outside = root / "T" / "u"
    (target / "theirs").symlink_to(outside)  # a symlink already in the target: not followed
    members = [
        entry("out", tarfile.SYMTYPE, "../x"),
        entry("out/file.txt", data=b"a folder, not through the link\n"),
        entry("inner-link", tarfile.SYMTYPE, "sub"),
        entry("inner-link/file.txt"),  # arrives before the link exists: a real folder
        entry("sub", tarfile.DIRTYPE),
        entry("abs", tarfile.SYMTYPE, str(outside)),
        entry("abs/victim.txt", data=b"overwrite\n"),
        entry("theirs/victim.txt", data=b"overwrite\n"),
        entry("theirs", tarfile.DIRTYPE),
        entry("sub/rel", tarfile.SYMTYPE, "../sub"),  # climbs, but stays inside: restored
        entry("sub/rel/x.txt"),
    ]
    archive = crafted_archive(root, identity, members)
    before = snapshot(root, target)

    proc = restore(archive, identity, target)

    assert proc.returncode == 1
    assert_untouched(before, root, target)
    failed = failures(proc.stderr)
    assert failed["out"] == "already exists in the target folder (not overwritten)"
    assert failed["abs"] == "already exists in the target folder (not overwritten)"
    assert failed["inner-link"] == "already exists in the target folder (not overwritten)"
    assert "'theirs' in the target folder is a symlink" in failed["theirs/victim.txt"]
    assert failed["theirs"] == "already exists in the target folder (not overwritten)"
    assert failed["sub/rel"] == "already exists in the target folder (not overwritten)"
    assert (target / "out" / "file.txt").is_file() and not (target / "out").is_symlink()
    assert (target / "abs" / "victim.txt").read_bytes() == b"overwrite\n"  # inside, harmless
    assert (target / "sub" / "rel" / "x.txt").is_file()


def test_symlinks_come_back_as_they_were_and_are_never_followed(
    world: tuple[Path, Path, Path],
) -> None:
    """A backup of /etc holds links like localtime -> /usr/share/zoneinfo/UTC: restore makes
    them as stored (absolute, climbing, chained), and writes nothing through any of them."""
    root, identity, target = world
    outside = root / "T" / "u"
    links = {
        "etc/localtime": "/usr/share/zoneinfo/UTC",
        "abs": str(outside),
        "up": "../../..",
        "etc/chain": "../up/../..",
    }
    members = [
        entry("etc", tarfile.DIRTYPE),
        entry("etc/hostname", data=b"host\n"),
        *(entry(name, tarfile.SYMTYPE, link) for name, link in links.items()),
    ]
    archive = crafted_archive(root, identity, members)
    before = snapshot(root, target)

    proc = restore(archive, identity, target)

    assert proc.returncode == 0, proc.stderr
    assert_untouched(before, root, target)
    for name, link in links.items():
        assert (target / name).readlink() == Path(link), name
    assert (target / "etc" / "hostname").read_bytes() == b"host\n"


def test_devices_fifos_odd_types_names_and_duplicates(world: tuple[Path, Path, Path]) -> None:
    root, identity, target = world
    outside = root / f"ua-escape-{secrets.token_hex(4)}"
    members = [
        entry("../escaped.txt"),
        entry("a/../../escaped2.txt"),
        entry(str(outside)),
        entry("null", tarfile.CHRTYPE),
        entry("disk", tarfile.BLKTYPE),
        entry("pipe", tarfile.FIFOTYPE),
        entry("volume", b"V"),
        entry("./"),
        entry("dup.txt", data=b"first\n"),
        entry("dup.txt", data=b"second\n"),
        entry("./dup.txt", data=b"third\n"),
        entry("folder", tarfile.DIRTYPE),
        entry("folder/", tarfile.DIRTYPE),
        entry("contiguous", tarfile.CONTTYPE, data=b"a regular file\n"),
    ]
    archive = crafted_archive(root, identity, members)
    before = snapshot(root, target)

    proc = restore(archive, identity, target)

    assert proc.returncode == 1
    assert_untouched(before, root, target)
    assert not outside.exists()
    failed = failures(proc.stderr)
    assert failed == {
        "../escaped.txt": "'..' in the path",
        "a/../../escaped2.txt": "'..' in the path",
        str(outside): "absolute path",
        "null": "device file",
        "disk": "device file",
        "pipe": "fifo",
        "volume": "unsupported member type b'V'",
        "./": "member has no name",
        "dup.txt": "appears twice in the archive; the first one was restored",
        "./dup.txt": "appears twice in the archive; the first one was restored",
    }
    assert "10 of 14 members not restored" in proc.stderr
    assert (target / "dup.txt").read_bytes() == b"first\n"
    assert (target / "contiguous").read_bytes() == b"a regular file\n"
    assert sorted(p.name for p in target.iterdir()) == ["contiguous", "dup.txt", "folder"]


def test_every_member_that_can_be_restored_is(world: tuple[Path, Path, Path]) -> None:
    """Issue 9 item 18: a name the filesystem rejects fails alone, the rest is restored,
    each failure is named with its reason and the exit status says how many."""
    root, identity, target = world
    deep = "/".join(["p" * 250] * 20)  # 5 KB path: longer than PATH_MAX, each part fine
    members = [
        entry("first.txt"),
        entry("n" * 300 + ".txt"),
        entry("docs/" + "m" * 256),
        entry(f"{deep}/deep.txt", data=b"deep\n"),
        entry("docs/last.txt", data=b"last\n"),
    ]
    archive = crafted_archive(root, identity, members)

    proc = restore(archive, identity, target)

    assert proc.returncode == 1
    assert failures(proc.stderr) == {
        "n" * 300 + ".txt": "File name too long",
        "docs/" + "m" * 256: "File name too long",
    }
    assert "2 of 5 members not restored" in proc.stderr
    assert "restored 3 members" in proc.stdout
    assert (target / "first.txt").is_file()
    assert (target / "docs" / "last.txt").read_bytes() == b"last\n"
    fd = os.open(target, os.O_RDONLY)
    for part in deep.split("/"):
        fd, old = os.open(part, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    assert os.stat("deep.txt", dir_fd=fd).st_size == 5
    os.close(fd)


def test_modes_and_times_are_restored_safely(world: tuple[Path, Path, Path]) -> None:
    root, identity, target = world
    members = [
        entry("ro", tarfile.DIRTYPE, mode=0o555, mtime=1_500_000_000),
        entry("ro/file.txt", mode=0o4777, mtime=1_400_000_000),
        entry("ro/link", tarfile.SYMTYPE, "file.txt", mtime=1_300_000_000),
        entry("private.txt", mode=0o400),
    ]
    archive = crafted_archive(root, identity, members)

    proc = restore(archive, identity, target)

    assert proc.returncode == 0, proc.stderr
    assert "restored 4 members" in proc.stdout
    folder, file = (target / "ro").stat(), (target / "ro" / "file.txt").stat()
    assert stat.S_IMODE(folder.st_mode) == 0o755 and folder.st_mtime == 1_500_000_000
    assert stat.S_IMODE(file.st_mode) == 0o755 and file.st_mtime == 1_400_000_000  # no setuid
    assert (target / "ro" / "link").lstat().st_mtime == 1_300_000_000
    assert stat.S_IMODE((target / "private.txt").stat().st_mode) == 0o600
    assert not [p for p in target.rglob(".usbagent-restore-*")]


def test_a_truncated_archive_restores_what_it_can_and_no_partial_file(
    world: tuple[Path, Path, Path],
) -> None:
    root, identity, target = world
    big = os.urandom(3 * 1024 * 1024)
    members = [entry("small.txt"), entry("big.bin", data=big), entry("later.txt")]
    archive = crafted_archive(root, identity, members)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # cut inside big.bin
    write_sidecar(archive)

    proc = restore(archive, identity, target)

    assert proc.returncode == 1
    assert "the archive could not be read to its end" in proc.stderr
    assert (target / "small.txt").read_bytes() == b"payload\n"
    assert sorted(p.name for p in target.iterdir()) == ["small.txt"]  # no big.bin, no temp


def test_verify_fails_an_archive_restore_would_not_restore_whole(
    world: tuple[Path, Path, Path],
) -> None:
    root, identity, _ = world
    members = [entry("ok.txt"), entry("../up.txt"), entry("pipe", tarfile.FIFOTYPE)]
    archive = crafted_archive(root, identity, members)
    assert usbagent("verify", str(archive)).returncode == 0  # the checksum alone is fine
    proc = usbagent("verify", str(archive), "--identity", str(identity))
    assert proc.returncode == 1
    assert (
        f"FAILED  {archive}: checksum ok, but restore would refuse 2 of its 3 members: "
        "'../up.txt' ('..' in the path), 'pipe' (fifo)"
    ) in proc.stdout


def test_sigterm_mid_file_leaves_no_file_behind(world: tuple[Path, Path, Path]) -> None:
    """Killed while writing a file: neither it nor its temporary stays in the target."""
    root, identity, target = world
    archive = archive_with_a_large_file(root, identity, "big.bin", 4 * 1024**3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "usbagent", "restore", str(archive), "--identity", str(identity),
         "--to", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: any(target.glob(".usbagent-restore-*")), 60, "the temporary file")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "usbagent restore: interrupted" in stderr
    assert sorted(p.name for p in target.iterdir()) == ["first.txt"]
