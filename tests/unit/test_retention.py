"""Retention: what `usbagent archive` deletes from the destination, from names and the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from usbagent import naming, retention

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
P = "host"


def name(days_ago: float, prefix: str = P) -> naming.ArchiveName:
    return naming.make(prefix, NOW - timedelta(days=days_ago))


def recorded(*names: naming.ArchiveName, since: datetime | None = None) -> retention.Record:
    """What the state dir's history says completed runs made (it reaches back 100 days)."""
    start = since or NOW - timedelta(days=100)
    return retention.Record(frozenset(n.filename for n in names), start)


def with_sidecars(*names: naming.ArchiveName) -> list[str]:
    return [f for n in names for f in (n.filename, n.sidecar)]


def test_keeps_everything_younger_than_keep_days() -> None:
    files = with_sidecars(name(0), name(5), name(13.9))
    assert retention.plan(files, P, NOW, keep_days=14) == []


def test_deletes_old_archives_with_their_sidecars_newest_first_archive_first() -> None:
    old, older, fresh = name(20), name(30), name(1)
    files = with_sidecars(fresh, old, older)
    assert retention.plan(files, P, NOW, keep_days=14) == [
        old.filename,
        old.sidecar,
        older.filename,
        older.sidecar,
    ]


def test_never_deletes_the_newest_archive_however_old() -> None:
    newest, older = name(100), name(200)
    files = with_sidecars(newest, older)
    assert retention.plan(files, P, NOW, keep_days=14) == [older.filename, older.sidecar]


def test_keeps_the_newest_complete_archive_when_the_newest_lacks_its_sidecar() -> None:
    complete, incomplete, oldest = name(40), name(30), name(50)
    files = [*with_sidecars(complete, oldest), incomplete.filename]
    doomed = retention.plan(files, P, NOW, keep_days=14)
    assert doomed == [oldest.filename, oldest.sidecar]


def test_never_touches_other_prefixes_or_foreign_files() -> None:
    other = name(100, prefix="otherhost")
    mine = name(1)
    files = [
        *with_sidecars(other, mine),
        "notes.txt",
        "host-old.tar.zst.age",
        name(100).filename + ".partial",  # in-progress or stale temporaries: not retention's
        "host-20261326T030405Z.tar.zst.age",  # not a real date
    ]
    assert retention.plan(files, P, NOW, keep_days=14) == []


def test_removes_orphan_sidecars_by_the_same_age_rule() -> None:
    orphan_old, orphan_new, mine = name(30), name(2), name(1)
    files = [*with_sidecars(mine), orphan_old.sidecar, orphan_new.sidecar]
    assert retention.plan(files, P, NOW, keep_days=14) == [orphan_old.sidecar]


def test_future_dated_archives_are_kept() -> None:
    future = naming.make(P, NOW + timedelta(days=3))
    files = with_sidecars(future, name(1))
    assert retention.plan(files, P, NOW, keep_days=1) == []


def test_empty_folder() -> None:
    assert retention.plan([], P, NOW, keep_days=1) == []


# --- suspect archives never make retention delete real ones (issue 9, item 3) ---------------


def test_a_future_dated_fake_does_not_take_the_newest_real_archives_protection() -> None:
    # The timer stopped 20 days ago; someone (or a clock gone wrong) left a 2099 archive.
    fake = naming.make(P, NOW.replace(year=2099))
    real_newest, real_older = name(20), name(30)
    files = with_sidecars(fake, real_newest, real_older)

    doomed = retention.plan(files, P, NOW, keep_days=14)

    assert doomed == [real_older.filename, real_older.sidecar]  # the newest real one stays
    assert retention.suspects(files, P, NOW, None) == [fake.filename]


def test_an_unrecorded_archive_is_neither_deleted_nor_protected_in_place_of_a_real_one() -> None:
    planted = name(1)  # a plausible, recent name no completed run made
    real_newest, real_older, planted_old = name(20), name(30), name(40)
    files = with_sidecars(planted, real_newest, real_older, planted_old)
    record = recorded(real_newest, real_older)

    doomed = retention.plan(files, P, NOW, keep_days=14, record=record)

    assert doomed == [real_older.filename, real_older.sidecar]
    assert retention.suspects(files, P, NOW, record) == [planted_old.filename, planted.filename]


