"""The pure half of `usbagent status`: facts + config + now -> checks, every verdict."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from usbagent import health, naming, outbox, state, status, statuschecks, statusfacts, systemd
from usbagent.config import AgentConfig, Config
from usbagent.events import Kind, Outcome
from usbagent.health import CRITICAL, OK, UNKNOWN, WARNING, ArchiveFile, Check
from usbagent.statusfacts import Facts, Heartbeat

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONFIG = Config(agent=AgentConfig(stale_after_hours=26, usb_stale_after_days=7))
NAME = "host-20261126T020000Z.tar.zst.age"  # made 10 h before NOW


def hours_ago(h: float) -> datetime:
    return NOW - timedelta(hours=h)


def unit(name: str, **props: str) -> systemd.Unit:
    return systemd.Unit(name, {"LoadState": "loaded", **props})


def healthy_units(**timer: str) -> dict[str, systemd.Unit]:
    timer_props = {
        "ActiveState": "active",
        "UnitFileState": "enabled",
        "LastTriggerUSec": f"@{int(hours_ago(10).timestamp())}",
        "NextElapseUSecRealtime": f"@{int((NOW + timedelta(hours=14)).timestamp())}",
        **timer,
    }
    return {
        systemd.ARCHIVE_TIMER: unit(systemd.ARCHIVE_TIMER, **timer_props),
        systemd.ARCHIVE_SERVICE: unit(
            systemd.ARCHIVE_SERVICE, ActiveState="inactive", Result="success", ExecMainStatus="0"
        ),
        systemd.AGENT_SERVICE: unit(systemd.AGENT_SERVICE, ActiveState="active", NRestarts="0"),
    }


DIGEST = "ab" * 32


def made(created: datetime, **changes: object) -> ArchiveFile:
    """An archive file as a successful run left it (recorded, its sidecar intact), then
    `changes` made to the file."""
    name, size = naming.make("host", created).filename, 123 * 2**20
    record = state.ArchiveRecord(name, size, DIGEST, created + timedelta(minutes=5))
    return replace(ArchiveFile(name, created, size, record, DIGEST), **changes)


def outcome(kind: Kind, ok: bool, at: datetime, **details: object) -> Outcome:
    return Outcome(kind=kind, ok=ok, summary=f"{kind} {'ok' if ok else 'failed'}", time=at,
                   details=dict(details))  # fmt: skip


GOOD_SYNC = outcome("sync", True, hours_ago(20), label="SOVB", uuid="1234-abcd", copied=["a", "b"],
                    verified=2, free_bytes=3 * 2**30)  # fmt: skip
GOOD_ARCHIVE = outcome("archive", True, hours_ago(10), size=1000, duration=3.5)


def healthy() -> Facts:
    return Facts(
        destination=Path("/data/backups"),
        archives=(made(hours_ago(10)), made(hours_ago(34))),
        destination_problem=None,
        units=healthy_units(),
        systemd_problem=None,
        heartbeat=Heartbeat(
            pid=42, time=NOW - timedelta(seconds=5), status="idle", alive=True, source_alive=True
        ),
        sticks=(
            statusfacts.Stick(
                uuid="1234-abcd",
                label="SOVB",
                last_ok_sync=hours_ago(20),
                last_verified_copy=hours_ago(20),
                newest_archive=NAME,
                free_bytes=3 * 2**30,
                last_error=None,
                last_error_time=None,
            ),
        ),
        last={"archive": GOOD_ARCHIVE, "sync": GOOD_SYNC},
        last_ok={"archive": GOOD_ARCHIVE, "sync": GOOD_SYNC},
        last_error=None,
        pending=(),
    )


def checks_of(facts: Facts) -> dict[str, Check]:
    return {c.name: c for c in statuschecks.evaluate(facts, CONFIG, NOW)}


def test_healthy_system_is_ok_with_every_fact_in_the_messages() -> None:
    checks = statuschecks.evaluate(healthy(), CONFIG, NOW)
    assert statuschecks.overall(checks) == OK, checks
    by_name = {c.name: c for c in checks}
    assert NAME in by_name["archive"].message and "10 h 0 min old" in by_name["archive"].message
    assert "123.0 MiB" in by_name["archive"].message
    assert "2026-11-26 02:00 UTC" in by_name["archive-timer"].message  # last trigger
    assert "running (pid 42)" in by_name["agent"].message
    assert "SOVB (1234-abcd)" in by_name["last-sync"].message
    assert "2 copied, 2 verified, 3.0 GiB free" in by_name["last-sync"].message
    assert NAME in by_name["stick SOVB (1234-abcd)"].message


def test_the_failure_this_project_exists_for_active_timer_but_no_fresh_archive() -> None:
    """Timer enabled and active, service 'success', but the newest archive is 30 h old."""
    facts = replace(healthy(), archives=(made(hours_ago(30)),))
    checks = checks_of(facts)
    assert checks["archive"].state == CRITICAL
    assert "30 h 0 min old" in checks["archive"].message
    assert "usbagent-archive.timer is enabled and active" in checks["archive"].message
    assert checks["archive-timer"].state == OK  # systemd alone would look healthy
    assert statuschecks.overall(list(checks.values())) == CRITICAL
    assert status.EXIT[CRITICAL] == 2


def test_no_archive_at_all_is_critical() -> None:
    checks = checks_of(replace(healthy(), archives=()))
    assert checks["archive"].state == CRITICAL
    assert "no archive a successful run recorded in /data/backups" in checks["archive"].message


def test_missing_destination_is_critical() -> None:
    checks = checks_of(replace(healthy(), archives=(), destination_problem="does not exist"))
    assert checks["archive"] == Check(
        "archive", CRITICAL, "archive folder /data/backups does not exist"
    )


def test_archive_just_inside_the_limit_is_ok_and_just_outside_is_critical() -> None:
    inside = replace(healthy(), archives=(made(hours_ago(25.9)),))
    outside = replace(healthy(), archives=(made(hours_ago(26.1)),))
    assert checks_of(inside)["archive"].state == OK
    assert checks_of(outside)["archive"].state == CRITICAL


def test_archive_dated_in_the_future_is_a_warning() -> None:
    facts = replace(healthy(), archives=(made(NOW + timedelta(hours=5)),))
    assert checks_of(facts)["archive"].state == WARNING


def test_without_systemd_the_timer_is_reported_but_not_unknown() -> None:
    facts = replace(
        healthy(), units=None, systemd_problem="System has not been booted with systemd"
    )
    checks = checks_of(facts)
    assert checks["archive-timer"].state == OK
    assert "systemd not available (System has not been booted" in checks["archive-timer"].message
    assert statuschecks.overall(list(checks.values())) == OK


def test_disabled_or_missing_timer_is_a_warning() -> None:
    disabled = replace(
        healthy(), units=healthy_units(UnitFileState="disabled", ActiveState="inactive")
    )
    check = checks_of(disabled)["archive-timer"]
    assert check.state == WARNING and "disabled and inactive" in check.message
    units = healthy_units()
    units[systemd.ARCHIVE_TIMER] = systemd.Unit(systemd.ARCHIVE_TIMER, {"LoadState": "not-found"})
    check = checks_of(replace(healthy(), units=units))["archive-timer"]
    assert check.state == WARNING and "not installed" in check.message


def test_failed_archive_service_is_critical_with_systemds_reason() -> None:
    units = healthy_units()
    exited = int(hours_ago(2).timestamp())
    units[systemd.ARCHIVE_SERVICE] = unit(
        systemd.ARCHIVE_SERVICE, Result="exit-code", ExecMainStatus="1",
        ExecMainExitTimestamp=f"@{exited}",
    )  # fmt: skip
    check = checks_of(replace(healthy(), units=units))["archive-job"]
    assert check.state == CRITICAL
    assert "Result=exit-code, exit status 1" in check.message
    assert "2026-11-26 10:00 UTC" in check.message


def test_failed_service_followed_by_a_good_archive_is_only_a_warning() -> None:
    units = healthy_units()
    units[systemd.ARCHIVE_SERVICE] = unit(
        systemd.ARCHIVE_SERVICE, Result="exit-code", ExecMainStatus="1",
        ExecMainExitTimestamp=f"@{int(hours_ago(12).timestamp())}",
    )  # fmt: skip
    check = checks_of(replace(healthy(), units=units))["archive-job"]
    assert check.state == WARNING and "a later archive succeeded" in check.message


def test_unit_failed_record_newer_than_last_good_archive_is_critical_with_the_reason() -> None:
    failed = Outcome(
        kind="unit-failed",
        ok=False,
        summary="usbagent-archive.service failed: cannot run /usr/bin/usbagent (status 203/EXEC)",
        time=hours_ago(1),
        details={"unit": "usbagent-archive.service"},
    )
    facts = replace(healthy(), units=None, unit_failures={failed.details["unit"]: failed},
                    last_error=failed)  # fmt: skip
    checks = checks_of(facts)
    assert checks["archive-job"].state == CRITICAL
    assert "203/EXEC" in checks["archive-job"].message
    assert checks["last-error"].state == CRITICAL
    assert statuschecks.overall(list(checks.values())) == CRITICAL


def test_unit_failed_older_than_a_good_archive_is_resolved() -> None:
    failed = Outcome("unit-failed", False, "archive unit failed", hours_ago(30),
                     {"unit": "usbagent-archive.service"})  # fmt: skip
    facts = replace(
        healthy(), unit_failures={"usbagent-archive.service": failed}, last_error=failed
    )
    checks = checks_of(facts)
    assert checks["archive-job"].state == OK
    assert checks["last-error"].state == OK
    assert checks["last-error"].message.startswith("resolved since: unit-failed")


def test_failed_last_archive_run_is_critical() -> None:
    bad = outcome("archive", False, hours_ago(1))
    facts = replace(healthy(), last={**healthy().last, "archive": bad}, last_error=bad)
    assert checks_of(facts)["archive-job"].state == CRITICAL


def test_agent_states() -> None:
    base = healthy()
    hb = base.heartbeat
    assert hb is not None
    never = checks_of(replace(base, heartbeat=None))["agent"]
    assert never.state == CRITICAL and "never run" in never.message
    dead = checks_of(replace(base, heartbeat=replace(hb, alive=False)))["agent"]
    assert dead.state == CRITICAL and "not running (pid 42 gone" in dead.message
    hung = checks_of(replace(base, heartbeat=replace(hb, time=NOW - timedelta(minutes=5))))
    assert hung["agent"].state == CRITICAL and "hung" in hung["agent"].message
    blind = checks_of(replace(base, heartbeat=replace(hb, source_alive=False)))["agent"]
    assert blind.state == CRITICAL and "event source is gone" in blind.message
    ok = checks_of(replace(base, heartbeat=replace(hb, time=NOW - timedelta(seconds=59))))
    assert ok["agent"].state == OK


def test_agent_unit_failure_is_named_when_the_agent_is_down() -> None:
    base = healthy()
    assert base.heartbeat is not None
    failed = Outcome("unit-failed", False, "usbagent.service failed: cannot run /x (203/EXEC)",
                     hours_ago(1), {"unit": "usbagent.service"})  # fmt: skip
    down = replace(base, heartbeat=replace(base.heartbeat, alive=False, time=hours_ago(2)),
                   unit_failures={"usbagent.service": failed}, last_error=failed)  # fmt: skip
    checks = checks_of(down)
    assert checks["agent"].state == CRITICAL and "203/EXEC" in checks["agent"].message
    assert checks["last-error"].state == CRITICAL
    assert checks["archive-job"].state == OK  # the archive unit did not fail
    restarted = replace(down, heartbeat=base.heartbeat)  # alive, beating after the failure
    checks = checks_of(restarted)
    assert checks["agent"].state == OK and checks["last-error"].state == OK


def test_agent_restarts_are_shown() -> None:
    units = healthy_units()
    units[systemd.AGENT_SERVICE] = unit(systemd.AGENT_SERVICE, ActiveState="active", NRestarts="3")
    check = checks_of(replace(healthy(), units=units))["agent"]
    assert check.state == OK and "restarted 3 times" in check.message


def test_sticks() -> None:
    base = healthy()
    stick = base.sticks[0]
    assert checks_of(replace(base, sticks=()))["sticks"].state == WARNING
    old = replace(stick, last_ok_sync=NOW - timedelta(days=8))
    check = checks_of(replace(base, sticks=(old,)))["stick SOVB (1234-abcd)"]
    assert (
        check.state == WARNING and "8 d 0 h ago" in check.message and "plug it in" in check.message
    )
    never = replace(stick, last_ok_sync=None)
    assert checks_of(replace(base, sticks=(never,)))["stick SOVB (1234-abcd)"].state == WARNING
    failed = replace(stick, last_error="no space", last_error_time=hours_ago(1))
    check = checks_of(replace(base, sticks=(failed,)))["stick SOVB (1234-abcd)"]
    assert check.state == WARNING and "no space" in check.message


def test_failed_sync_is_a_warning_until_a_later_success() -> None:
    bad = outcome("sync", False, hours_ago(1), label="SOVB", uuid="1234-abcd")
    facts = replace(healthy(), last={**healthy().last, "sync": bad}, last_error=bad)
    checks = checks_of(facts)
    assert checks["last-sync"].state == WARNING and "failed" in checks["last-sync"].message
    assert checks["last-error"].state == WARNING
    later = replace(GOOD_SYNC, time=hours_ago(0.5))
    fixed = replace(
        facts, last={**facts.last, "sync": later}, last_ok={**facts.last_ok, "sync": later}
    )
    checks = checks_of(fixed)
    assert checks["last-sync"].state == OK and checks["last-error"].state == OK


def test_stale_error_resolved_by_a_newer_archive() -> None:
    stale = outcome("stale", False, hours_ago(20))
    assert checks_of(replace(healthy(), last_error=stale))["last-error"].state == OK
    newer_stale = outcome("stale", False, hours_ago(1))
    assert checks_of(replace(healthy(), last_error=newer_stale))["last-error"].state == CRITICAL


def test_pending_notifications() -> None:
    normal = outbox.Note("refused", "Backup stick not used", "ext2", outbox.NORMAL, hours_ago(1))
    critical = replace(
        normal, kind="stale", urgency=outbox.CRITICAL, summary="Backup is out of date"
    )
    check = checks_of(replace(healthy(), pending=(normal,)))["notifications"]
    assert check.state == OK and check.message.startswith("1 desktop notification(s) not delivered")
    check = checks_of(replace(healthy(), pending=(normal, critical)))["notifications"]
    assert check.state == WARNING and "Backup is out of date" in check.message


def test_checks_are_sorted_worst_first_and_text_leads_with_the_worst() -> None:
    facts = replace(healthy(), archives=(), sticks=())
    checks = statuschecks.evaluate(facts, CONFIG, NOW)
    assert [c.state for c in checks][:2] == [CRITICAL, WARNING]
    text = status.render_text(checks)
    assert text.splitlines()[0].startswith(
        "usbagent CRITICAL: archive: no archive a successful run recorded in /data/backups"
    )
    assert text.splitlines()[1].startswith("CRITICAL archive: ")


@pytest.mark.parametrize(
    ("states", "worst"),
    [([OK], OK), ([OK, WARNING], WARNING), ([WARNING, UNKNOWN], UNKNOWN),
     ([UNKNOWN, CRITICAL], CRITICAL), ([], UNKNOWN)],
)  # fmt: skip
def test_overall(states: list[str], worst: str) -> None:
    assert statuschecks.overall([Check("x", s, "") for s in states]) == worst


def test_age_and_size_formatting() -> None:
    assert health.age(timedelta(seconds=45)) == "45 s"
    assert health.age(timedelta(minutes=12)) == "12 min"
    assert health.age(timedelta(hours=5, minutes=3)) == "5 h 3 min"
    assert health.age(timedelta(days=3, hours=4)) == "3 d 4 h"
    assert health.size(512) == "512 B"
    assert health.size(5 * 2**40) == "5.0 TiB"


def test_parse_systemctl_show_blocks() -> None:
    text = "LoadState=loaded\nLastTriggerUSec=@1795658400\nResult=n/a\n\nLoadState=not-found\n"
    a, b, c = systemd.parse_show(text, ["a.timer", "b.service", "c.service"])
    assert a.time("LastTriggerUSec") == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert a.get("Result") == "" and a.loaded
    assert not b.loaded and c.props == {}


def test_a_file_no_run_recorded_is_never_a_fresh_archive() -> None:
    touched = ArchiveFile(naming.make("host", hours_ago(1)).filename, hours_ago(1), 0)
    alone = checks_of(replace(healthy(), archives=(touched,)))
    assert alone["archive"].state == CRITICAL
    assert "none of them one" in alone["archive"].message
    assert (
        alone["archive-files"].state == WARNING and touched.name in alone["archive-files"].message
    )
    beside = checks_of(replace(healthy(), archives=(touched, made(hours_ago(10)))))
    assert beside["archive"].state == OK and NAME in beside["archive"].message
    assert beside["archive-files"].state == WARNING
    older = checks_of(
        replace(healthy(), archives=(made(hours_ago(1)), replace(touched, created=hours_ago(40))))
    )
    assert older["archive-files"].state == OK  # older than the newest good one: not passing for it


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"size": 0}, "is 0 bytes, but its run wrote 128974848 bytes"),
        ({"sidecar": None, "sidecar_problem": "the sidecar x.sha256 is missing"},
         "fails its sidecar: the sidecar x.sha256 is missing"),
        ({"sidecar": "cd" * 32}, "fails its sidecar: it states another sha256"),
    ],
)  # fmt: skip
def test_newest_recorded_archive_that_fails_its_record_is_critical(
    changes: dict[str, object], says: str
) -> None:
    damaged = made(hours_ago(2), **changes)
    checks = checks_of(replace(healthy(), archives=(damaged, made(hours_ago(10)))))
    assert checks["archive-files"].state == CRITICAL
    assert checks["archive-files"].message.startswith(f"newest archive {damaged.name} {says}")
    assert checks["archive"].state == OK and NAME in checks["archive"].message  # the older one
    older = checks_of(replace(healthy(), archives=(made(hours_ago(2)), damaged)))
    assert older["archive-files"].state == WARNING


def test_the_archive_the_last_good_run_wrote_gone_from_the_destination_is_critical() -> None:
    """Deleted after the run (rm, a cleanup script): the older archives still look fresh,
    but the newest backup is gone, and status must not stay OK over it."""
    gone = naming.make("host", hours_ago(1)).filename
    wrote = outcome("archive", True, hours_ago(1) + timedelta(minutes=5), archive=gone)
    facts = replace(healthy(), last={"archive": wrote}, last_ok={"archive": wrote})
    checks = checks_of(facts)
    assert checks["archive-files"].state == CRITICAL
    message = checks["archive-files"].message
    assert message.startswith(f"newest archive {gone}, written by the run at "), message
    assert "is gone from /data/backups" in message and "usbagent archive" in message
    present = replace(facts, archives=(made(hours_ago(1)), *healthy().archives))
    assert checks_of(present)["archive-files"].state == OK


def test_known_archives_come_from_the_journal_and_from_successful_outcomes() -> None:
    def details(name: str, size: int = 5) -> dict[str, object]:
        return {"archive": name, "size": size, "sha256": DIGEST}

    journal = [state.ArchiveRecord("a", 1, DIGEST, hours_ago(30))]
    outcomes = [
        outcome("archive", True, hours_ago(5), **details("b")),
        outcome("archive", False, hours_ago(4), **details("c")),  # a failed run: not a backup
        outcome("sync", True, hours_ago(3), **details("d")),
        outcome("archive", True, hours_ago(2), **details("a", size=7)),  # newer record wins
        outcome("archive", True, hours_ago(1), archive="e", size=5, sha256="not-a-digest"),
    ]
    known = state.known_archives(journal, outcomes)
    assert sorted(known) == ["a", "b"]
    assert known["a"].size == 7


# --- chains (issue 11) -------------------------------------------------------------------


def made_inc(created: datetime, level: int, full: datetime, **changes: object) -> ArchiveFile:
    """An increment as a successful run left it; `changes` made to the file afterwards."""
    name = naming.make("host", created, level, full).filename
    record = state.ArchiveRecord(name, 2**20, DIGEST, created + timedelta(minutes=1))
    return replace(ArchiveFile(name, created, 2**20, record, DIGEST), **changes)


def nights(*levels_ago: tuple[int, float]) -> tuple[ArchiveFile, ...]:
    """A chain whose full was made `full_h` hours ago, then one increment per (level, hours
    ago) pair; newest first, as `gather` lists them."""
    (_, full_h), *incs = levels_ago
    files = [made(hours_ago(full_h))] + [
        made_inc(hours_ago(h), level, hours_ago(full_h)) for level, h in incs
    ]
    return tuple(sorted(files, key=lambda a: a.created, reverse=True))


def test_freshness_counts_an_increment_as_a_restore_point() -> None:
    """A week of increments on a 6-day-old full is fresh: last night's increment counts."""
    archives = nights((0, 6 * 24 + 10), (1, 5 * 24 + 10), (2, 4 * 24 + 10), (3, 10))
    checks = checks_of(replace(healthy(), archives=archives))
    assert checks["archive"].state == OK, checks["archive"]
    assert archives[0].name in checks["archive"].message
    assert "(increment 3 on host-" in checks["archive"].message
    assert checks["archive"].to_json()["newest"] == archives[0].name
    assert checks["archive-chains"].state == OK
    assert checks["full-archive"] == Check(
        "full-archive",
        OK,
        f"newest full archive {archives[-1].name}, 6 d 10 h old",
        {"newest_full": archives[-1].name, "age_seconds": (6 * 24 + 10) * 3600},
    )


