"""What to copy to a stick, what to prune, or why to refuse: pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from usbagent import naming
from usbagent.naming import in_future
from usbagent.plan import (
    Foreign,
    LocalArchive,
    Refusal,
    StickFile,
    Survey,
    SyncPlan,
    judge,
    leftovers,
    margin,
    plan_sync,
    space_to_free,
    survey,
)
from usbagent.units import human_bytes

PREFIX = "host"
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
MB = 1000**2
PLENTY = 10**12


def name(day: int, prefix: str = PREFIX) -> str:
    return naming.make(prefix, T0 + timedelta(days=day)).filename


def local(*days: int, size: int = 100 * MB) -> list[LocalArchive]:
    return [LocalArchive(name(d), size, f"{d:064x}") for d in days]


def stick(*days: int, size: int = 100 * MB) -> list[StickFile]:
    return [StickFile(name(d), size, f"{d:064x}") for d in days]


def ok(result: SyncPlan | Refusal) -> SyncPlan:
    assert isinstance(result, SyncPlan), result
    return result


def test_empty_stick_gets_the_newest_keep_archives_newest_first() -> None:
    plan = ok(plan_sync(local(1, 2, 3, 4, 5), [], PLENTY, keep=3, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(5), name(4), name(3)]
    assert plan.prune == ()
    assert plan.bytes_to_copy == 300 * MB


def test_only_missing_archives_are_copied() -> None:
    plan = ok(plan_sync(local(1, 2, 3), stick(1, 2), PLENTY, keep=5, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(3)]
    assert plan.prune == ()


def test_up_to_date_stick_needs_nothing() -> None:
    plan = ok(plan_sync(local(1, 2), stick(1, 2), 0, keep=5, prefix=PREFIX, now=NOW))
    assert plan == SyncPlan(copy=(), prune=(), bytes_to_copy=0, points=(name(2), name(1)))


def test_prune_beyond_keep_oldest_first() -> None:
    plan = ok(plan_sync(local(5, 6), stick(1, 2, 3, 4), PLENTY, keep=3, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(6), name(5)]
    assert plan.prune == (name(1), name(2), name(3))


def test_archives_older_than_what_the_stick_keeps_are_not_copied_then_pruned() -> None:
    # Local still has day 1 and 2; the stick already holds newer 3..5 with keep=3.
    plan = ok(plan_sync(local(1, 2, 5), stick(3, 4, 5), PLENTY, keep=3, prefix=PREFIX, now=NOW))
    assert plan.copy == ()
    assert plan.prune == ()


def test_stick_only_archives_count_towards_keep() -> None:
    # Archives pruned locally but still on the stick are kept while among the newest.
    plan = ok(plan_sync(local(4), stick(1, 2, 3), PLENTY, keep=3, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(4)]
    assert plan.prune == (name(1),)


def test_other_hosts_archives_and_foreign_files_are_never_counted_or_pruned() -> None:
    foreign = [
        StickFile(name(1, prefix="otherhost"), 100 * MB, "1" * 64),
        StickFile("holiday-photos.zip", 100 * MB, "2" * 64),
        StickFile(name(0) + ".bak", 100 * MB, "3" * 64),
    ]
    plan = ok(plan_sync(local(2, 3), [*stick(1), *foreign], PLENTY, keep=2, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(3), name(2)]
    assert plan.prune == (name(1),)


def test_local_archives_of_another_prefix_are_ignored() -> None:
    theirs = LocalArchive(name(9, prefix="otherhost"), MB, "0" * 64)
    plan = ok(plan_sync([theirs, *local(1)], [], PLENTY, keep=3, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(1)]


def test_refused_with_numbers_when_even_after_pruning_it_does_not_fit() -> None:
    free = 50 * MB
    result = plan_sync(local(5), stick(1, 2), free, keep=2, prefix=PREFIX, now=NOW)
    # keep=2: day 1 is pruned, releasing 100 MB: 150 MB holds 100 MB + margin.
    assert isinstance(result, SyncPlan)
    result = plan_sync(local(5, 6), stick(1, 2), free, keep=2, prefix=PREFIX, now=NOW)
    # copy 5 and 6 (200 MB + margin); pruning 1 and 2 releases 200 MB; 250 MB is enough.
    assert isinstance(result, SyncPlan)
    result = plan_sync(local(5, 6), stick(1, 2), 0, keep=2, prefix=PREFIX, now=NOW)
    assert isinstance(result, Refusal)
    # In the units every other line uses, and with what to do about it.
    assert human_bytes(200 * MB + margin(2)) in result.reason  # needed
    assert "the stick has 0 B free" in result.reason
    assert f"release {human_bytes(200 * MB)} more" in result.reason  # released by pruning
    assert result.reason.endswith("; make room on the stick, lower usb.keep, or use a bigger one")


def test_never_prunes_below_keep_to_make_room() -> None:
    # keep=3 and the stick holds 2: nothing may be pruned, so the new one must fit as is.
    result = plan_sync(local(1, 2, 3), stick(1, 2), 10 * MB, keep=3, prefix=PREFIX, now=NOW)
    assert isinstance(result, Refusal)
    assert "release 0 B more" in result.reason


def test_stick_too_small_for_one_archive_is_refused() -> None:
    result = plan_sync(local(1), [], 99 * MB, keep=14, prefix=PREFIX, now=NOW)
    assert isinstance(result, Refusal)
    assert "1 archive(s)" in result.reason


def test_margin_is_required_beyond_the_bare_bytes() -> None:
    exact = 100 * MB
    assert isinstance(plan_sync(local(1), [], exact, keep=1, prefix=PREFIX, now=NOW), Refusal)
    enough = exact + margin(1)
    assert isinstance(plan_sync(local(1), [], enough, keep=1, prefix=PREFIX, now=NOW), SyncPlan)


def test_keep_one_replaces_the_single_copy() -> None:
    plan = ok(plan_sync(local(1, 2), stick(1), PLENTY, keep=1, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(2)]
    assert plan.prune == (name(1),)


def test_nothing_local_and_nothing_to_do() -> None:
    assert ok(plan_sync([], stick(1), 0, keep=3, prefix=PREFIX, now=NOW)).copy == ()


# --- early pruning when the stick is full ----------------------------------------------------


def test_no_early_prune_when_the_copy_fits() -> None:
    assert space_to_free(PLENTY, 100 * MB, [(name(1), 100 * MB)]) == []


def test_early_prune_frees_only_as_many_oldest_as_needed() -> None:
    waiting = [(name(1), 60 * MB), (name(2), 60 * MB), (name(3), 60 * MB)]
    assert space_to_free(10 * MB, 100 * MB, waiting) == [name(1), name(2)]


def test_early_prune_never_goes_beyond_the_planned_prunes() -> None:
    assert space_to_free(0, 100 * MB, [(name(1), MB)]) == [name(1)]
    assert space_to_free(0, 100 * MB, []) == []


# --- which files on the stick are our copies (survey + judge) ---------------------------------

SIDE = ".sha256"


def files_of(*names: str, size: int = 100 * MB) -> dict[str, int]:
    return {n: (size if not n.endswith(SIDE) else 90) for n in names}


def survey_of(
    files: dict[str, int],
    local_: list[LocalArchive] | None = None,
    recorded: list[StickFile] | None = None,
    recorded_names: tuple[str, ...] = (),
    sidecars: dict[str, str | None] | None = None,
) -> Survey:
    return survey(files, sidecars or {}, local_ or [], recorded or [], recorded_names, PREFIX, NOW)


def everything_matches(found: Survey) -> dict[str, str | None]:
    """What reading back gives when every checked file holds exactly what it should."""
    return {c.expect.name: c.expect.sha256 for c in found.checks}


def test_junk_without_sidecar_dated_in_the_future_never_counts_nor_is_pruned() -> None:
    # The reproduction: two verified copies, a 5-byte fake dated 2099, keep = 1.
    fake = naming.make(PREFIX, datetime(2099, 1, 1, tzinfo=UTC)).filename
    files = {**files_of(name(1), name(2)), fake: 5}
    found = survey_of(files, local(1, 2))
    audit = judge(found, everything_matches(found))

    assert [f.name for f in audit.present] == [name(2), name(1)]
    assert audit.foreign == (Foreign(fake, 5, "future"),)
    plan = ok(plan_sync(local(1, 2), audit.present, PLENTY, keep=1, prefix=PREFIX, now=NOW))
    assert plan.prune == (name(1),) and plan.copy == ()
    assert fake not in plan.prune


def test_a_forged_sidecar_does_not_make_an_unknown_file_a_copy() -> None:
    # Not local, not in the ledger: its own sidecar on the stick is no proof.
    files = files_of(name(3), name(3) + SIDE)
    found = survey_of(files, sidecars={name(3): "f" * 64})
    assert found.checks == ()
    assert found.foreign == (Foreign(name(3), 100 * MB, "unrecorded"),)


def test_a_file_under_a_local_archive_name_that_usbagent_never_wrote_is_foreign() -> None:
    # Its forged sidecar matches its own content, not the host's record.
    found = survey_of(files_of(name(2), name(2) + SIDE), local(2), sidecars={name(2): "e" * 64})
    audit = judge(found, {name(2): "e" * 64})
    assert audit.present == () and audit.replace == () and audit.corrupt == ()
    assert audit.foreign == (Foreign(name(2), 100 * MB, "differs"),)


def test_a_corrupt_copy_usbagent_wrote_is_replaced_or_kept_when_it_is_the_only_one() -> None:
    recorded = stick(1, 2)
    found = survey_of(files_of(name(1), name(2)), local(2), recorded=recorded)
    audit = judge(found, {name(1): "bad", name(2): "bad"})
    assert audit.replace == (name(2),)  # a local archive exists: copied again
    assert audit.corrupt == (name(1),)  # the only copy: kept, reported
    assert audit.present == () and audit.foreign == ()


def test_a_copy_known_only_to_the_ledger_is_checked_against_the_ledger_hash() -> None:
    recorded = stick(1)
    found = survey_of(files_of(name(1)), recorded=recorded)
    assert judge(found, {name(1): recorded[0].sha256}).present == (recorded[0],)
    assert judge(found, {name(1): "0" * 64}).corrupt == (name(1),)


def test_a_wrong_size_is_a_mismatch_without_reading() -> None:
    found = survey_of(files_of(name(1), size=5), local(1))
    audit = judge(found, {})
    assert audit.present == () and audit.foreign == (Foreign(name(1), 5, "differs"),)


def test_a_future_dated_copy_is_suspect_even_when_the_host_made_it() -> None:
    future = NOW + timedelta(days=2)
    real = LocalArchive(naming.make(PREFIX, future).filename, MB, "a" * 64)
    found = survey_of({real.name: MB}, [real], recorded=[StickFile(real.name, MB, "a" * 64)])
    assert found.checks == () and found.foreign == (Foreign(real.name, MB, "future"),)
    # ...and a future-dated local archive is not copied and takes nobody's place.
    plan = ok(plan_sync([real, *local(1)], stick(0), PLENTY, keep=1, prefix=PREFIX, now=NOW))
    assert [a.name for a in plan.copy] == [name(1)] and plan.future == (real.name,)
    assert plan.prune == (name(0),)


def test_just_made_archive_with_a_slightly_fast_clock_is_not_suspect() -> None:
    soon = naming.make(PREFIX, NOW + timedelta(minutes=30)).filename
    assert not in_future(soon, NOW)
    assert in_future(naming.make(PREFIX, NOW + timedelta(hours=2)).filename, NOW)


def test_an_older_ledger_without_hashes_trusts_the_stick_sidecar_of_names_it_recorded() -> None:
    found = survey_of(
        files_of(name(1), name(1) + SIDE, name(2)),
        recorded_names=(name(1), name(2)),
        sidecars={name(1): "c" * 64},
    )
    assert [c.expect for c in found.checks] == [StickFile(name(1), 100 * MB, "c" * 64)]
    assert found.foreign == (Foreign(name(2), 100 * MB, "unverifiable"),)


def test_only_sidecars_of_recorded_copies_are_removed_as_stale() -> None:
    found = survey_of(files_of(name(1) + SIDE, name(2) + SIDE), recorded=stick(1))
    assert found.stale_sidecars == (name(1) + SIDE,)
    assert found.foreign == (Foreign(name(2) + SIDE, 90, "sidecar"),)


def test_a_verified_copy_with_a_wrong_sidecar_gets_it_rewritten() -> None:
    found = survey_of(files_of(name(1), name(1) + SIDE), local(1), sidecars={name(1): "9" * 64})
    audit = judge(found, everything_matches(found))
    assert audit.fix_sidecars == audit.present == (StickFile(name(1), 100 * MB, f"{1:064x}"),)


def test_excluded_local_archives_take_no_place_so_no_older_copy_is_pruned() -> None:
    # Day 3 is corrupt here (or a foreign file holds its name on the stick): keep 1 and 2.
    plan = ok(
        plan_sync(local(3), stick(1, 2), PLENTY, keep=2, prefix=PREFIX, now=NOW, exclude={name(3)})
    )
    assert plan.copy == () and plan.prune == ()


def test_only_partials_of_archives_this_host_has_or_recorded_are_removed() -> None:
    files = {
        name(1) + ".partial": 5,  # copying day 1 was interrupted: local has it
        name(1) + SIDE + ".partial": 0,
        name(2) + ".partial": 5,  # the ledger records day 2
        name(3) + ".partial": 5,  # nobody knows day 3: not ours to delete
        "notes.partial": 1,
    }
    assert leftovers(files, local(1), (name(2),), PREFIX) == (
        name(1) + ".partial",
        name(1) + SIDE + ".partial",
        name(2) + ".partial",
    )
    found = survey_of({name(3) + ".partial": 5, "notes.partial": 1})
    assert found.foreign == (Foreign(name(3) + ".partial", 5, "partial"),)


# --- whole chains: restore points, not archives ------------------------------------------------


def inc(day: int, level: int, of: int) -> str:
    return naming.make(PREFIX, T0 + timedelta(days=day), level, T0 + timedelta(days=of)).filename


def chain(start: int, nights: int) -> list[str]:
    """A full on day `start`, then an increment each following night (levels 1..nights-1)."""
    return [name(start), *(inc(start + n, n, start) for n in range(1, nights))]


def local_named(*names: str, size: int = 100 * MB) -> list[LocalArchive]:
    return [LocalArchive(n, size, str(abs(hash(n)) % 10**9).zfill(64)) for n in names]


def stick_named(*names: str, size: int = 100 * MB) -> list[StickFile]:
    return [StickFile(a.name, a.size, a.sha256) for a in local_named(*names, size=size)]


def test_keep_counts_restore_points_and_each_brings_its_whole_chain_full_first() -> None:
    week0, week7 = chain(0, 4), chain(7, 2)
    plan = ok(plan_sync(local_named(*week0, *week7), [], PLENTY, 2, PREFIX, NOW))
    assert [a.name for a in plan.copy] == week7  # the full, then level 1
    assert plan.points == (inc(8, 1, 7), name(7))

    plan = ok(plan_sync(local_named(*week0, *week7), [], PLENTY, 3, PREFIX, NOW))
    # newest chain first; the older chain's full before its levels, levels in order
    assert [a.name for a in plan.copy] == [*week7, *week0]
    assert plan.points == (inc(8, 1, 7), name(7), inc(3, 3, 0))


def test_pruning_keeps_every_member_a_kept_point_needs_whatever_its_age() -> None:
    # keep=1: the newest point is level 4; its full and levels 1..3 are old but needed.
    week0 = chain(0, 5)
    plan = ok(plan_sync(local_named(week0[-1]), stick_named(*week0[:-1]), PLENTY, 1, PREFIX, NOW))
    assert [a.name for a in plan.copy] == [week0[-1]]
    assert plan.prune == ()


def test_a_chain_no_kept_point_needs_is_pruned_highest_level_first() -> None:
    # A stick pulled during the prune still holds a restorable prefix of that chain.
    week0 = chain(0, 4)
    plan = ok(plan_sync(local_named(name(7)), stick_named(*week0), PLENTY, 1, PREFIX, NOW))
    assert plan.prune == tuple(reversed(week0))


def test_never_an_increment_without_its_whole_chain() -> None:
    # Level 1 is gone from the host and was never on the stick: levels 2 and 3 restore
    # nothing on their own, so only the full is copied, and the two are reported.
    week0 = chain(0, 4)
    gone = week0[1]
    plan = ok(plan_sync(local_named(*(n for n in week0 if n != gone)), [], PLENTY, 3, PREFIX, NOW))
    assert [a.name for a in plan.copy] == [name(0)]
    assert plan.points == (name(0),)
    assert [p.archive.filename for p in plan.uncopied] == [week0[2], week0[3]]
    assert all(p.missing == (1,) for p in plan.uncopied)
    assert plan.broken == ()


def test_a_member_missing_on_the_stick_is_copied_again_from_the_host() -> None:
    week0 = chain(0, 4)
    lost = week0[1]
    on_stick = stick_named(*(n for n in week0 if n != lost))
    plan = ok(plan_sync(local_named(*week0), on_stick, PLENTY, 1, PREFIX, NOW))
    assert [a.name for a in plan.copy] == [lost]
    assert plan.prune == () and plan.broken == () and plan.points == (week0[-1],)


def test_a_member_excluded_here_and_absent_on_the_stick_stops_the_chain_there() -> None:
    # Level 2 is corrupt on the host (excluded): points from level 2 on cannot be made.
    week0 = chain(0, 4)
    plan = ok(plan_sync(local_named(*week0), [], PLENTY, 3, PREFIX, NOW, exclude={week0[2]}))
    assert [a.name for a in plan.copy] == week0[:2]
    assert plan.points == (week0[1], week0[0])
    # level 2 itself is reported by the sync as corrupt here; level 3 as lacking it
    assert [(p.archive.filename, p.missing) for p in plan.uncopied] == [(week0[3], (2,))]


def test_a_broken_chain_on_the_stick_is_kept_reported_and_never_counted() -> None:
    # The stick lost level 1 and the host no longer has any of that chain.
    week0 = chain(0, 4)
    held = [n for n in week0 if n != week0[1]]
    plan = ok(plan_sync(local_named(name(7)), stick_named(*held), PLENTY, 2, PREFIX, NOW))
    # level 3 does not count: the two points are the new full and the old full alone
    assert plan.points == (name(7), name(0))
    assert [p.archive.filename for p in plan.broken] == [week0[2], week0[3]]
    assert plan.broken[0].missing == (1,)
    assert plan.prune == () and plan.uncopied == ()


def test_a_broken_chain_goes_once_keep_complete_points_are_newer() -> None:
    week0 = chain(0, 4)
    held = [n for n in week0 if n != week0[1]]
    plan = ok(plan_sync(local_named(name(7), name(8)), stick_named(*held), PLENTY, 2, PREFIX, NOW))
    assert plan.points == (name(8), name(7))
    assert plan.broken == () and plan.uncopied == ()
    assert plan.prune == (week0[3], week0[2], week0[0])


def test_a_stick_with_only_increments_of_a_chain_holds_no_restore_point() -> None:
    week0 = chain(0, 3)
    plan = ok(plan_sync([], stick_named(*week0[1:]), PLENTY, 3, PREFIX, NOW))
    assert plan.points == () and plan.copy == () and plan.prune == ()
    assert [p.missing for p in plan.broken] == [(0,), (0,)]


def test_space_is_planned_for_every_member_of_the_chain() -> None:
    # The newest point is a small increment, but its 100 MB full must go too.
    full = LocalArchive(name(0), 100 * MB, "a" * 64)
    small = LocalArchive(inc(1, 1, 0), MB, "b" * 64)
    room = MB + margin(1) + 10 * MB
    result = plan_sync([small, full], [], room, 1, PREFIX, NOW)
    assert isinstance(result, Refusal)
    assert "2 archive(s)" in result.reason and human_bytes(101 * MB + margin(2)) in result.reason
    assert "1 restore point(s) with their whole chains" in result.reason
    plan = ok(plan_sync([small, full], [], 101 * MB + margin(2), 1, PREFIX, NOW))
    assert plan.bytes_to_copy == 101 * MB


def test_a_broken_point_only_here_is_not_blamed_on_the_stick_holding_its_base() -> None:
    # The stick holds the full and level 1 (complete); level 2 is gone everywhere, so level
    # 3, here only, is not copied: the stick itself holds no broken point.
    week0 = chain(0, 4)
    base, lost = week0[:2], week0[2]
    local_ = local_named(*(n for n in week0 if n != lost))
    plan = ok(plan_sync(local_, stick_named(*base), PLENTY, 3, PREFIX, NOW))
    assert plan.copy == () and plan.prune == ()
    assert plan.broken == ()
    assert [(p.archive.filename, p.missing) for p in plan.uncopied] == [(week0[3], (2,))]
