"""A state dir written by the previous version (before typed details and the journal) is
still read: status, metrics and notifications take its outcomes as they are; and what the
journal keeps per kind outlives the bounded history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from usbagent import journal, metrics, naming, notify, state, statuschecks, statusfacts
from usbagent.config import AgentConfig, ArchiveConfig, Config
from usbagent.details import ArchiveDetails, SyncDetails
from usbagent.events import Outcome

NOW = datetime.now(UTC).replace(microsecond=0)
SHA = "ab" * 32


def old_state_dir(root: Path) -> Config:
    """Files exactly as the previous version wrote them (its shapes, its wording)."""
    destination, state_dir = root / "archives", root / "state"
    (state_dir / "last").mkdir(parents=True)
    destination.mkdir()
    name = naming.make("host", NOW - timedelta(hours=1)).filename
    (destination / name).write_bytes(b"x" * 10)
    (destination / (name + ".sha256")).write_text(f"{SHA}  {name}\n")
    archive = {
        "kind": "archive",
        "ok": True,
        "summary": f"archive {name} written",
        "time": (NOW - timedelta(hours=1)).isoformat(),
        "details": {"archive": name, "size": 10, "sha256": SHA, "duration": 2.5},
    }
    synced = {
        "kind": "sync",
        "ok": True,
        "time": NOW.isoformat(),
        "summary": "copied 1 archive(s) (10 B) to UA, verified; 1.0 GiB free; "
        "safe to remove after unmount",
        "details": {
            "label": "UA",
            "uuid": "1234-abcd",
            "fstype": "vfat",
            "copied": [name],
            "bytes": 10,
            "verified": 1,
            "replaced": [],
            "corrupt": [],
            "foreign": [],
            "pruned": [],
            "free_bytes": 2**30,
            "archives": [name],
            "duration": 1.0,
        },
    }
    failed = {
        "kind": "sync",
        "ok": False,
        "time": (NOW - timedelta(days=1)).isoformat(),
        "summary": "UA plugged in but not backed up: mount failed: busy",
        "details": {"label": "UA", "uuid": "1234-abcd", "device": "/dev/sdb1", "fstype": "vfat"},
    }  # the agent's own shape for its failures
    for kind, data in (("archive", archive), ("sync", synced)):
        (state_dir / "last" / f"{kind}.json").write_text(json.dumps(data))
    (state_dir / "last-error.json").write_text(json.dumps(failed))
    lines = [json.dumps(d) for d in (failed, archive, synced)]
    (state_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    return Config(
        archive=ArchiveConfig(destination=destination, prefix="host"),
        agent=AgentConfig(state_dir=state_dir),
    )  # fmt: skip


def test_status_reads_a_state_dir_the_previous_version_wrote(tmp_path: Path) -> None:
    config = old_state_dir(tmp_path)
    checks = {c.name: c for c in statuschecks.evaluate(statusfacts.gather(config), config, NOW)}
    assert checks["archive"].state == statuschecks.OK, checks["archive"]
    assert "UA (1234-abcd)" in checks["last-sync"].message
    assert "1 copied, 1 verified, 1.0 GiB free" in checks["last-sync"].message


def test_typed_views_of_old_outcomes(tmp_path: Path) -> None:
    config = old_state_dir(tmp_path)
    last_sync = state.last(config.agent.state_dir, "sync")
    last_archive = state.last(config.agent.state_dir, "archive")
    error = state.last_error(config.agent.state_dir)
    assert last_sync is not None and last_archive is not None and error is not None
    assert SyncDetails.of(last_sync).removal is None  # not said then
    assert SyncDetails.of(error).copied is None and SyncDetails.of(error).label == "UA"
    made = ArchiveDetails.of(last_archive)
    assert made is not None and (made.size, made.duration) == (10, 2.5)
    note = notify.render(last_sync)
    assert note is not None and note.body == last_sync.summary
    text = metrics.render(metrics.gather(config.agent))
    assert "usbagent_last_archive_size_bytes 10\n" in text
    assert "usbagent_last_archive_duration_seconds 2.5\n" in text


def test_status_knows_the_last_good_run_after_failures_trimmed_it_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive the last good run wrote, deleted, is reported as lost even when many
    failures since pushed that run out of events.jsonl (and last/archive.json failed too)."""
    config = old_state_dir(tmp_path)
    agent = config.agent
    (agent.state_dir / "events.jsonl").unlink()
    (agent.state_dir / "last" / "archive.json").unlink()
    name = naming.make("host", NOW - timedelta(minutes=30)).filename
    (config.archive.destination / name).write_bytes(b"y" * 5)
    (config.archive.destination / (name + ".sha256")).write_bytes(naming.sidecar_line(name, SHA))
    made = {"archive": name, "size": 5, "sha256": SHA}
    journal.record(agent, Outcome("archive", True, "made", NOW - timedelta(minutes=30), made))
    monkeypatch.setattr(state, "MAX_EVENTS", 2)  # trim to 2 events once over 2 KiB
    for i in range(40):
        journal.record(agent, Outcome("archive", False, f"tar exited 2 ({i})", NOW))
    (config.archive.destination / name).unlink()
    checks = {c.name: c for c in statuschecks.evaluate(statusfacts.gather(config), config, NOW)}
    assert checks["archive-files"].state == statuschecks.CRITICAL
    assert f"newest archive {name}" in checks["archive-files"].message
    assert "is gone from" in checks["archive-files"].message
