"""What to copy to a stick, what to prune, or why to refuse: pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from usbagent import naming
from usbagent.plan import (
    LocalArchive,
    Refusal,
    StickFile,
    SyncPlan,
    margin,
    plan_sync,
    space_to_free,
)

PREFIX = "host"
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
MB = 1000**2
PLENTY = 10**12


def name(day: int, prefix: str = PREFIX) -> str:
    return naming.make(prefix, T0 + timedelta(days=day)).filename


def local(*days: int, size: int = 100 * MB) -> list[LocalArchive]:
    return [LocalArchive(name(d), size, f"{d:064x}") for d in days]


def stick(*days: int, size: int = 100 * MB) -> list[StickFile]:
    return [StickFile(name(d), size) for d in days]


def ok(result: SyncPlan | Refusal) -> SyncPlan:
    assert isinstance(result, SyncPlan), result
    return result


def test_empty_stick_gets_the_newest_keep_archives_newest_first() -> None:
    plan = ok(plan_sync(local(1, 2, 3, 4, 5), [], PLENTY, keep=3, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(5), name(4), name(3)]
    assert plan.prune == ()
    assert plan.bytes_to_copy == 300 * MB


def test_only_missing_archives_are_copied() -> None:
    plan = ok(plan_sync(local(1, 2, 3), stick(1, 2), PLENTY, keep=5, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(3)]
    assert plan.prune == ()


def test_up_to_date_stick_needs_nothing() -> None:
    plan = ok(plan_sync(local(1, 2), stick(1, 2), 0, keep=5, prefix=PREFIX))
    assert plan == SyncPlan(copy=(), prune=(), bytes_to_copy=0)


def test_prune_beyond_keep_oldest_first() -> None:
    plan = ok(plan_sync(local(5, 6), stick(1, 2, 3, 4), PLENTY, keep=3, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(6), name(5)]
    assert plan.prune == (name(1), name(2), name(3))


def test_archives_older_than_what_the_stick_keeps_are_not_copied_then_pruned() -> None:
    # Local still has day 1 and 2; the stick already holds newer 3..5 with keep=3.
    plan = ok(plan_sync(local(1, 2, 5), stick(3, 4, 5), PLENTY, keep=3, prefix=PREFIX))
    assert plan.copy == ()
    assert plan.prune == ()


def test_stick_only_archives_count_towards_keep() -> None:
    # Archives pruned locally but still on the stick are kept while among the newest.
    plan = ok(plan_sync(local(4), stick(1, 2, 3), PLENTY, keep=3, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(4)]
    assert plan.prune == (name(1),)


def test_other_hosts_archives_and_foreign_files_are_never_counted_or_pruned() -> None:
    foreign = [
        StickFile(name(1, prefix="otherhost"), 100 * MB),
        StickFile("holiday-photos.zip", 100 * MB),
        StickFile(name(0) + ".bak", 100 * MB),
    ]
    plan = ok(plan_sync(local(2, 3), [*stick(1), *foreign], PLENTY, keep=2, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(3), name(2)]
    assert plan.prune == (name(1),)


def test_local_archives_of_another_prefix_are_ignored() -> None:
    theirs = LocalArchive(name(9, prefix="otherhost"), MB, "0" * 64)
    plan = ok(plan_sync([theirs, *local(1)], [], PLENTY, keep=3, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(1)]


def test_refused_with_numbers_when_even_after_pruning_it_does_not_fit() -> None:
    free = 50 * MB
    result = plan_sync(local(5), stick(1, 2), free, keep=2, prefix=PREFIX)
    # keep=2: day 1 is pruned, releasing 100 MB: 150 MB holds 100 MB + margin.
    assert isinstance(result, SyncPlan)
    result = plan_sync(local(5, 6), stick(1, 2), free, keep=2, prefix=PREFIX)
    # copy 5 and 6 (200 MB + margin); pruning 1 and 2 releases 200 MB; 250 MB is enough.
    assert isinstance(result, SyncPlan)
    result = plan_sync(local(5, 6), stick(1, 2), 0, keep=2, prefix=PREFIX)
    assert isinstance(result, Refusal)
    assert str(200 * MB + margin(2)) in result.reason  # needed
    assert "0 bytes free" in result.reason
    assert str(200 * MB) in result.reason  # released by pruning


def test_never_prunes_below_keep_to_make_room() -> None:
    # keep=3 and the stick holds 2: nothing may be pruned, so the new one must fit as is.
    result = plan_sync(local(1, 2, 3), stick(1, 2), 10 * MB, keep=3, prefix=PREFIX)
    assert isinstance(result, Refusal)
    assert "release 0 more" in result.reason


def test_stick_too_small_for_one_archive_is_refused() -> None:
    result = plan_sync(local(1), [], 99 * MB, keep=14, prefix=PREFIX)
    assert isinstance(result, Refusal)
    assert "1 archive(s)" in result.reason


def test_margin_is_required_beyond_the_bare_bytes() -> None:
    exact = 100 * MB
    assert isinstance(plan_sync(local(1), [], exact, keep=1, prefix=PREFIX), Refusal)
    enough = exact + margin(1)
    assert isinstance(plan_sync(local(1), [], enough, keep=1, prefix=PREFIX), SyncPlan)


def test_keep_one_replaces_the_single_copy() -> None:
    plan = ok(plan_sync(local(1, 2), stick(1), PLENTY, keep=1, prefix=PREFIX))
    assert [a.name for a in plan.copy] == [name(2)]
    assert plan.prune == (name(1),)


def test_nothing_local_and_nothing_to_do() -> None:
    assert ok(plan_sync([], stick(1), 0, keep=3, prefix=PREFIX)).copy == ()


# --- early pruning when the stick is full ----------------------------------------------------


def test_no_early_prune_when_the_copy_fits() -> None:
    assert space_to_free(PLENTY, 100 * MB, [(name(1), 100 * MB)]) == []


def test_early_prune_frees_only_as_many_oldest_as_needed() -> None:
    waiting = [(name(1), 60 * MB), (name(2), 60 * MB), (name(3), 60 * MB)]
    assert space_to_free(10 * MB, 100 * MB, waiting) == [name(1), name(2)]


def test_early_prune_never_goes_beyond_the_planned_prunes() -> None:
    assert space_to_free(0, 100 * MB, [(name(1), MB)]) == [name(1)]
    assert space_to_free(0, 100 * MB, []) == []
