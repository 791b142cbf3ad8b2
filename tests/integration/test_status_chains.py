"""`usbagent status` and `doctor` on incremental archives, through the CLI on real files.

The archives, sidecars and state dir are what a successful run leaves (the outcome recorded
through `journal.record`, as the archive job does); the faults are made on them as a person
or a failing disk would: an increment removed, a sidecar rewritten, fulls that stop coming, a
snapshot whose archive was deleted by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration import test_status_doctor as shared
from tests.integration.archive_helpers import Setup, make_setup
from tests.integration.test_increments import night, shift
from tests.integration.test_status_doctor import (
    PREFIX,
    Deployment,
    by_name,
    heartbeat,
    synced_stick,
)
from usbagent import health, journal, naming, snapshots
from usbagent.events import Outcome

deployment = shared.deployment  # the fixtures, shared with the status/doctor tests
agent_process = shared.agent_process


def archive(d: Deployment, made: datetime, level: int = 0, full: str | None = None) -> str:
    """An archive of `level` (on the full named `full`), its sidecar and the outcome its
    successful run recorded."""
    base = naming.parse(full) if full else None
    name = naming.make(PREFIX, made, level, base.created if base else None)
    data = os.urandom(2048)
    dest = d.config.archive.destination
    (dest / name.filename).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (dest / name.sidecar).write_bytes(naming.sidecar_line(name.filename, digest))
    details = {"archive": name.filename, "size": len(data), "sha256": digest, "level": level,
               "full": full or name.filename}  # fmt: skip
    outcome = Outcome("archive", True, f"archive {name.filename} written",
                      name.created + timedelta(seconds=30), details)  # fmt: skip
    journal.record(d.config.agent, outcome)
    return name.filename


def chain(d: Deployment, full_days_ago: float, nights: int) -> list[str]:
    """A full made `full_days_ago` days ago, then `nights - 1` increments on it, a day apart
    (oldest first)."""
    start = datetime.now(UTC) - timedelta(days=full_days_ago)
    names = [archive(d, start)]
    for n in range(1, nights):
        names.append(archive(d, start + timedelta(days=n), n, names[0]))
    return names


def healthy(d: Deployment, pid: int, newest: str) -> None:
    heartbeat(d, pid)
    synced_stick(d, newest)


def test_status_counts_last_nights_increment_and_a_gone_member_is_critical(
    deployment: Deployment, agent_process: int
) -> None:
    names = chain(deployment, 2 + 3 / 24, 3)  # full 51 h ago, inc1 27 h ago, inc2 3 h ago
    healthy(deployment, agent_process, names[-1])
    code, doc = deployment.status()
    assert (code, doc["state"]) == (0, "OK"), doc
    fresh = by_name(doc)["archive"]
    assert fresh["newest"] == names[2]
    assert f"{names[2]} (increment 2 on {names[0]})" in fresh["message"]
    assert by_name(doc)["archive-chains"]["state"] == "OK"

    dest = deployment.config.archive.destination
    (dest / names[1]).unlink()
    (dest / (names[1] + naming.SIDECAR)).unlink()
    code, doc = deployment.status()
    assert (code, doc["state"]) == (2, "CRITICAL")
    broken = by_name(doc)["archive-chains"]
    assert broken["state"] == "CRITICAL"
    assert broken["message"].startswith(
        f"chain member {names[1]} is gone (a successful run recorded it): 1 restore point(s) "
        f"cannot be restored ({names[2]})"
    ), broken["message"]
    assert broken["broken"] == [
        {"chain": names[0], "level": 1, "failure": "gone", "files": [names[1]],
         "breaks": [names[2]]}
    ]  # fmt: skip
    # last night's increment restores nothing now: freshness falls back to the 51 h old full
    assert by_name(doc)["archive"]["state"] == "CRITICAL"
    assert by_name(doc)["archive"]["newest"] == names[0]
    text = deployment.cli("status")
    assert text.returncode == 2 and f"chain member {names[1]} is gone" in text.stdout


def test_a_member_failing_its_sidecar_is_critical_in_status_and_doctor(
    deployment: Deployment, agent_process: int, stack: object
) -> None:
    names = chain(deployment, 2 + 3 / 24, 3)
    healthy(deployment, agent_process, names[-1])
    sidecar = deployment.config.archive.destination / (names[1] + naming.SIDECAR)
    sidecar.write_bytes(naming.sidecar_line(names[1], "0" * 64))
    code, doc = deployment.status()
    assert code == 2
    message = by_name(doc)["archive-chains"]["message"]
    assert message.startswith(f"chain member {names[1]} fails its sidecar"), message
    assert "run `usbagent archive` now: it starts a new full" in message

    r = deployment.cli("doctor")
    assert r.returncode == 1, r.stdout
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("PROBLEM  chain ")]
    assert line.startswith(f"PROBLEM  chain {names[0]}: {names[1]} fails its sidecar")
    assert f"restore point(s) {names[2]} cannot be restored. Fix: run `usbagent archive`" in line


def test_a_newest_full_older_than_twice_full_every_days_warns_with_its_age(
    deployment: Deployment, agent_process: int
) -> None:
    """Daily increments keep the archive fresh, yet no full came for 15 days."""
    names = chain(deployment, 15 + 3 / 24, 16)
    healthy(deployment, agent_process, names[-1])
    code, doc = deployment.status()
    assert (code, doc["state"]) == (1, "WARNING"), doc
    full = by_name(doc)["full-archive"]
    assert full["state"] == "WARNING" and doc["checks"][0]["name"] == "full-archive"
    assert full["message"].startswith(f"newest full archive {names[0]} is 15 d 3 h old")
    assert "due every 7 d, archive.full_every_days" in full["message"]
    assert full["newest_full"] == names[0]
    assert by_name(doc)["archive"]["state"] == "OK"


def test_doctor_flags_a_snapshot_of_no_archive_and_a_missing_full(
    deployment: Deployment, stack: object
) -> None:
    names = chain(deployment, 3, 3)
    folder = deployment.config.agent.state_dir / "snapshots"
    folder.mkdir()
    for name in names:  # as the archive job leaves them: the snapshot and its digest
        (folder / (name + ".snar")).write_bytes(b"GNU tar-1.34-2\n")
        (folder / (name + ".snar.json")).write_text('{"sha256": "", "selection": ""}\n')
    (folder / (names[-1] + ".snar.partial")).write_bytes(b"")  # a running job's: not flagged
    r = deployment.cli("doctor")
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "doctor: all good"), r.stdout

    dest = deployment.config.archive.destination
    (dest / names[0]).unlink()  # the full, removed by hand
    r = deployment.cli("doctor")
    assert r.returncode == 1
    lines = [x for x in r.stdout.splitlines() if x.startswith("PROBLEM")]
    orphan = folder / (names[0] + ".snar")
    assert lines[-1] == (
        f"PROBLEM  snapshot: {orphan} belongs to no archive in {dest} (its archive was removed "
        "other than by retention, or archive.destination or archive.prefix changed): it is "
        f"never used again. Fix: rm {orphan} {orphan}.json (the archive job never reads it; if "
        "an archive was removed by hand, `usbagent status` names the chains that lost it)"
    ), r.stdout
    (chain_line,) = [x for x in lines if x.startswith("PROBLEM  chain ")]
    assert chain_line.startswith(
        f"PROBLEM  chain {names[0]}: {names[0]} is gone (a successful run recorded it): "
        f"restore point(s) {names[1]}, {names[2]} cannot be restored. Fix: run `usbagent archive`"
    ), chain_line
    assert r.stdout.splitlines()[-1] == "doctor: 2 problem(s) found"


def test_the_agents_freshness_watch_does_not_count_an_increment_whose_chain_is_broken(
    deployment: Deployment,
) -> None:
    """The agent publishes "stale" from the same judgement: last night's increment with its
    lower level removed is no fresh backup."""
    names = chain(deployment, 2 + 3 / 24, 3)
    config = deployment.config
    assert health.archive_freshness(config, datetime.now(UTC)) is None
    (config.archive.destination / names[1]).unlink()
    stale = health.archive_freshness(config, datetime.now(UTC))
    assert stale is not None and stale.kind == "stale"
    assert stale.summary.startswith(f"newest archive {names[0]} is 2 d 3 h old")
    assert names[2] not in stale.summary


# --- real nights: `usbagent archive` runs ------------------------------------------------


def checks_of(s: Setup) -> dict[str, dict[str, Any]]:
    r = s.cli("status", "--json")
    assert r.returncode in (0, 1, 2), r.stderr
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def doctor_problems(s: Setup, *starts: str) -> list[str]:
    lines = s.cli("doctor").stdout.splitlines()
    return [x for x in lines if x.startswith(tuple(f"PROBLEM  {p}" for p in starts))]


def test_real_nights_a_member_removed_by_hand_then_the_next_night(tmp_path: Path) -> None:
    """Three real nights (full, inc1, inc2); a person removes inc1. Status and doctor name
    it and the point it breaks, doctor the snapshot it left; the next real night is a full,
    after which only the older chain's point is lost, and moving it out clears the alarm."""
    s = make_setup(tmp_path)
    night(s)
    shift(s, -timedelta(days=2))
    (s.source / "docs" / "c.txt").write_text("gamma\n")
    night(s)
    shift(s, -timedelta(days=1))
    (s.source / "docs" / "d.txt").write_text("delta\n")
    inc2, _ = night(s)
    full_name, inc1_name, inc2_name = (p.name for p in s.archives())
    assert inc2.level == 2 and inc2.filename == inc2_name
    checks = checks_of(s)
    assert (checks["archive"]["state"], checks["archive"]["newest"]) == ("OK", inc2_name)
    assert checks["archive-chains"]["state"] == "OK"
    assert doctor_problems(s, "chain", "snapshot") == []

    (s.destination / inc1_name).unlink()
    (s.destination / (inc1_name + naming.SIDECAR)).unlink()
    checks = checks_of(s)
    chains = checks["archive-chains"]
    assert chains["state"] == "CRITICAL"
    assert chains["message"].startswith(
        f"chain member {inc1_name} is gone (a successful run recorded it): 1 restore point(s) "
        f"cannot be restored ({inc2_name}); run `usbagent archive` now: it starts a new full"
    ), chains["message"]
    assert checks["archive"]["state"] == "CRITICAL"  # the newest point that restores: 3 d old
    assert checks["archive"]["newest"] == full_name
    problems = doctor_problems(s, "chain", "snapshot")
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"PROBLEM  chain {full_name}: {inc1_name} is gone")
    assert problems[1].startswith(
        f"PROBLEM  snapshot: {snapshots.path(s.state_dir, inc1_name)} belongs to no archive"
    )

    _, outcome = night(s)
    details: Any = outcome["details"]
    assert details["level"] == 0, outcome  # the chain in force was broken: a new full
    checks = checks_of(s)
    assert (checks["archive"]["state"], checks["archive"]["newest"]) == ("OK", details["archive"])
    chains = checks["archive-chains"]
    assert chains["state"] == "CRITICAL" and "it starts a new full" not in chains["message"]
    assert f"move them out of {s.destination} to clear this" in chains["message"]
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in (inc2_name, inc2_name + naming.SIDECAR):
        (s.destination / name).rename(aside / name)
    assert checks_of(s)["archive-chains"]["state"] == "OK"
