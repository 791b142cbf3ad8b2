"""What `usbagent status` and `doctor` say as a monitoring system sees them (real CLI, real
files): a broken config still gives the UNKNOWN line, only archives a recorded run made count
as fresh, and a nightly run that preflight would refuse is CRITICAL now, naming the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_status_doctor as shared
from tests.integration.archive_helpers import Setup, make_setup
from tests.integration.test_status_doctor import (
    PREFIX,
    Deployment,
    by_name,
    heartbeat,
    synced_stick,
)
from tests.unit.test_preflight import need_root, tmpfs
from usbagent import journal, naming, snapshots, state
from usbagent.config import AgentConfig
from usbagent.events import Outcome
from usbagent.fsutil import unwritable

deployment = shared.deployment  # the fixtures, shared with the status/doctor tests
agent_process = shared.agent_process


def usbagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usbagent", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# --- a broken config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "no such file"),
        ("[archive\n", "not valid TOML"),
        ("[agent]\nstale_after_hours = -1\n", "agent.stale_after_hours: must be a positive"),
        ("a folder", "is a folder; --config takes the config file itself"),
        ("\udcff\udcfe", "not UTF-8 text, as TOML must be"),
    ],
    ids=["missing", "not-toml", "bad-key", "a-folder", "not-utf8"],
)
def test_broken_config_gives_the_unknown_line_and_a_json_document(
    tmp_path: Path, text: str | None, says: str
) -> None:
    path = tmp_path / "config.toml"
    if text == "a folder":
        path.mkdir()
    elif text is not None:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    plain = usbagent("--config", str(path), "status")
    assert plain.returncode == 3
    first = plain.stdout.splitlines()[0]
    assert first.startswith(f"usbagent UNKNOWN: config: {path}: "), plain.stdout
    assert says in first
    as_json = usbagent("--config", str(path), "status", "--json")
    assert as_json.returncode == 3
    doc = json.loads(as_json.stdout)
    assert doc["state"] == "UNKNOWN"
    assert [c["name"] for c in doc["checks"]] == ["config"]
    assert says in doc["checks"][0]["message"]
    assert says in as_json.stderr  # the one-line error for a person stays too


def test_help_does_not_list_the_hidden_hook_command() -> None:
    r = usbagent("--help")
    assert r.returncode == 0
    assert "SUPPRESS" not in r.stdout and "notify-failure" not in r.stdout, r.stdout
    assert "status" in r.stdout  # the listing itself is still there
    hook = usbagent("notify-failure", "--help")  # still callable by systemd
    assert hook.returncode == 0 and "unit" in hook.stdout


# --- which files count as archives ------------------------------------------------------------


def status_of(s: Setup) -> dict[str, dict[str, str]]:
    r = s.cli("status", "--json")
    assert r.returncode in (0, 1, 2), r.stderr
    return by_name(json.loads(r.stdout))


def touch_archive_name(folder: Path, prefix: str, when: datetime) -> str:
    """What the issue did: `touch <prefix>-$(date -u +%Y%m%dT%H%M%SZ).tar.zst.age`."""
    name = naming.make(prefix, when).filename
    (folder / name).touch()
    return name


def test_a_touched_archive_name_is_not_a_backup(deployment: Deployment, agent_process: int) -> None:
    touched = touch_archive_name(deployment.config.archive.destination, PREFIX, datetime.now(UTC))
    code, doc = deployment.status()
    checks = by_name(doc)
    assert (code, checks["archive"]["state"]) == (2, "CRITICAL"), checks["archive"]
    assert "no archive a successful run recorded" in checks["archive"]["message"]
    assert "0 B" not in checks["archive"]["message"]
    assert checks["archive-files"]["state"] == "WARNING"
    assert touched in checks["archive-files"]["message"]


def test_a_touched_name_beside_a_real_backup_is_reported_and_not_counted(
    deployment: Deployment, agent_process: int
) -> None:
    heartbeat(deployment, agent_process)
    real = deployment.archive(timedelta(hours=3), size=4096)
    synced_stick(deployment, real)
    code, doc = deployment.status()
    assert (code, doc["state"]) == (0, "OK"), doc
    touched = touch_archive_name(deployment.config.archive.destination, PREFIX, datetime.now(UTC))
    code, doc = deployment.status()
    checks = by_name(doc)
    assert (code, doc["state"]) == (1, "WARNING"), doc
    assert checks["archive"]["state"] == "OK" and real in checks["archive"]["message"]
    assert touched not in checks["archive"]["message"]
    assert checks["archive-files"]["message"].startswith(
        "1 file(s) with an archive name that no successful usbagent run recorded, newest "
        f"{touched} (0 B)"
    )
    (deployment.config.archive.destination / real).unlink()
    code, doc = deployment.status()
    assert (code, by_name(doc)["archive"]["state"]) == (2, "CRITICAL")


def test_a_real_archive_that_no_longer_matches_its_run_is_critical(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    assert s.cli("archive").returncode == 0
    (archive,) = s.archives()
    checks = status_of(s)
    assert checks["archive"]["state"] == "OK" and archive.name in checks["archive"]["message"]
    assert checks["archive-files"]["state"] == "OK"
    data = archive.read_bytes()
    sidecar = archive.with_name(archive.name + naming.SIDECAR)
    good_sidecar = sidecar.read_text()

    archive.write_bytes(b"")  # truncated (a full disk, a bad copy)
    checks = status_of(s)
    assert checks["archive"]["state"] == "CRITICAL"
    assert checks["archive-files"]["state"] == "CRITICAL"
    assert (
        f"newest archive {archive.name} is 0 bytes, but its run wrote {len(data)} bytes"
        in checks["archive-files"]["message"]
    )

    archive.write_bytes(data)
    sidecar.unlink()
    checks = status_of(s)
    assert checks["archive-files"]["state"] == "CRITICAL"
    assert (
        f"fails its sidecar: the sidecar {sidecar.name} is missing"
        in (checks["archive-files"]["message"])
    )

    sidecar.write_text(f"{'0' * 64}  {archive.name}\n")  # a sidecar, but not the one it wrote
    checks = status_of(s)
    assert checks["archive-files"]["state"] == "CRITICAL"
    assert "states another sha256" in checks["archive-files"]["message"]

    sidecar.write_text(good_sidecar)
    checks = status_of(s)
    assert checks["archive"]["state"] == checks["archive-files"]["state"] == "OK"


def test_an_older_archive_that_no_longer_matches_is_a_warning(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    assert s.cli("archive").returncode == 0
    (older,) = s.archives()
    newest_time = naming.parse(older.name)
    assert newest_time is not None
    # The next run gets the next second's name.
    while naming.make(PREFIX, datetime.now(UTC)).created <= newest_time.created:
        time.sleep(0.05)
    # a full, so that the older archive is no member of the newest one's chain (a damaged
    # member of the chain in force is CRITICAL: test_status_chains)
    shutil.rmtree(s.state_dir / snapshots.FOLDER)
    assert s.cli("archive").returncode == 0
    assert [naming.parse(p.name).is_full for p in s.archives()] == [True, True]  # type: ignore[union-attr]
    older.write_bytes(older.read_bytes()[:-1])
    checks = status_of(s)
    assert checks["archive"]["state"] == "OK"
    assert checks["archive-files"]["state"] == "WARNING"
    assert (
        f"1 older archive(s) no longer match their run, newest {older.name}"
        in (checks["archive-files"]["message"])
    )


def test_the_state_dir_knows_its_archives_after_the_history_is_trimmed(tmp_path: Path) -> None:
    """events.jsonl is bounded: an archive outcome is trimmed away after enough events, and
    last/archive.json holds only the newest archive run; the journal keeps the archive."""
    s = make_setup(tmp_path)
    assert s.cli("archive").returncode == 0
    (archive,) = s.archives()
    agent = AgentConfig(state_dir=s.state_dir)
    filler = Outcome("sync", True, "x" * 1500, datetime.now(UTC) - timedelta(minutes=1))
    with (s.state_dir / "events.jsonl").open("a") as f:
        for _ in range(state.MAX_EVENTS + 100):
            f.write(json.dumps(filler.to_json()) + "\n")
    journal.record(agent, Outcome("archive", False, "preflight failed: recipients missing"))
    assert not any(o.details.get("archive") == archive.name for o in state.events(s.state_dir)), (
        "the archive outcome should have been trimmed from the history"
    )
    checks = status_of(s)
    assert checks["archive"]["state"] == "OK", checks["archive"]
    assert archive.name in checks["archive"]["message"]
    (s.state_dir / "last-ok" / "archive.json").unlink()  # the newest good run's record
    checks = status_of(s)
    assert checks["archive"]["state"] == "OK", "archives.json alone still knows it"
    (s.state_dir / "archives.json").unlink()  # without the journal it is unknown
    checks = status_of(s)
    assert checks["archive"]["state"] == "CRITICAL"


def test_agent_freshness_watch_does_not_count_a_touched_name(tmp_path: Path) -> None:
    """The agent's periodic check ("stale" outcome) uses the same rule as status."""
    from usbagent.config import load
    from usbagent.health import archive_freshness

    s = make_setup(tmp_path)
    config = load(s.config)
    touch_archive_name(s.destination, PREFIX, datetime.now(UTC))
    stale: Any = archive_freshness(config, datetime.now(UTC))
    assert stale is not None and stale.kind == "stale"
    assert stale.summary.startswith("no archive a successful run recorded")
    assert s.cli("archive").returncode == 0
    assert archive_freshness(config, datetime.now(UTC)) is None


