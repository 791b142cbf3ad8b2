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