def test_archives_older_than_the_recorded_history_are_judged_by_name() -> None:
    # The bounded history starts 50 days ago; older archives cannot be in it and still age out.
    ancient, newest = name(60), name(1)
    files = with_sidecars(ancient, newest)
    record = recorded(newest, since=NOW - timedelta(days=50))
    assert retention.plan(files, P, NOW, keep_days=14, record=record) == with_sidecars(ancient)


def test_orphan_sidecars_of_unrecorded_archives_are_left_alone() -> None:
    mine, theirs = name(30), name(31)
    files = [*with_sidecars(name(1)), mine.sidecar, theirs.sidecar]
    record = recorded(name(1), mine)
    assert retention.plan(files, P, NOW, keep_days=14, record=record) == [mine.sidecar]


def test_the_record_comes_from_archive_outcomes_of_the_history() -> None:
    from usbagent.events import Outcome

    first = NOW - timedelta(days=40)
    history = [
        Outcome("sync", True, "synced", time=first),
        Outcome("archive", True, "written", time=first, details={"archive": name(30).filename}),
        Outcome("archive", False, "retention failed", details={"archive": name(20).filename}),
        Outcome("archive", False, "tar failed", details={"error": "x"}),
    ]
    record = retention.record_from(history, also=(name(0).filename,))
    assert record == retention.Record(
        frozenset({name(30).filename, name(20).filename, name(0).filename}), since=first
    )
    assert record.knows(name(50)) and not record.knows(name(10))
    assert retention.record_from([]) is None
    # The archives journal reaches further back than the bounded history: it counts too.
    older = NOW - timedelta(days=90)
    record = retention.record_from(history, {name(80).filename: older})
    assert record is not None and record.since == older
    assert record.knows(name(80)) and not record.knows(name(85)) and record.knows(name(95))


def inc(days_ago: float, level: int, full_days_ago: float) -> naming.ArchiveName:
    return naming.make(
        P, NOW - timedelta(days=days_ago), level, NOW - timedelta(days=full_days_ago)
    )


def test_a_kept_increment_keeps_its_whole_chain_however_old() -> None:
    old_full = name(40)
    full, inc1, inc2 = name(20), inc(19, 1, 20), inc(10, 2, 20)  # only inc2 within 14 days
    files = with_sidecars(old_full, full, inc1, inc2)
    assert retention.plan(files, P, NOW, keep_days=14) == [old_full.filename, old_full.sidecar]


def test_a_chain_goes_whole_once_no_kept_point_needs_it() -> None:
    old = [name(30), inc(29, 1, 30), inc(28, 2, 30)]
    new = [name(13), inc(12, 1, 13)]
    files = with_sidecars(*old, *new)
    # highest level first: a run killed midway leaves a start of the chain that restores
    assert retention.plan(files, P, NOW, keep_days=14) == with_sidecars(*reversed(old))


def test_keep_days_counts_restore_points_not_archives() -> None:
    """14 nightly points with a full every 7 days: the points of the last 14 days need the
    full from 20 days ago (its chain reaches into the window); the chain before goes."""
    levels = {d: (27 - d) % 7 for d in range(28)}  # fulls 27, 20, 13 and 6 days ago
    nights = [inc(d, k, d + k) if k else name(d) for d, k in sorted(levels.items())]
    files = with_sidecars(*nights)
    doomed = set(retention.plan(files, P, NOW, keep_days=14))
    kept = [n for n in nights if n.filename not in doomed]
    assert min(kept).created == NOW - timedelta(days=20)  # the full of the oldest kept chain
    assert all(n.created < NOW - timedelta(days=20) for n in nights if n.filename in doomed)


def test_the_newest_whole_restore_point_is_kept_with_its_chain_when_all_are_old() -> None:
    chain = [name(40), inc(39, 1, 40), inc(38, 2, 40)]
    broken = [name(30), inc(28, 2, 30)]  # level 1 gone: no point of it beyond its full is whole
    older = name(50)
    files = [*with_sidecars(older, *chain, *broken)]
    doomed = retention.plan(files, P, NOW, keep_days=14)
    # the newest archive (broken inc2) and what of its chain is there stay; so does the
    # newest whole point: the full of day 30; the chain of day 40 is no longer needed
    assert doomed == with_sidecars(*reversed(chain), older)


def test_an_unrecorded_increment_is_a_suspect_and_protects_no_chain() -> None:
    full, made_by_hand = name(30), inc(29, 1, 30)
    files = with_sidecars(full, made_by_hand, name(1))
    doomed = retention.plan(files, P, NOW, keep_days=14, record=recorded(full, name(1)))
    assert doomed == [full.filename, full.sidecar]
