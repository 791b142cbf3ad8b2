"""node_exporter textfile metrics, written by journal.record and validated by promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from usbagent import journal, metrics, state
from usbagent.config import AgentConfig
from usbagent.events import Outcome

T1 = datetime(2026, 11, 25, 2, 0, 5, tzinfo=UTC)
T2 = datetime(2026, 11, 26, 2, 0, 5, tzinfo=UTC)


def promtool_check(path: Path) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool missing: run `make system-deps` (Debian package prometheus)")
        pytest.skip("promtool missing (Debian package prometheus)")
    with path.open("rb") as f:
        r = subprocess.run([tool, "check", "metrics"], stdin=f, capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    assert not (r.stdout + r.stderr).strip(), (r.stdout + r.stderr).decode()  # no lint warnings


def samples(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def agent(tmp_path: Path) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", metrics_file=tmp_path / "usbagent.prom")


def test_record_writes_valid_metrics_with_the_last_successes_and_error_counts(
    agent: AgentConfig,
) -> None:
    details = {"archive": "h-20261125T020000Z.tar.zst.age", "size": 1234, "duration": 2.5}
    journal.record(agent, Outcome("archive", True, "ok", T1, details))
    journal.record(agent, Outcome("sync", True, "copied", T1))
    journal.record(agent, Outcome("archive", False, "tar failed", T2))  # newer, but failed
    journal.record(agent, Outcome("refused", False, "ext2", T2))
    journal.record(agent, Outcome("refused", False, "ext2", T2))
    assert agent.metrics_file is not None
    promtool_check(agent.metrics_file)
    got = samples(agent.metrics_file)
    assert got["usbagent_last_archive_timestamp_seconds"] == T1.timestamp()
    assert got["usbagent_last_archive_size_bytes"] == 1234
    assert got["usbagent_last_archive_duration_seconds"] == 2.5
    assert got["usbagent_last_stick_sync_timestamp_seconds"] == T1.timestamp()
    assert got['usbagent_errors_total{kind="archive"}'] == 1
    assert got['usbagent_errors_total{kind="refused"}'] == 2
    assert got['usbagent_errors_total{kind="sync"}'] == 0
    assert not list(agent.metrics_file.parent.glob("*.partial"))


def test_fresh_install_reports_never_as_zero(agent: AgentConfig) -> None:
    assert agent.metrics_file is not None
    metrics.write(agent)
    promtool_check(agent.metrics_file)
    got = samples(agent.metrics_file)
    assert got["usbagent_last_archive_timestamp_seconds"] == 0
    assert got["usbagent_last_stick_sync_timestamp_seconds"] == 0
    assert "usbagent_last_archive_size_bytes" not in got  # unknown, not a fake 0 bytes


def test_unwritable_metrics_folder_does_not_fail_the_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = AgentConfig(state_dir=tmp_path / "state", metrics_file=tmp_path / "missing" / "u.prom")
    journal.record(agent, Outcome("archive", True, "ok", T1, {"size": 1}))
    assert state.last(agent.state_dir, "archive") is not None
    assert "cannot write metrics file" in caplog.text


def test_errors_total_only_grows_when_the_history_is_trimmed(agent: AgentConfig) -> None:
    """Prometheus reads any drop of a counter as a reset (and `increase()` then counts the
    whole value again); a counter that stands still while errors happen hides them."""
    assert agent.metrics_file is not None
    for _ in range(3):
        journal.record(agent, Outcome("sync", False, "read-back mismatch", T1))
    assert samples(agent.metrics_file)['usbagent_errors_total{kind="sync"}'] == 3
    history = agent.state_dir / "events.jsonl"
    history.write_text(history.read_text().splitlines(keepends=True)[-1])  # as trimming does
    journal.record(agent, Outcome("sync", False, "read-back mismatch", T2))
    journal.record(agent, Outcome("archive", True, "ok", T2))
    got = samples(agent.metrics_file)
    assert got['usbagent_errors_total{kind="sync"}'] == 4
    assert got['usbagent_errors_total{kind="archive"}'] == 0
    promtool_check(agent.metrics_file)


def test_error_counts_start_from_the_history_and_thresholds_are_exported(
    tmp_path: Path,
) -> None:
    """An install that turns metrics on later starts from what its history holds."""
    plain = AgentConfig(state_dir=tmp_path / "state")
    journal.record(plain, Outcome("archive", False, "tar failed", T1))
    journal.record(plain, Outcome("refused", False, "ext2", T1))
    agent = AgentConfig(
        state_dir=plain.state_dir,
        metrics_file=tmp_path / "usbagent.prom",
        stale_after_hours=30,
        usb_stale_after_days=2.5,
    )
    journal.record(agent, Outcome("archive", False, "tar failed", T2))
    assert agent.metrics_file is not None
    got = samples(agent.metrics_file)
    assert got['usbagent_errors_total{kind="archive"}'] == 2
    assert got['usbagent_errors_total{kind="refused"}'] == 1
    assert got["usbagent_archive_stale_after_seconds"] == 30 * 3600
    assert got["usbagent_stick_sync_stale_after_seconds"] == 2.5 * 86400


def test_the_newest_success_outlives_the_history_trimming_it(
    agent: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many failures after the last good archive push it out of events.jsonl, and
    last/archive.json is a failure too: the metrics must still date the last good one
    (before, they said 0, "never", and the stale alert fired on a fresh backup's host)."""
    monkeypatch.setattr(state, "MAX_EVENTS", 2)  # trim to 2 events once over 2 KiB
    journal.record(agent, Outcome("archive", True, "made", T1, {"size": 7, "duration": 1.0}))
    for i in range(40):
        journal.record(agent, Outcome("archive", False, f"tar exited 2 ({i})", T2))
    assert all(not o.ok for o in state.events(agent.state_dir))  # the good one is gone
    assert agent.metrics_file is not None
    got = samples(agent.metrics_file)
    assert got["usbagent_last_archive_timestamp_seconds"] == T1.timestamp()
    assert got["usbagent_last_archive_size_bytes"] == 7
    assert got['usbagent_errors_total{kind="archive"}'] == 40
