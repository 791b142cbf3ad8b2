"""Tonight's level: a full, or the next increment of the chain in force, and why."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from usbagent import levels, naming
from usbagent.levels import Level, Present
from usbagent.naming import ArchiveName

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)  # a Sunday, 02:00 UTC: the timer's time


def full(day: float) -> ArchiveName:
    return naming.make("h", T0 + timedelta(days=day))


def inc(day: float, level: int, of: float) -> ArchiveName:
    return naming.make("h", T0 + timedelta(days=day), level=level, full=T0 + timedelta(days=of))


def ok(name: ArchiveName) -> Present:
    return Present(name, recorded=True, intact=True, snapshot="ok")


def week(nights: int) -> list[Present]:
    """The full of day 0 and its increments up to night `nights - 1`."""
    return [ok(full(0)), *(ok(inc(n, n, 0)) for n in range(1, nights))]


def at(day: float, minutes: float = 0) -> datetime:
    return T0 + timedelta(days=day, minutes=minutes)


def test_nothing_to_build_on_is_a_full() -> None:
    assert levels.decide([], at(0), 7) == Level(0, why="first")


def test_the_next_night_is_the_next_level_of_the_newest_archives_chain() -> None:
    assert levels.decide(week(1), at(1), 7) == Level(1, full=full(0), base=full(0))
    assert levels.decide(week(3), at(3), 7) == Level(3, full=full(0), base=inc(2, 2, 0))


def test_a_full_is_due_after_full_every_days_counted_in_utc_calendar_days() -> None:
    assert levels.decide(week(7), at(7, -121), 7).level == 7  # 23:59 on day 6: not yet
    assert levels.decide(week(7), at(7, -119), 7) == Level(0, why="due")  # 00:01 on day 7
    # a 02:00 timer that ran at 02:05 for the full and at 01:55 a week later: still due
    late_full = [ok(naming.make("h", at(0, 5)))]
    assert levels.decide(late_full, at(7, -5), 7) == Level(0, why="due")
    assert levels.decide(late_full, at(1, -5), 1) == Level(0, why="due")
    assert levels.decide(late_full, at(1, -5), 2).level == 1


def test_a_clock_earlier_than_the_newest_archive_makes_a_full() -> None:
    assert levels.decide(week(3), at(2, -1), 7) == Level(0, why="clock")
    assert levels.decide(week(3), at(2, 1), 7).level == 3


def test_the_newest_archive_unrecorded_makes_a_full() -> None:
    made_by_hand = Present(inc(3, 3, 0), recorded=False, intact=False, snapshot="missing")
    assert levels.decide([*week(3), made_by_hand], at(4), 7) == Level(0, why="unrecorded")


def test_a_future_dated_unrecorded_name_is_ignored_but_a_recorded_one_is_the_clock() -> None:
    junk = Present(full(400), recorded=False, intact=False, snapshot="missing")
    assert levels.decide([*week(3), junk], at(3), 7).level == 3
    assert levels.decide([*week(3), ok(full(400))], at(3), 7) == Level(0, why="clock")


@pytest.mark.parametrize(
    "broken",
    [
        lambda w: [p for p in w if p.name != inc(1, 1, 0)],  # a middle member gone
        lambda w: [p for p in w if not p.name.is_full],  # the full gone
        lambda w: [*w, ok(naming.make("h", at(1, 30), 1, T0))],  # two of level 1
        lambda w: [replace(p, intact=p.name != inc(1, 1, 0)) for p in w],  # bad sidecar
        lambda w: [replace(p, recorded=p.name != full(0)) for p in w],  # full unrecorded
        lambda w: [replace(p, intact=p.name != inc(2, 2, 0)) for p in w],  # newest damaged
    ],
)
def test_a_chain_in_force_that_cannot_be_restored_gets_a_new_full(broken) -> None:  # type: ignore[no-untyped-def]
    assert levels.decide(broken(week(3)), at(3), 7) == Level(0, why="chain")


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("missing", "snapshot-missing"),
        ("unreadable", "snapshot-unreadable"),
        ("selection", "selection"),
    ],
)
def test_the_newest_archives_snapshot_not_usable_makes_a_full(state: str, why: str) -> None:
    chain = week(3)
    chain[-1] = replace(chain[-1], snapshot=state)  # type: ignore[arg-type]
    assert levels.decide(chain, at(3), 7) == Level(0, why=why)  # type: ignore[arg-type]
    chain[0] = replace(chain[0], snapshot="missing")  # an older one's does not matter
    chain[-1] = replace(chain[-1], snapshot="ok")
    assert levels.decide(chain, at(3), 7).level == 3


def test_a_deleted_newest_increment_leaves_the_previous_one_in_force() -> None:
    assert levels.decide(week(3)[:-1], at(3), 7) == Level(2, full=full(0), base=inc(1, 1, 0))


def test_the_highest_level_a_name_holds_ends_the_chain() -> None:
    top = naming.make("h", at(0, 60), naming.MAX_LEVEL, T0)
    assert levels.decide([ok(full(0)), ok(top)], at(0, 61), 7) == Level(0, why="due")


def test_the_words_say_full_or_increment_and_why() -> None:
    assert levels.describe(Level(2, full=full(0), base=inc(1, 1, 0))) == (
        f"increment level 2 of {full(0).filename}"
    )
    assert levels.describe(Level(0, why="due")).startswith("full (archive.full_every_days")
    assert levels.describe(Level(0, why="first")) == "full (no earlier archive to build on)"


def test_a_source_named_through_a_symlink_gets_only_fulls() -> None:
    assert levels.decide(week(3), at(3), 7, symlinked=True) == Level(0, why="symlinked")
    assert levels.decide([], at(0), 7, symlinked=True) == Level(0, why="first")
    assert "name the real path in archive.sources" in levels.describe(Level(0, why="symlinked"))