# --- the next nightly run, asked now -------------------------------------------------------------


def test_a_recipients_file_that_moved_is_critical_now_naming_the_fix(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    assert s.cli("archive").returncode == 0
    checks = status_of(s)
    assert checks["next-run"]["state"] == "OK", checks["next-run"]
    assert checks["archive"]["state"] == "OK"  # the archive itself is fine...
    s.recipients.rename(tmp_path / "moved-away")
    checks = status_of(s)
    assert checks["archive"]["state"] == "OK"
    assert checks["next-run"]["state"] == "CRITICAL"  # ...but tonight's run will fail
    assert checks["next-run"]["message"] == (
        f"the next archive run will fail: recipients file {s.recipients} does not exist "
        "(put your age1… or ssh public key in it, or fix archive.recipients_file)"
    )
    text = s.cli("status")
    assert text.returncode == 2
    assert f"CRITICAL next-run: the next archive run will fail: recipients file {s.recipients}" in (
        text.stdout
    )


def test_a_read_only_destination_is_critical_now_and_doctor_says_remount(tmp_path: Path) -> None:
    need_root()
    with tmpfs(tmp_path / "dest", "size=8M") as dest:
        s = make_setup(tmp_path, destination=dest)
        assert s.cli("archive").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(dest)], check=True)
        checks = status_of(s)
        doctor = s.cli("doctor")
    fix = f"remount it read-write (mount -o remount,rw {dest})"
    assert checks["next-run"]["state"] == "CRITICAL"
    assert checks["next-run"]["message"] == (
        f"the next archive run will fail: destination {dest} is on a read-only file system "
        f"({dest} is mounted read-only); {fix}, or move archive.destination"
    )
    (line,) = [x for x in doctor.stdout.splitlines() if x.startswith("PROBLEM  destination:")]
    assert line == (
        f"PROBLEM  destination: {dest} is on a read-only file system ({dest} is mounted "
        f"read-only). Fix: {fix}, or move archive.destination"
    )
    assert "chown" not in line