def test_a_recorded_member_gone_is_critical_naming_it_and_the_points_it_breaks() -> None:
    whole = nights((0, 58), (1, 34), (2, 10))
    gone = whole[1]  # level 1
    facts = replace(
        healthy(), archives=(whole[0], whole[2]), recorded=frozenset(a.name for a in whole)
    )
    checks = checks_of(facts)
    chain = checks["archive-chains"]
    assert chain.state == CRITICAL
    assert chain.message.startswith(
        f"chain member {gone.name} is gone (a successful run recorded it): 1 restore point(s) "
        f"cannot be restored ({whole[0].name})"
    ), chain.message
    assert "run `usbagent archive` now: it starts a new full" in chain.message
    assert chain.to_json()["broken"] == [
        {"chain": whole[2].name, "level": 1, "failure": "gone", "files": [gone.name],
         "breaks": [whole[0].name]}
    ]  # fmt: skip
    # freshness is judged from the newest point that restores: the 58 h old full
    assert checks["archive"].state == CRITICAL and whole[2].name in checks["archive"].message
    assert statuschecks.overall(list(checks.values())) == CRITICAL
    assert checks_of(replace(facts, archives=whole))["archive-chains"].state == OK


def test_a_member_failing_its_sidecar_breaks_the_later_points() -> None:
    whole = nights((0, 34), (1, 22), (2, 10))
    damaged = replace(whole[1], sidecar="cd" * 32)
    checks = checks_of(replace(healthy(), archives=(whole[0], damaged, whole[2])))
    chain = checks["archive-chains"]
    assert chain.state == CRITICAL
    assert chain.message.startswith(
        f"chain member {damaged.name} fails its sidecar: it states another sha256"
    )
    assert f"({whole[0].name})" in chain.message
    assert checks["archive"].state == CRITICAL  # the full is 34 h old: nothing fresh restores


