"""Producers build typed details: what they store is exactly what the typed readers see.

Each producer of a stick or unit outcome is run for real (syncwords' outcomes, `told`,
the agent's own stick facts, the OnFailure/ExecStopPost hook's outcome); its JSON must use
only the keys the typed view knows (a misspelt or unknown key fails), and reading it back
and storing it again must give the same JSON (nothing the reader expects is missing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from usbagent import syncwords
from usbagent.config import ArchiveConfig, Config
from usbagent.details import (
    ArchiveDetails,
    ForeignDetails,
    SourceDetails,
    SyncDetails,
    UnitDetails,
    to_json,
)
from usbagent.devices import Partition
from usbagent.events import Outcome
from usbagent.journal import StickReport
from usbagent.plan import Audit, Foreign, StickFile
from usbagent.stickjob import facts
from usbagent.synclocal import CorruptLocal
from usbagent.unitfailure import outcome_for, with_job_reason

A, B, C = (f"host-2026112{i}T020000Z.tar.zst.age" for i in (1, 2, 3))
SYNC_KEYS = {f.name for f in dataclasses.fields(SyncDetails)}


def busy_run() -> syncwords.Run:
    """A run that did a bit of everything a sync reports."""
    run = syncwords.Run("UA (1234-abcd)", "UA", "1234-abcd", "vfat")
    run.audit = Audit(
        present=(StickFile(A, 10, "a" * 64),),
        replace=(),
        corrupt=("old.tar.zst.age",),
        foreign=(Foreign(C, 5, "differs"),),
        fix_sidecars=(),
    )
    run.copied = [StickFile(B, 20, "b" * 64)]
    run.copied_bytes = 20
    run.pruned = [A]
    run.removed_corrupt = [B]
    run.planned = 2
    run.free_bytes = 2**30
    run.future = (C,)
    run.corrupt_local = [CorruptLocal(Path("/srv/x"), "c" * 64, "d" * 64)]
    return run


def sync_outcomes() -> dict[str, Outcome]:
    config = Config(archive=ArchiveConfig(destination=Path("/srv/backups")))
    run = busy_run()
    ok = syncwords.Run("UA", "UA", "1234-abcd", "ext4")
    ok.audit = Audit((StickFile(A, 10, "a" * 64),), (), (), (), ())
    ok.free_bytes = 2**30
    done = syncwords.finished(ok, config, have_local=True)
    stick = Partition("/dev/sdb1", "/dev/sdb1", "UA", "", "1234-abcd", "vfat", 2**33, "usb", "d")
    told = syncwords.told(StickReport(done, "1234-abcd", "UA"), "powered-off", repaired=True)
    return {
        "finished": done,
        "told": told.outcome,
        "failed": syncwords.failed(run, "the stick is full"),
        "pulled": syncwords.pulled(run),
        "refused": syncwords.refused_outcome(stick, "vfat is not allowed"),
        "agent facts": Outcome("sync", False, "mount failed", details=facts(stick)),
    }


@pytest.mark.parametrize("name", list(sync_outcomes()))
def test_stick_outcomes_store_only_typed_fields_and_read_back_whole(name: str) -> None:
    outcome = sync_outcomes()[name]
    assert set(outcome.details) <= SYNC_KEYS, set(outcome.details) - SYNC_KEYS
    stored = json.loads(json.dumps(outcome.to_json()))  # as the state dir holds it
    assert SyncDetails.of(Outcome.from_json(stored)).to_json() == outcome.details


def test_what_a_sync_reports_is_what_the_typed_view_says() -> None:
    outcomes = sync_outcomes()
    failed = SyncDetails.of(outcomes["failed"])
    assert failed.copied == (B,) and failed.verified == 1 and failed.archives == (B,)
    assert failed.foreign == (ForeignDetails(C, "differs"),)
    assert failed.corrupt_local == ("/srv/x",) and failed.error == "the stick is full"
    assert SyncDetails.of(outcomes["pulled"]).error == syncwords.REMOVED
    assert SyncDetails.of(outcomes["refused"]).reason == "vfat is not allowed"
    told = SyncDetails.of(outcomes["told"])
    assert (told.removal, told.unmounted, told.powered_off, told.repaired) == (
        "powered-off", True, True, True
    )  # fmt: skip
    assert told.removable and told.verified == 1 and told.free_bytes == 2**30
    agent = SyncDetails.of(outcomes["agent facts"])
    assert (agent.label, agent.device, agent.copied) == ("UA", "/dev/sdb1", None)


def test_told_keeps_every_fact_the_sync_reported() -> None:
    run = busy_run()
    done = syncwords.Outcome("sync", True, "copied", details=run.details().to_json())
    told = syncwords.told(StickReport(done, "1234-abcd", "UA"), "unmounted")
    said = told.outcome.details
    assert {k: v for k, v in said.items() if k in done.details} == done.details
    assert said["removal"] == "unmounted" and said["powered_off"] is False


def test_not_said_is_left_out_and_old_shapes_read_as_not_said() -> None:
    assert SyncDetails(label="UA", uuid="u").to_json() == {"label": "UA", "uuid": "u", "fstype": ""}
    old = Outcome("sync", False, "x", details={"label": "UA", "foreign": "garbage", "copied": 3})
    view = SyncDetails.of(old)
    assert view.foreign is None and view.copied is None and view.label == "UA"


def test_unit_failures_store_the_hooks_facts_flat_as_before() -> None:
    env = {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"}
    hung = outcome_for("usbagent.service", env)
    assert hung is not None
    # the JSON earlier versions wrote (state dirs and tests read these keys)
    assert hung.details == {
        "unit": "usbagent.service", "via": "ExecStopPost",
        "Result": "watchdog", "ExecMainCode": "2", "ExecMainStatus": "ABRT",
    }  # fmt: skip
    typed = UnitDetails.of(hung)
    assert typed is not None and typed.systemd["Result"] == "watchdog"
    assert typed.to_json() == hung.details
    archive_unit = Outcome(
        "unit-failed", False, "failed", details=UnitDetails("usbagent-archive.service",
                                                            "OnFailure").to_json()
    )  # fmt: skip
    job = Outcome("archive", False, "recipients file /x does not exist", time=archive_unit.time)
    with_reason = with_job_reason(archive_unit, job, archive_unit.time)
    view = UnitDetails.of(with_reason)
    assert view is not None and view.reason == "recipients file /x does not exist"
    assert UnitDetails.of(Outcome("sync", True, "x")) is None


def test_archive_details_for_the_archive_job_to_adopt() -> None:
    """The API helper "levels" can build archive.py's details with (same JSON as today)."""
    made = ArchiveDetails(
        archive=A, size=10, sha256="a" * 64, duration=1.5, pruned=(B,), warnings=(),
        sources=(SourceDetails("/etc", 3, 100),),
    )  # fmt: skip
    assert made.to_json() == {
        "archive": A, "size": 10, "sha256": "a" * 64, "duration": 1.5, "pruned": [B],
        "warnings": [], "sources": [{"path": "/etc", "members": 3, "bytes": 100}],
    }  # fmt: skip
    assert ArchiveDetails.of(Outcome("archive", True, "x", details=made.to_json())) == made
    assert to_json(ForeignDetails("n", "why")) == {"name": "n", "why": "why"}


def test_archive_details_say_the_level_and_chain_and_old_outcomes_say_neither() -> None:
    made = ArchiveDetails(archive=B, level=2, full=A, full_because=None)
    assert made.to_json() == {"archive": B, "sha256": "", "level": 2, "full": A}
    assert ArchiveDetails.of(Outcome("archive", True, "x", details=made.to_json())) == made
    forced = ArchiveDetails(archive=A, level=0, full=A, full_because="snapshot-missing")
    assert ArchiveDetails.of(Outcome("archive", True, "x", details=forced.to_json())) == forced
    old = ArchiveDetails.of(Outcome("archive", True, "x", details={"archive": A}))
    assert old is not None and (old.level, old.full, old.full_because) == (None, None, None)
