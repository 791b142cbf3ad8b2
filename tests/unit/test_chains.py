"""Restore points and chains, decided from names alone."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.chain_names import T0, full, inc, week
from usbagent import chains, naming


def test_a_restore_point_needs_its_full_and_every_level_below_it_in_order() -> None:
    archives = week(0, 4) + week(7, 2)
    point = chains.restore_point(inc(3, 3, 0), archives)
    assert point.complete
    assert point.members == (full(0), inc(1, 1, 0), inc(2, 2, 0), inc(3, 3, 0))
    assert chains.restore_point(full(7), archives).members == (full(7),)


def test_a_missing_middle_increment_breaks_every_later_point_of_its_chain_only() -> None:
    archives = [a for a in week(0, 5) + week(7, 2) if a != inc(2, 2, 0)]
    points = {p.archive: p for p in chains.restore_points(archives)}
    assert points[inc(1, 1, 0)].complete
    assert points[inc(3, 3, 0)].missing == (2,)
    assert points[inc(4, 4, 0)].missing == (2,)
    assert points[inc(8, 1, 7)].complete
    assert [p.archive for p in chains.broken(points.values())] == [inc(3, 3, 0), inc(4, 4, 0)]


def test_increments_whose_full_is_gone_are_never_attached_to_another_full() -> None:
    archives = [full(0), *week(7, 3)[1:]]  # the full of day 7 is missing
    point = chains.restore_point(inc(9, 2, 7), archives)
    assert point.missing == (0,)
    assert full(0) not in point.members
    newest = chains.newest_complete(chains.restore_points(archives))
    assert newest is not None and newest.archive == full(0)


def test_two_archives_of_one_level_in_one_chain_make_the_later_points_ambiguous() -> None:
    forged = naming.make("h", T0 + timedelta(days=1, hours=5), level=1, full=T0)
    archives = [*week(0, 3), forged]
    point = chains.restore_point(inc(2, 2, 0), archives)
    assert point.ambiguous == (1,) and not point.complete
    assert not chains.restore_point(inc(1, 1, 0), archives).complete


def test_an_increment_older_than_its_parent_level_does_not_count_as_its_parent() -> None:
    archives = [full(0), inc(3, 1, 0), inc(2, 2, 0)]
    assert chains.restore_point(inc(2, 2, 0), archives).missing == (1,)


def test_needed_is_the_union_of_the_chains_of_the_points_kept() -> None:
    archives = week(0, 4) + week(7, 3)
    kept = (inc(2, 2, 0), inc(8, 1, 7))
    points = [p for p in chains.restore_points(archives) if p.archive in kept]
    assert chains.needed(points) == {
        a.filename for a in (full(0), inc(1, 1, 0), inc(2, 2, 0), full(7), inc(8, 1, 7))
    }


def test_old_names_are_fulls_and_each_is_its_own_restore_point() -> None:
    old = [naming.parse(f"h-2026110{d}T020000Z.tar.zst.age") for d in range(1, 4)]
    points = chains.restore_points(a for a in old if a is not None)
    assert [len(p.members) for p in points] == [1, 1, 1] and all(p.complete for p in points)


def test_a_missing_member_is_named_as_far_as_its_name_is_known() -> None:
    point = chains.restore_point(inc(3, 3, 0), [full(0), inc(3, 3, 0)])
    assert point.missing == (1, 2)
    assert chains.expected_name(point, 0) == full(0).filename
    assert chains.expected_name(point, 2) == "h-*.inc2.20261101T020000Z.tar.zst.age"