def test_increments_without_their_full_are_no_backup() -> None:
    whole = nights((0, 34), (1, 10))
    checks = checks_of(replace(healthy(), archives=(whole[0],)))
    assert checks["archive"].state == CRITICAL
    assert "none with its whole chain: see archive-chains" in checks["archive"].message
    assert checks["archive-chains"].message.startswith(
        f"chain member {whole[1].name} is missing (no file, no record)"
    )


def test_an_older_chain_broken_is_mended_from_a_stick_not_by_a_new_full() -> None:
    old = nights((0, 8 * 24), (1, 7 * 24), (2, 6 * 24))
    current = nights((0, 34), (1, 10))
    facts = replace(
        healthy(),
        archives=(*current, old[0], old[2]),
        recorded=frozenset(a.name for a in old + current),
    )
    checks = checks_of(facts)
    chain = checks["archive-chains"]
    assert chain.state == CRITICAL and old[1].name in chain.message
    assert "it starts a new full" not in chain.message
    assert f"copy {old[1].name} and its sidecar back into /data/backups" in chain.message
    assert "if none does, those restore points cannot be restored: move them out" in chain.message
    assert checks["archive"].state == OK and current[0].name in checks["archive"].message


def test_a_newest_full_older_than_twice_full_every_days_is_a_warning_naming_its_age() -> None:
    full_h = 14 * 24 + 11  # the default full_every_days is 7
    archives = nights((0, full_h), *((n, full_h - 24 * n) for n in range(1, 15)))
    checks = checks_of(replace(healthy(), archives=archives))
    assert checks["archive"].state == OK  # last night's increment is fresh
    full = checks["full-archive"]
    assert full.state == WARNING
    assert full.message.startswith(f"newest full archive {archives[-1].name} is 14 d 11 h old")
    assert "due every 7 d, archive.full_every_days" in full.message
    assert "its chain holds 15 archives" in full.message
    assert statuschecks.overall(list(checks.values())) == WARNING
    younger = (*archives[:-1], made(hours_ago(13 * 24)))
    assert checks_of(replace(healthy(), archives=younger))["full-archive"].state == OK


def test_each_stick_says_the_newest_restore_point_it_restores_completely() -> None:
    inc = "host-20261126T020000Z.inc2.20261124T020000Z.tar.zst.age"
    point = "host-20261125T020000Z.inc1.20261124T020000Z.tar.zst.age"
    stick = replace(
        healthy().sticks[0],
        newest_archive=inc,  # its level 1 is not on the stick: level 2 restores nothing
        restore_point=point,
        restore_point_made=datetime(2026, 11, 25, 2, 0, tzinfo=UTC),
    )
    message = checks_of(replace(healthy(), sticks=(stick,)))["stick SOVB (1234-abcd)"].message
    assert f"restores completely to {point} (made 2026-11-25 02:00 UTC)" in message

    bare = replace(stick, restore_point=None, restore_point_made=None)
    message = checks_of(replace(healthy(), sticks=(bare,)))["stick SOVB (1234-abcd)"].message
    assert "no complete restore point on it" in message
