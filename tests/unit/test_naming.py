"""Archive names: the only files retention and pruning will ever consider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from usbagent import naming

WHEN = datetime(2026, 11, 26, 3, 4, 5, 678000, tzinfo=UTC)


def test_make_and_parse_round_trip() -> None:
    name = naming.make("host-1", WHEN)
    assert name.filename == "host-1-20261126T030405Z.tar.zst.age"
    assert name.sidecar == "host-1-20261126T030405Z.tar.zst.age.sha256"
    assert naming.parse(name.filename) == name
    assert name.created == WHEN.replace(microsecond=0)


def test_make_converts_to_utc() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5)))
    assert naming.make("h", local).filename == "h-20261126T030405Z.tar.zst.age"


@pytest.mark.parametrize(
    "filename",
    [
        "host-20261126T030405Z.tar.zst.age.sha256",
        "host-20261126T030405Z.tar.zst.age.partial",
        "host-20261126T030405Z.tar.zst",
        "host-20261126T0304Z.tar.zst.age",
        "-20261126T030405Z.tar.zst.age",
        "host 1-20261126T030405Z.tar.zst.age",
        "notes.txt",
        "host-20261326T030405Z.tar.zst.age",  # shaped like a stamp, but month 13
    ],
)
def test_parse_rejects_anything_else(filename: str) -> None:
    assert naming.parse(filename) is None


def test_parse_with_prefix_ignores_other_hosts() -> None:
    name = naming.make("alpha", WHEN).filename
    assert naming.parse(name, "alpha") is not None
    assert naming.parse(name, "beta") is None
    # a prefix that itself ends in a stamp-like part is still told apart
    assert naming.parse(naming.make("a-b", WHEN).filename, "a") is None


def test_names_order_by_time() -> None:
    older = naming.make("z", WHEN)
    newer = naming.make("a", WHEN + timedelta(seconds=1))
    assert max(older, newer) == newer


def test_is_partial_only_for_our_temporaries() -> None:
    name = naming.make("h", WHEN)
    assert naming.is_partial(name.filename + ".partial")
    assert naming.is_partial(name.sidecar + ".partial")
    assert not naming.is_partial(name.filename)
    assert not naming.is_partial("download.partial")
    assert not naming.is_partial("h-2026.tar.zst.age.partial")


@pytest.mark.parametrize(
    "filename",
    [
        "host-20261126T030405Z.tar.zst.age\n",  # `$` would have let a newline through
        "host-\u0662\u0660\u0662\u0666" + "1126T030405Z.tar.zst.age",  # non-ASCII digits
        "b\u00e4ckup-20261126T030405Z.tar.zst.age",
    ],
)
def test_names_are_ascii_and_exact(filename: str) -> None:
    assert naming.parse(filename) is None


def test_safe_prefix_gives_a_valid_prefix_from_any_host_name() -> None:
    assert naming.safe_prefix("b\u00e4ck up.lan") == "b-ck-up.lan"
    assert naming.valid_prefix(naming.safe_prefix("\u00e4\u00f6\u00fc\U0001f600"))


def test_an_increment_names_its_level_and_its_chain_and_parses_back() -> None:
    full = naming.make("host-1", WHEN)
    inc = naming.make("host-1", WHEN + timedelta(days=2), level=2, full=full.created)
    assert inc.filename == "host-1-20261128T030405Z.inc2.20261126T030405Z.tar.zst.age"
    assert naming.parse(inc.filename) == inc
    assert naming.parse(inc.filename, "host-1") == inc
    assert inc.chain == full.chain and not inc.is_full and full.is_full
    assert naming.parse(inc.sidecar.removesuffix(naming.SIDECAR)) == inc


def test_names_of_both_levels_sort_by_time() -> None:
    full = naming.make("h", WHEN)
    inc = naming.make("h", WHEN + timedelta(hours=1), level=1, full=full.created)
    nxt = naming.make("h", WHEN + timedelta(hours=2))
    names = [nxt.filename, inc.filename, full.filename]
    assert sorted(names) == [full.filename, inc.filename, nxt.filename]
    assert sorted(naming.parse(n) for n in names) == [full, inc, nxt]


def test_an_increment_never_parses_as_a_full_of_another_prefix() -> None:
    # '.' joins the increment part, so no prefix can swallow '<stamp>.incN'
    inc = naming.make("a-b", WHEN + timedelta(days=1), level=1, full=WHEN)
    assert naming.parse(inc.filename, "a-b-20261127T030405Z.inc1") is None
    assert naming.parse(inc.filename, "a") is None
    parsed = naming.parse(inc.filename)
    assert parsed is not None and parsed.prefix == "a-b"


def test_an_increment_dated_before_its_full_is_not_ours() -> None:
    text = "h-20261126T030405Z.inc1.20261127T030405Z.tar.zst.age"
    assert naming.parse(text) is None
    assert naming.parse("h-20261126T030405Z.inc1.20261126T030405Z.tar.zst.age") is None
    assert naming.parse("h-20261127T030405Z.inc0.20261126T030405Z.tar.zst.age") is None


def test_make_refuses_what_parse_would_not_read() -> None:
    for level, full in ((1, None), (0, WHEN), (1, WHEN + timedelta(days=1))):
        try:
            naming.make("h", WHEN, level=level, full=full)
        except ValueError:
            continue
        raise AssertionError(f"make accepted level {level} with full {full}")