def unwritable_as_nobody(folder: Path) -> str:
    """fsutil.unwritable as an unprivileged user sees it (Debian's python, no venv)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from usbagent.fsutil import unwritable; "
        "p = unwritable(__import__('pathlib').Path(sys.argv[2])); print(p.reason, '|', p.fix)"
    )
    project = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
         "-c", code, str(project), str(folder)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_permissions_and_immutability_are_told_apart_from_a_read_only_mount() -> None:
    need_root()
    folder = Path(tempfile.mkdtemp(prefix="ua-perm-", dir="/tmp"))  # reachable by nobody
    try:
        folder.chmod(0o755)
        assert unwritable_as_nobody(folder) == (
            f"is not writable by nobody (owner root, mode 755) | chown nobody {folder}, or give "
            "nobody write permission on it"
        )
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            problem = unwritable(folder)
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        assert problem is not None and "immutable" in problem.reason
        assert problem.fix == f"lsattr -d {folder}; chattr -i -a {folder}"
        assert unwritable(folder) is None  # root, writable again: nothing left behind
        assert list(folder.iterdir()) == []
    finally:
        folder.rmdir()


def test_an_ssh_key_age_skips_runs_the_job_as_age_would_but_doctor_reports_it(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path)
    key = tmp_path / "id_ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(key)], check=True)
    s.recipients.write_text(key.with_suffix(".pub").read_text() + s.recipients.read_text())
    run = s.cli("archive")
    assert run.returncode == 0, run.stderr
    assert "line 1: ssh key of type ecdsa-sha2-nistp256 ignored" in run.stderr
    assert status_of(s)["next-run"]["state"] == "OK"
    (line,) = [x for x in s.cli("doctor").stdout.splitlines() if "recipients file:" in x]
    assert line.startswith(f"PROBLEM  recipients file: recipients file {s.recipients}, line 1: ")
    assert line.endswith("Fix: replace it with its owner's ssh-ed25519 or age1… public key")
