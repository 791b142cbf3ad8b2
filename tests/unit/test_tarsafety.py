"""Which tar members restore may create, from the member alone (usbagent.tarsafety)."""

from __future__ import annotations

import tarfile

import pytest

from usbagent.tarsafety import Entry, classify


def member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_600_000_000.5
    return info


@pytest.mark.parametrize(
    "target", ["a/b", "../x", "../../x/./y", "..", "here/here/../..", "/etc", "/"]
)
def test_symlinks_keep_their_target_whatever_it_is(target: str) -> None:
    """Created last and never followed (usbagent.extract), so any target is restored as is."""
    assert classify(member("d/l", tarfile.SYMTYPE, target)) == Entry(
        ("d", "l"), "symlink", 0o644, 1_600_000_000_500_000_000, link=target
    )


def test_names_are_normalised_and_modes_made_safe() -> None:
    got = classify(member("./data//docs/./a.txt", mode=0o6777))
    assert got == Entry(("data", "docs", "a.txt"), "file", 0o755, 1_600_000_000_500_000_000)
    assert classify(member("private", mode=0o400)) == Entry(
        ("private",), "file", 0o600, 1_600_000_000_500_000_000
    )
    folder = classify(member("d/", tarfile.DIRTYPE, mode=0o500))
    assert isinstance(folder, Entry) and folder.mode == 0o700 and folder.parts == ("d",)
    assert classify(member("./", tarfile.DIRTYPE)) == Entry(
        (), "dir", 0o744, 1_600_000_000_500_000_000
    )
    link = classify(member("x/h", tarfile.LNKTYPE, "./x//a"))
    assert isinstance(link, Entry) and link.link_parts == ("x", "a")


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (member("/etc/passwd"), "absolute path"),
        (member("a/../../b"), "'..' in the path"),
        (member(".."), "'..' in the path"),
        (member("./"), "member has no name"),
        (member("null", tarfile.CHRTYPE), "device file"),
        (member("sda", tarfile.BLKTYPE), "device file"),
        (member("p", tarfile.FIFOTYPE), "fifo"),
        (member("v", b"V"), "unsupported member type b'V'"),
        (member("h", tarfile.LNKTYPE, "/etc/shadow"), "hard link to the absolute path /etc/shadow"),
        (
            member("h", tarfile.LNKTYPE, "a/../../x"),
            "hard link pointing outside the target folder (a/../../x)",
        ),
        (member("h", tarfile.LNKTYPE, "./"), "hard link without a source"),
        (member("s", tarfile.SYMTYPE, ""), "symlink with an empty target"),
    ],
)
def test_refused_members(info: tarfile.TarInfo, reason: str) -> None:
    assert classify(info) == reason
