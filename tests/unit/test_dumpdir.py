"""GNU tar's dumpdirs (the data of incremental 'D' members) parsed and checked, and what a
selection of MEMBERs needs from the archives before a rename (usbagent.dumpdir,
usbagent.incremental's pure parts)."""

from __future__ import annotations

import tarfile

import pytest

from usbagent import dumpdir
from usbagent.dumpdir import Dumpdir, Rename, TempFolder
from usbagent.incremental import Scope, earlier
from usbagent.tarsafety import Entry, classify

# As GNU tar 1.34 wrote them (tar -g, see tests/integration/test_restore_chain.py)
RENAMES = b"Da2\0Db\0Yfile\0Nold\0Rdata/a\0Tdata/a2\0Rdata/a2/sub\0Tdata/b/moved/sub\0\0"
SWAP = b"Da\0Db\0Xd\0Rd/b\0T\0Rd/a\0Td/b\0R\0Td/a\0\0"


def test_entries_and_renames_as_gnu_tar_writes_them() -> None:
    parsed = dumpdir.parse(RENAMES)
    assert parsed == Dumpdir(
        {"a2": "D", "b": "D", "file": "Y", "old": "N"},
        (
            Rename(("data", "a"), ("data", "a2")),
            Rename(("data", "a2", "sub"), ("data", "b", "moved", "sub")),
        ),
    )
    assert dumpdir.parse(b"\0") == Dumpdir({}, ())  # an empty folder
    assert dumpdir.parse(b"") == Dumpdir({}, ())


def test_a_swap_goes_through_a_temporary_name() -> None:
    parsed = dumpdir.parse(SWAP)
    assert isinstance(parsed, Dumpdir)
    assert parsed.renames == (
        TempFolder(("d",)),
        Rename(("d", "b"), ()),
        Rename(("d", "a"), ("d", "b")),
        Rename((), ("d", "a")),
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"Rdata/a\0Tdata/a2", "dumpdir is truncated"),
        (b"R../../etc\0Tdata/x\0\0", "rename source '../../etc' has '..' in the path"),
        (b"Rdata/a\0T/etc/cron.d\0\0", "rename target '/etc/cron.d' is an absolute path"),
        (b"Rdata/a\0Ydata/b\0\0", "a rename (R) without its target (T)"),
        (b"Rdata/a\0T\0\0", "to or from a temporary folder no X record made"),
        (b"X..\0R\0Td\0\0", "temporary folder '..' has '..' in the path"),
        (b"X.\0R\0T\0\0", "renames nothing to nothing"),
        (b"Rdata/a\0T.\0\0", "renames the target folder itself"),
        (b"Ya/b\0\0", "lists 'a/b', which is not a name in the folder"),
        (b"Y..\0\0", "lists '..'"),
        (b"Q x\0\0", "a record of unknown type 'Q'"),
    ],
)
def test_a_crafted_or_damaged_dumpdir_is_refused(data: bytes, problem: str) -> None:
    result = dumpdir.parse(data)
    assert isinstance(result, str) and problem in result
    assert result.startswith("dumpdir ")


def test_dumpdir_members_are_folders_with_data() -> None:
    info = tarfile.TarInfo("data/a/")
    info.type, info.mode, info.mtime, info.size = b"D", 0o750, 1_600_000_000, 12
    assert classify(info) == Entry(("data", "a"), "dir", 0o750, 1_600_000_000 * 10**9, dumpdir=True)
    info.size = 2**40
    assert classify(info) == "dumpdir larger than 256 MiB"


def p(text: str) -> tuple[str, ...]:
    return tuple(text.split("/"))


def test_a_selection_asks_the_archives_before_for_what_was_renamed_into_it() -> None:
    renames = dumpdir.parse(RENAMES)
    assert isinstance(renames, Dumpdir)
    # b/moved/sub was a2/sub, which was a/sub before the same night's first rename
    before = earlier(Scope((p("data/b/moved/sub"),)), [renames])
    assert set(before.wanted) == {p("data/b/moved/sub"), p("data/a2/sub"), p("data/a/sub")}
    # a selected folder that a folder was moved into needs that folder by its old name
    before = earlier(Scope((p("data/b"),)), [renames])
    assert set(before.wanted) == {p("data/b"), p("data/a2/sub"), p("data/a/sub")}
    # a selection nothing was renamed into stays as it is
    assert earlier(Scope((p("data/file"),)), [renames]) == Scope((p("data/file"),))
    assert earlier(Scope(), [renames]) == Scope()  # everything


def test_a_swap_maps_each_side_to_the_other() -> None:
    swap = dumpdir.parse(SWAP)
    assert isinstance(swap, Dumpdir)
    assert set(earlier(Scope((p("d/a/f"),)), [swap]).wanted) == {p("d/a/f"), p("d/b/f")}


def test_scope_selects_below_and_leads_to_above() -> None:
    scope = Scope((p("data/b"),))
    assert scope.selects(p("data/b")) and scope.selects(p("data/b/x"))
    assert not scope.selects(p("data")) and scope.leads_to(p("data"))
    assert scope.leads_to(()) and not scope.touches(p("data/bb"))
    assert scope.within(p("data")) == (p("data/b"),)
    assert Scope().selects(()) and Scope().within(p("x")) == (p("x"),)
