"""Which chain members break restore points, and when fulls are overdue (pure)."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.chain_names import T0, full, inc, week
from usbagent import chainhealth, naming
from usbagent.naming import ArchiveName


def names(archives: list[ArchiveName]) -> tuple[str, ...]:
    return tuple(a.filename for a in archives)


def test_whole_chains_break_nothing_and_the_newest_increment_is_restorable() -> None:
    archives = week(0, 7) + week(7, 3)
    assert chainhealth.broken_members(archives, {}, archives) == []
    point = chainhealth.newest_restorable(archives)
    assert point is not None and point.archive == inc(9, 2, 7)


def test_a_recorded_middle_increment_gone_breaks_the_later_points_of_its_chain() -> None:
    recorded = week(0, 5) + week(7, 2)
    present = [a for a in recorded if a != inc(2, 2, 0)]
    (member,) = chainhealth.broken_members(present, {}, recorded)
    assert (member.failure, member.level, member.files) == ("gone", 2, (inc(2, 2, 0).filename,))
    assert member.chain == full(0).filename
    assert member.breaks == names([inc(3, 3, 0), inc(4, 4, 0)])
    assert member.describe() == f"{inc(2, 2, 0).filename} is gone (a successful run recorded it)"
    point = chainhealth.newest_restorable(present)
    assert point is not None and point.archive == inc(8, 1, 7)  # the other chain is whole


def test_a_damaged_member_is_named_with_why_its_file_is_not_the_archive() -> None:
    recorded = week(0, 4)
    good = [a for a in recorded if a != inc(1, 1, 0)]
    damaged = {inc(1, 1, 0): "fails its sidecar: the sidecar x.sha256 is missing"}
    (member,) = chainhealth.broken_members(good, damaged, recorded)
    assert member.failure == "damaged" and member.breaks == names([inc(2, 2, 0), inc(3, 3, 0)])
    assert member.describe() == (
        f"{inc(1, 1, 0).filename} fails its sidecar: the sidecar x.sha256 is missing"
    )
    point = chainhealth.newest_restorable(good)
    assert point is not None and point.archive == full(0)


def test_a_full_never_recorded_is_named_from_the_increments_that_need_it() -> None:
    present = week(0, 3)[1:]
    (member,) = chainhealth.broken_members(present, {}, present)
    assert (member.failure, member.level, member.files) == ("missing", 0, (full(0).filename,))
    assert member.breaks == names(present)
    assert chainhealth.newest_restorable(present) is None


def test_an_unrecorded_missing_increment_is_named_by_its_level_and_chain() -> None:
    present = [a for a in week(0, 4) if a.level != 2]
    (member,) = chainhealth.broken_members(present, {}, present)
    assert member.files == () and member.breaks == names([inc(3, 3, 0)])
    assert member.describe() == f"level 2 of {full(0).filename} is missing (no file, no record)"


def test_two_good_archives_at_one_level_make_the_next_level_ambiguous() -> None:
    twins = [inc(1, 1, 0), naming.make("h", T0 + timedelta(days=1, hours=1), 1, T0)]
    present = [full(0), *twins, inc(2, 2, 0)]
    broken = chainhealth.broken_members(present, {}, present)
    assert [(b.failure, b.level) for b in broken] == [("ambiguous", 1)]
    assert broken[0].files == names(twins)
    assert inc(2, 2, 0).filename in broken[0].breaks
    assert "is held by 2 archives" in broken[0].describe()


def test_a_chain_retention_removed_whole_is_not_reported() -> None:
    recorded = week(0, 7) + week(7, 2)
    assert chainhealth.broken_members(week(7, 2), {}, recorded) == []


def test_a_full_is_overdue_after_twice_full_every_days() -> None:
    archives = week(0, 7) + [inc(d, d, 0) for d in range(7, 15)]
    assert chainhealth.newest_full(archives) == full(0)
    assert chainhealth.newest_full([*archives, full(14)]) == full(14)
    assert chainhealth.newest_full(archives[1:]) is None
    at_limit = full(0).created + timedelta(days=14)
    assert not chainhealth.full_overdue(full(0), 7, at_limit)
    assert chainhealth.full_overdue(full(0), 7, at_limit + timedelta(seconds=1))
    assert chainhealth.full_overdue(full(0), 3, full(0).created + timedelta(days=6, hours=1))
