"""Tally: members and bytes per source, read from GNU tar's own output in any pieces."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from usbagent.tarstream import SourceCount, Tally, TarStreamError, _number, yielded_nothing


def gnu_tar(root: Path, *names: str) -> bytes:
    cmd = ["tar", "--create", "--file=-", f"--directory={root}", "--format=gnu", "--", *names]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two sources with a long name, a long symlink target, a hard link and empty files."""
    a, b = tmp_path / "a", tmp_path / "b"
    deep = a / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "file.bin").write_bytes(b"x" * 70_000)
    (a / "empty").write_bytes(b"")
    (a / "long-link").symlink_to("t" * 150)
    (a / "hard").hardlink_to(deep / "file.bin")
    b.mkdir()
    (b / "one").write_bytes(b"1" * 513)
    return tmp_path


def expected(stream: bytes, roots: list[str]) -> list[SourceCount]:
    """What Python's tarfile reads from the same stream, as counts."""
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        members = tar.getmembers()
    out = []
    for root in roots:
        mine = [m for m in members if m.name == root or m.name.startswith(root + "/")]
        out.append(SourceCount(root, len(mine), sum(m.size for m in mine if m.isreg())))
    return out


@pytest.mark.parametrize("piece", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_counts_match_tarfile_whatever_the_piece_size(tree: Path, piece: int) -> None:
    stream = gnu_tar(tree, "a", "b")
    tally = Tally([("a", "a"), ("b", "b")], "x.partial")
    view = memoryview(stream)
    for start in range(0, len(stream), piece):
        tally.feed(view[start : start + piece])
    counts = list(tally.counts())
    assert counts == expected(stream, ["a", "b"])
    assert counts == [SourceCount("a", 7, 70_000), SourceCount("b", 2, 513)]
    assert tally.own is None


def test_the_archive_being_written_is_noticed_under_any_name(tree: Path) -> None:
    own = "host-20261201T000000Z.tar.zst.age.partial"
    (tree / "b" / "sub").mkdir()
    (tree / "b" / "sub" / own).write_bytes(b"")
    (tree / "b" / ("x" + own)).write_bytes(b"")  # a longer name ending the same: not it
    tally = Tally([("b", "b")], own)
    tally.feed(memoryview(gnu_tar(tree, "b")))
    assert tally.own == f"b/sub/{own}"


def test_the_root_folder_counts_its_dot_names(tree: Path) -> None:
    stream = gnu_tar(tree / "b", ".")
    tally = Tally([("/", ".")], "x.partial")
    tally.feed(memoryview(stream))
    assert tally.counts() == (SourceCount("/", 2, 513),)


def test_anything_but_a_gnu_tar_stream_fails_loudly(tree: Path) -> None:
    stream = bytearray(gnu_tar(tree, "b"))
    stream[257:263] = b"xxxxxx"  # the first header's magic
    with pytest.raises(TarStreamError, match="no GNU tar header at byte 0"):
        Tally([("b", "b")], "x.partial").feed(memoryview(bytes(stream)))


def test_sizes_beyond_octal_use_base_256() -> None:
    assert _number(b"00000001750\0") == 1000
    assert _number(b"\x80" + (9 * 1024**3).to_bytes(11, "big")) == 9 * 1024**3


def test_a_source_with_content_must_yield_more_than_itself() -> None:
    def count(members: int) -> SourceCount:
        return SourceCount("/d", members, 0)

    assert yielded_nothing(count(1), is_dir=True, has_entries=True)
    assert yielded_nothing(count(0), is_dir=True, has_entries=True)
    assert not yielded_nothing(count(2), is_dir=True, has_entries=True)
    assert not yielded_nothing(count(1), is_dir=True, has_entries=False)  # an empty folder
    assert yielded_nothing(count(0), is_dir=False, has_entries=False)  # a file, excluded
    assert not yielded_nothing(count(1), is_dir=False, has_entries=False)


def test_an_increment_is_hollow_only_when_a_folder_source_lacks_its_own_listing() -> None:
    """An unchanged night: the folder yields its listing (one 'D' member) and an unchanged
    file nothing; both are right. A folder source without even its listing is not there."""

    def count(members: int) -> SourceCount:
        return SourceCount("/data", members, 0)

    assert not yielded_nothing(count(1), is_dir=True, has_entries=True, increment=True)
    assert not yielded_nothing(count(0), is_dir=False, has_entries=False, increment=True)
    assert yielded_nothing(count(0), is_dir=True, has_entries=True, increment=True)
    assert yielded_nothing(count(0), is_dir=True, has_entries=False, increment=True)
