"""The state dir's archive journal: what `status` trusts, kept beyond the bounded history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from usbagent import journal, state
from usbagent.config import AgentConfig
from usbagent.events import Outcome

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def made(n: int, ok: bool = True, **details: object) -> Outcome:
    name = f"host-2026110{n % 10}T020000Z.tar.zst.age"
    fields = {"archive": name, "size": 100 + n, "sha256": f"{n:064x}", **details}
    return Outcome("archive", ok, f"run {n}", T0 + timedelta(days=n), fields)


def test_successful_runs_are_journaled_newest_first_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "MAX_ARCHIVES", 3)
    agent = AgentConfig(state_dir=tmp_path)
    for n in range(5):
        journal.record(agent, made(n))
    journal.record(agent, made(5, ok=False))  # a failed run made no backup
    journal.record(agent, Outcome("sync", True, "copied", details=made(6).details))
    entries = json.loads((tmp_path / "archives.json").read_text())
    assert [e["size"] for e in entries] == [104, 103, 102]
    assert entries[0] == {
        "name": "host-20261104T020000Z.tar.zst.age",
        "size": 104,
        "sha256": f"{4:064x}",
        "recorded": (T0 + timedelta(days=4)).isoformat(),
    }
    known = state.archives(tmp_path)
    assert sorted(r.size for r in known.values()) == [102, 103, 104]


def test_a_damaged_journal_entry_is_skipped_not_fatal(tmp_path: Path) -> None:
    good = {"name": "b", "size": 1, "sha256": "0" * 64, "recorded": T0.isoformat()}
    bad_digest = {**good, "name": "c", "sha256": "x"}
    entries = [{"name": "a"}, 7, good, bad_digest, {**good, "name": "d", "size": "big"}]
    (tmp_path / "archives.json").write_text(json.dumps(entries))
    assert list(state.archives(tmp_path)) == ["b"]
