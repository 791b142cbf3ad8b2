"""The per-stick ledger: what each rotating stick holds and what went wrong last."""

from __future__ import annotations

import json
from pathlib import Path

from usbagent import ledger

UUID_A = "0A24CF09-A0B4-4CC0-BA04-D4D9FD193690"
UUID_B = "c9023ca8-b883-4adb-bbd8-19b81465e218"


def test_ok_sync_records_holdings_free_space_and_newest_verified(tmp_path: Path) -> None:
    ledger.record_ok(tmp_path, UUID_A, "sovereign-backup", ("b-2", "b-1"), 12345, "b-2")

    record = ledger.load(tmp_path, UUID_A)

    assert record is not None
    assert (tmp_path / "sticks" / f"{UUID_A.lower()}.json").is_file()
    assert record.uuid == UUID_A.lower() and record.label == "sovereign-backup"
    assert record.archives == ("b-2", "b-1") and record.free_bytes == 12345
    assert record.last_verified_copy == "b-2"
    assert record.last_ok_sync and record.last_seen and record.last_verified_time
    assert record.last_error == ""


def test_error_is_recorded_without_forgetting_what_the_stick_holds(tmp_path: Path) -> None:
    ledger.record_ok(tmp_path, UUID_A, "sovereign-backup", ("b-1",), 100, "b-1")
    first_ok = ledger.load(tmp_path, UUID_A).last_ok_sync  # type: ignore[union-attr]

    ledger.record_error(tmp_path, UUID_A, "", "sync to sovereign-backup failed: I/O error")

    record = ledger.load(tmp_path, UUID_A)
    assert record is not None
    assert record.last_error == "sync to sovereign-backup failed: I/O error"
    assert record.last_error_time >= record.last_ok_sync == first_ok
    assert record.archives == ("b-1",) and record.free_bytes == 100
    assert record.label == "sovereign-backup"  # an empty label does not erase the known one


def test_sticks_lists_every_stick_most_recently_seen_first(tmp_path: Path) -> None:
    ledger.record_ok(tmp_path, UUID_A, "a", (), 1, "")
    ledger.record_error(tmp_path, UUID_B, "b", "refused: UUID not enrolled")

    assert [r.uuid for r in ledger.sticks(tmp_path)] == [UUID_B, UUID_A.lower()]
    assert ledger.sticks(tmp_path / "nothing-here") == []


def test_a_uuid_that_cannot_name_a_file_safely_is_not_written(tmp_path: Path) -> None:
    ledger.record_error(tmp_path, "../../etc/passwd", "x", "refused")

    assert not (tmp_path / "sticks").exists()
    assert ledger.load(tmp_path, "../../etc/passwd") is None


def test_an_unreadable_ledger_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "sticks").mkdir()
    (tmp_path / "sticks" / "broken.json").write_text("{not json")
    ledger.record_ok(tmp_path, UUID_B, "b", (), 1, "")

    assert [r.uuid for r in ledger.sticks(tmp_path)] == [UUID_B]


def test_the_hash_of_each_verified_copy_is_kept_and_an_error_keeps_what_is_known(
    tmp_path: Path,
) -> None:
    from usbagent.plan import StickFile

    copies = (StickFile("b-2", 10, "2" * 64), StickFile("b-1", 9, "1" * 64))
    ledger.record_ok(tmp_path, UUID_A, "s", ("b-2", "b-1"), 1, "b-2", copies=copies)
    assert ledger.load(tmp_path, UUID_A).copies == copies  # type: ignore[union-attr]

    ledger.record_error(tmp_path, UUID_A, "s", "refused: no space")  # nothing looked at
    assert ledger.load(tmp_path, UUID_A).copies == copies  # type: ignore[union-attr]

    ledger.record_error(tmp_path, UUID_A, "s", "failed", ("b-2",), 1, copies=copies[:1])
    assert ledger.load(tmp_path, UUID_A).copies == copies[:1]  # type: ignore[union-attr]


def test_a_ledger_written_before_copies_were_recorded_still_loads(tmp_path: Path) -> None:
    path = ledger.path_for(tmp_path, UUID_B)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"uuid": UUID_B, "archives": ["b-1"], "last_verified_copy": "b-1"}))
    record = ledger.load(tmp_path, UUID_B)
    assert record is not None and record.archives == ("b-1",) and record.copies == ()


def _chain_names() -> tuple[str, str, str, str]:
    from datetime import UTC, datetime, timedelta

    from usbagent import naming

    t0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    full = naming.make("h", t0).filename
    inc = [naming.make("h", t0 + timedelta(days=n), n, t0).filename for n in (1, 2, 3)]
    return full, inc[0], inc[1], inc[2]


def test_the_stick_restores_to_its_newest_point_whose_whole_chain_it_holds(
    tmp_path: Path,
) -> None:
    full, inc1, _, inc3 = _chain_names()
    # level 2 is missing on the stick: levels 2 and 3 are not restorable, level 1 is
    ledger.record_ok(tmp_path, UUID_A, "a", (inc3, inc1, full), 1, inc3)

    record = ledger.load(tmp_path, UUID_A)

    assert record is not None and record.restore_point is not None
    assert record.restore_point.archive.filename == inc1
    assert record.last_verified_copy == inc3  # the newest copy is not the newest point
    saved = json.loads((tmp_path / "sticks" / f"{UUID_A.lower()}.json").read_text())
    assert saved["restore_point"] == inc1
    assert saved["restore_point_made"] == "2026-11-02T02:00:00+00:00"
    assert saved["broken"] == [inc3]
    assert ledger.load(tmp_path, UUID_A) == record  # the derived keys do not break reading


def test_a_stick_with_increments_but_no_full_has_no_restore_point(tmp_path: Path) -> None:
    _, inc1, inc2, _ = _chain_names()
    ledger.record_error(tmp_path, UUID_A, "a", "failed", (inc2, inc1))

    record = ledger.load(tmp_path, UUID_A)

    assert record is not None and record.restore_point is None


def test_a_ledger_of_fulls_an_older_version_wrote_restores_to_its_newest(tmp_path: Path) -> None:
    old = {"uuid": UUID_B, "archives": ["h-20261102T020000Z.tar.zst.age",
                                        "h-20261101T020000Z.tar.zst.age"]}  # fmt: skip
    (tmp_path / "sticks").mkdir()
    (tmp_path / "sticks" / f"{UUID_B}.json").write_text(json.dumps(old))

    record = ledger.load(tmp_path, UUID_B)

    assert record is not None and record.restore_point is not None
    assert record.restore_point.archive.filename == "h-20261102T020000Z.tar.zst.age"
