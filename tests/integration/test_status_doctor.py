"""`usbagent status` and `usbagent doctor` against real files, processes, buses and systemd.

Status reads a real state dir and archive folder written by the project's own writers
(journal.record, ledger, the OnFailure hook); the systemd checks run against a real
`systemd --user` manager. Doctor's every problem is caused for real: missing or
non-executable ExecStart, a key anyone can read, missing folders, no device events,
no GNU tar, a library that cannot be imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pyudev
from pyrage import x25519

from tests.integration.dbus_doubles import private_system_bus
from tests.stack import MakeStick, PartSpec
from tests.stack.user_manager import UserManager
from usbagent import (
    doctor,
    doctorbase,
    journal,
    ledger,
    naming,
    state,
    sync,
    synccmd,
    systemd,
    udev,
)
from usbagent.config import AgentConfig, ArchiveConfig, Config, UsbConfig
from usbagent.events import Outcome

PREFIX = "testhost"


@dataclass
class Deployment:
    root: Path
    config: Config
    config_file: Path
    units: Path
    program: Path

    def env(self, **extra: str) -> dict[str, str]:
        """CLI environment: our unit folder, and a systemd that is certainly not reachable
        (an empty user runtime dir), unless a test brings a real manager."""
        empty = self.root / "no-manager"
        empty.mkdir(exist_ok=True)
        return {
            **os.environ,
            doctorbase.UNIT_DIRS_ENV: str(self.units),
            "USBAGENT_SYSTEMD_SCOPE": "user",
            "XDG_RUNTIME_DIR": str(empty),
            **extra,
        }

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "usbagent", "--config", str(self.config_file), *args],
            capture_output=True, text=True, timeout=60, env=self.env(**env), check=False,
        )  # fmt: skip

    def status(self, **env: str) -> tuple[int, dict[str, Any]]:
        r = self.cli("status", "--json", **env)
        return r.returncode, json.loads(r.stdout)

    def archive(self, age: timedelta, size: int = 1000) -> str:
        """An archive file, its sidecar and its outcome, as a successful run leaves them."""
        name = naming.make(PREFIX, datetime.now(UTC) - age)
        dest = self.config.archive.destination
        data = os.urandom(size)
        (dest / name.filename).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        (dest / name.sidecar).write_text(f"{digest}  {name.filename}\n")
        details = {"archive": name.filename, "size": size, "sha256": digest}
        made = Outcome("archive", True, f"archive {name.filename} written",
                       name.created + timedelta(seconds=30), details)  # fmt: skip
        journal.record(self.config.agent, made)
        return name.filename


def unit_text(name: str, program: Path, rw: str) -> str:
    if name.endswith(".timer"):
        return (
            "[Timer]\nOnCalendar=*-*-* 02:00:00\nPersistent=true\n"
            "[Install]\nWantedBy=timers.target\n"
        )
    return f"[Service]\nExecStart={program} --config /etc/x.toml x\nReadWritePaths={rw}\n"


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    root = tmp_path
    for d in ("src", "dest", "state", "bin", "units/timers.target.wants"):
        (root / d).mkdir(parents=True)
    program = root / "bin" / "usbagent"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    recipients = root / "recipients"
    recipients.write_text(f"{x25519.Identity.generate().to_public()}\n")
    identity = root / "identity.txt"
    identity.write_text(f"{x25519.Identity.generate()}\n")
    identity.chmod(0o600)
    config_file = root / "config.toml"
    config_file.write_text(f"""
[archive]
sources = ["{root / "src"}"]
destination = "{root / "dest"}"
recipients_file = "{recipients}"
identity_file = "{identity}"
prefix = "{PREFIX}"
[usb]
labels = ["ua-test"]
[agent]
state_dir = "{root / "state"}"
""")
    config = Config(
        archive=ArchiveConfig(
            sources=(root / "src",),
            destination=root / "dest",
            recipients_file=recipients,
            identity_file=identity,
            prefix=PREFIX,
        ),
        usb=UsbConfig(labels=("ua-test",)),
        agent=AgentConfig(state_dir=root / "state"),
        path=config_file,
    )
    units = root / "units"
    rw = f"{root / 'dest'} {root / 'state'}"
    for name in systemd.UNITS:
        (units / name).write_text(unit_text(name, program, rw))
    (units / "timers.target.wants" / systemd.ARCHIVE_TIMER).symlink_to(
        units / systemd.ARCHIVE_TIMER
    )
    return Deployment(root, config, config_file, units, program)


@pytest.fixture
def agent_process() -> Iterator[int]:
    """A live process whose command line names usbagent, standing for the running agent."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(120)", "usbagent-agent"]
    )
    yield proc.pid
    proc.kill()
    proc.wait()


def heartbeat(d: Deployment, pid: int, age: timedelta = timedelta(seconds=2)) -> None:
    state.write_json(
        d.config.agent.state_dir / "heartbeat.json",
        {"pid": pid, "time": (datetime.now(UTC) - age).isoformat(), "status": "idle",
         "backend": "udisks2", "backend_alive": True},
    )  # fmt: skip


def synced_stick(d: Deployment, newest: str) -> None:
    sd = d.config.agent.state_dir
    ledger.record_ok(sd, "1234-ABCD", "UA-TEST", (newest,), 5 * 2**30, newest)
    journal.record(
        d.config.agent,
        Outcome("sync", True, "1 archive copied to UA-TEST, verified",
                details={"label": "UA-TEST", "uuid": "1234-abcd", "copied": [newest], "verified": 1,
                         "free_bytes": 5 * 2**30}),
    )  # fmt: skip


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in doc["checks"]}


# --- status ----------------------------------------------------------------------------------


def test_healthy_system_is_ok_and_shows_archive_agent_stick_and_sync(
    deployment: Deployment, agent_process: int
) -> None:
    newest = deployment.archive(timedelta(hours=3), size=4096)
    heartbeat(deployment, agent_process)
    synced_stick(deployment, newest)
    journal.record(deployment.config.agent, Outcome("archive", True, "archive made"))
    code, doc = deployment.status()
    assert (code, doc["state"]) == (0, "OK"), doc
    checks = by_name(doc)
    assert newest in checks["archive"]["message"] and "4.0 KiB" in checks["archive"]["message"]
    assert f"running (pid {agent_process})" in checks["agent"]["message"]
    assert newest in checks["stick UA-TEST (1234-abcd)"]["message"]
    assert "UA-TEST (1234-abcd)" in checks["last-sync"]["message"]
    assert "5.0 GiB free" in checks["last-sync"]["message"]
    assert "systemd not available" in checks["archive-timer"]["message"]
    text = deployment.cli("status")
    assert text.returncode == 0 and text.stdout.startswith("usbagent OK: ")


def test_stale_or_missing_archive_is_critical_exit_2(
    deployment: Deployment, agent_process: int
) -> None:
    heartbeat(deployment, agent_process)
    code, doc = deployment.status()
    assert (code, doc["state"]) == (2, "CRITICAL")
    assert by_name(doc)["archive"]["message"].startswith("no archive a successful run recorded in ")
    old = deployment.archive(timedelta(hours=30))
    code, doc = deployment.status()
    assert code == 2 and old in by_name(doc)["archive"]["message"]
    assert "30 h 0 min old (stale after 26 h)" in by_name(doc)["archive"]["message"]


def test_agent_heartbeat_of_a_dead_or_hung_or_foreign_process(
    deployment: Deployment, agent_process: int
) -> None:
    deployment.archive(timedelta(hours=1))
    heartbeat(deployment, agent_process, age=timedelta(minutes=10))
    code, doc = deployment.status()
    assert code == 2 and "hung" in by_name(doc)["agent"]["message"]
    heartbeat(deployment, 1)  # pid 1 exists but is not usbagent: a reused pid
    code, doc = deployment.status()
    assert code == 2 and "not running (pid 1 gone" in by_name(doc)["agent"]["message"]


def test_unit_failure_hook_record_makes_status_critical_and_keeps_the_notification(
    deployment: Deployment, agent_process: int
) -> None:
    """The OnFailure path without systemd or a desktop: recorded, kept, shown by status."""
    deployment.archive(timedelta(hours=1))
    heartbeat(deployment, agent_process)
    synced_stick(deployment, deployment.archive(timedelta(hours=2)))
    journal.record(
        deployment.config.agent,
        Outcome("archive", True, "archive made", datetime.now(UTC) - timedelta(hours=1)),
    )
    with private_system_bus() as bus:  # a bus without logind: nobody to tell
        hook = deployment.cli(
            "notify-failure", systemd.ARCHIVE_SERVICE, DBUS_SYSTEM_BUS_ADDRESS=bus
        )
    assert hook.returncode == 0, hook.stderr
    code, doc = deployment.status()
    assert (code, doc["state"]) == (2, "CRITICAL"), doc
    checks = by_name(doc)
    assert checks["archive-job"]["state"] == "CRITICAL"
    assert "usbagent-archive.service failed" in checks["archive-job"]["message"]
    assert checks["notifications"]["state"] == "WARNING"
    assert "1 desktop notification(s) not delivered" in checks["notifications"]["message"]


def test_unreadable_state_is_unknown_exit_3(deployment: Deployment) -> None:
    state_dir = deployment.config.agent.state_dir
    state_dir.rmdir()
    state_dir.write_text("a file where the state folder should be\n")
    code, doc = deployment.status()
    assert (code, doc["state"]) == (3, "UNKNOWN")
    assert doc["checks"][0]["message"].startswith("cannot determine the state: NotADirectory")


@pytest.mark.systemd
def test_under_systemd_an_active_timer_without_fresh_archive_is_critical(
    deployment: Deployment, agent_process: int, user_manager: UserManager
) -> None:
    """THE failure: timer enabled and active, the job 'succeeds', but no archive appears."""
    heartbeat(deployment, agent_process)
    synced_stick(deployment, deployment.archive(timedelta(hours=40)))
    user_manager.install(
        {
            systemd.ARCHIVE_SERVICE: "[Service]\nType=oneshot\nExecStart=/bin/true\n",
            systemd.ARCHIVE_TIMER: unit_text(systemd.ARCHIVE_TIMER, deployment.program, ""),
        }
    )
    user_manager.systemctl("enable", "--runtime", "--now", systemd.ARCHIVE_TIMER)
    user_manager.systemctl("start", systemd.ARCHIVE_SERVICE)
    manager_env = {"XDG_RUNTIME_DIR": str(user_manager.runtime_dir)}
    code, doc = deployment.status(**manager_env)
    checks = by_name(doc)
    assert checks["archive-timer"]["state"] == "OK", checks["archive-timer"]
    assert checks["archive-timer"]["message"].startswith("active; last run")
    assert checks["archive-job"]["state"] == "OK"  # systemd alone says all is well...
    assert (code, checks["archive"]["state"]) == (2, "CRITICAL")  # ...the files do not
    assert "usbagent-archive.timer is enabled and active" in checks["archive"]["message"]

    user_manager.install(
        {systemd.ARCHIVE_SERVICE: "[Service]\nType=oneshot\nExecStart=/bin/false\n"}
    )
    user_manager.systemctl("start", systemd.ARCHIVE_SERVICE, check=False)
    user_manager.wait_until(systemd.ARCHIVE_SERVICE, "failed", 10, Result="exit-code")
    code, doc = deployment.status(**manager_env)
    job = by_name(doc)["archive-job"]
    assert job["state"] == "CRITICAL" and "Result=exit-code, exit status 1" in job["message"]


# --- doctor ----------------------------------------------------------------------------------


@pytest.mark.systemd
def test_doctor_under_systemd_reads_the_unit_files_systemd_loaded(
    deployment: Deployment, user_manager: UserManager
) -> None:
    """The files are found through FragmentPath (not our unit folder), the timer state
    comes from systemd, and a failed run is reported from the unit's Result."""
    user_manager.install(
        {
            systemd.AGENT_SERVICE: "[Service]\nExecStart=/opt/missing/usbagent agent\n",
            systemd.ARCHIVE_SERVICE: "[Service]\nType=oneshot\nExecStart=/bin/false\n",
            systemd.ARCHIVE_TIMER: unit_text(systemd.ARCHIVE_TIMER, deployment.program, ""),
        }
    )
    user_manager.systemctl("enable", "--runtime", "--now", systemd.ARCHIVE_TIMER)
    user_manager.systemctl("start", systemd.ARCHIVE_SERVICE, check=False)
    user_manager.wait_until(systemd.ARCHIVE_SERVICE, "failed", 10, Result="exit-code")
    r = deployment.cli("doctor", XDG_RUNTIME_DIR=str(user_manager.runtime_dir))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    agent_line = next(line for line in lines if line.startswith("PROBLEM  usbagent.service"))
    assert str(user_manager.unit_dir / systemd.AGENT_SERVICE) in agent_line
    assert "/opt/missing/usbagent: no such file" in agent_line
    assert any("enabled only until the next boot" in line for line in lines)
    assert any("last archive run: usbagent-archive.service failed (Result=exit-code" in line
               for line in lines)  # fmt: skip


def locations(d: Deployment, **changes: Any) -> doctorbase.Locations:
    return replace(doctorbase.Locations(unit_dirs=(d.units,)), **changes)


def problems(d: Deployment, config: Config | None = None, **changes: Any) -> list[str]:
    findings = doctor.diagnose(config or d.config, locations(d, **changes))
    return [f.line() for f in findings if not f.ok]


def test_doctor_all_good_exit_0(deployment: Deployment, stack: object) -> None:
    r = deployment.cli("doctor")
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1] == "doctor: all good"


def test_doctor_unit_exec_start_missing_or_not_executable(
    deployment: Deployment, stack: object
) -> None:
    service = deployment.units / systemd.AGENT_SERVICE
    service.write_text(service.read_text().replace(str(deployment.program), "/opt/gone/usbagent"))
    deployment.program.chmod(0o644)
    found = problems(deployment)
    assert any("usbagent.service: ExecStart" in p and "/opt/gone/usbagent: no such file" in p
               and "Fix: rerun `usbagent install`" in p for p in found), found  # fmt: skip
    assert any("usbagent-archive.service: ExecStart" in p and "not executable" in p for p in found)
    r = deployment.cli("doctor")
    assert r.returncode == 1 and "problem(s) found" in r.stdout


def test_doctor_missing_units_rw_paths_and_disabled_timer(deployment: Deployment) -> None:
    (deployment.units / "timers.target.wants" / systemd.ARCHIVE_TIMER).unlink()
    (deployment.units / systemd.AGENT_SERVICE).unlink()
    (deployment.config.agent.state_dir).rmdir()
    found = "\n".join(problems(deployment))
    assert "usbagent.service: not installed" in found
    assert "usbagent-archive.timer enabled: the timer is not enabled" in found
    assert "226/NAMESPACE. Fix: mkdir -p" in found


def test_doctor_recipients_file_problems(deployment: Deployment) -> None:
    rcpt = deployment.config.archive.recipients_file
    ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx5dnBwZeqJRkkAfbmnj8BB5UbrotI5YTReiYUQEud1 me"
    rcpt.write_text(f"# offsite\n{ssh_key}\n")
    assert not problems(deployment)
    rcpt.write_text("# nobody\n")
    assert any("holds no recipient" in p for p in problems(deployment))
    rcpt.write_text(f"{ssh_key}\nage1garbage\n")
    assert any(
        f"recipients file {rcpt}, line 2: not a valid age" in p for p in problems(deployment)
    )
    rcpt.unlink()
    rcpt.mkdir()  # unreadable as a file, even for root
    assert any(f"{rcpt} is a folder, not a file" in p for p in problems(deployment))
    rcpt.rmdir()
    found = problems(deployment)
    assert any(f"{rcpt} does not exist" in p and "Fix: write one age1" in p for p in found)


def test_doctor_world_readable_identity_and_credentials(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = deployment.config.archive.identity_file
    assert identity is not None
    identity.chmod(0o644)
    assert any("world-readable" in p and f"chmod 600 {identity}" in p for p in problems(deployment))
    identity.chmod(0o600)
    identity.write_text("not a key\n")
    assert any("not an age secret key" in p for p in problems(deployment))
    creds = deployment.root / "credentials"
    creds.mkdir()
    (creds / identity.name).write_text(f"{x25519.Identity.generate()}\n")
    (creds / identity.name).chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert not any("identity" in p for p in problems(deployment))  # the credential is used


def test_doctor_missing_source_and_destination(deployment: Deployment) -> None:
    (deployment.root / "src").rmdir()
    (deployment.root / "dest").rmdir()
    found = "\n".join(problems(deployment))
    assert f"source: {deployment.root / 'src'} does not exist" in found
    assert f"destination: {deployment.root / 'dest'} does not exist" in found


def test_doctor_destination_on_fat(deployment: Deployment) -> None:
    """vfat cannot be mounted on this kernel: the mount table is given in the kernel's
    format with the destination on a vfat mount, and a 3 GiB (sparse) archive."""
    dest = deployment.config.archive.destination
    with (dest / naming.make(PREFIX, datetime.now(UTC)).filename).open("wb") as f:
        f.truncate(3 * 2**30)
    mountinfo = deployment.root / "mountinfo"
    mountinfo.write_text(
        f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n31 22 8:33 / {dest} rw - vfat /dev/sdc1 rw\n"
    )
    found = problems(deployment, mountinfo=mountinfo)
    assert any("vfat (FAT): files stop at 4 GiB" in p and "ext4, xfs or btrfs" in p for p in found)
    assert not problems(deployment)  # the real mount table: tmp is not FAT


@pytest.mark.stack
def test_doctor_flags_a_fat32_stick_the_agent_refused(
    deployment: Deployment, make_stick: MakeStick, unique_label: str
) -> None:
    """A real vfat stick with the label, a 4.5 GiB (sparse) archive: the pre-mount check
    refuses it from udev's facts, the ledger keeps its type, and doctor names the stick."""
    dest = deployment.config.archive.destination
    name = naming.make(PREFIX, datetime.now(UTC))
    with (dest / name.filename).open("wb") as f:
        f.truncate(4 * 2**30 + 2**29)
    (dest / name.sidecar).write_text(f"{'0' * 64}  {name.filename}\n")
    stick = make_stick(PartSpec("vfat", label=unique_label))
    config = replace(
        deployment.config,
        usb=UsbConfig(labels=(unique_label,), require_usb=False),
    )
    facts = udev.facts_of(pyudev.Devices.from_device_file(pyudev.Context(), stick.device()))
    assert facts is not None and facts.fstype == "vfat"
    reason = sync.precheck(config, facts)
    assert reason is not None and "FAT32 cannot hold" in reason
    synccmd.record_refusal(config, facts, reason)

    found = "\n".join(problems(deployment, config))
    assert f"stick {unique_label.upper()} ({facts.uuid})" in found
    assert "vfat (FAT): files stop at 4 GiB" in found and "reformat the stick" in found


def test_doctor_last_archive_run_failed(deployment: Deployment) -> None:
    journal.record(deployment.config.agent, Outcome("archive", False, "tar exited 2"))
    assert any(
        "last archive run: failed at" in p and "tar exited 2" in p for p in problems(deployment)
    )
    journal.record(deployment.config.agent, Outcome("archive", True, "archive made"))
    assert not any("last archive run" in p for p in problems(deployment))


def test_doctor_no_udisks_and_no_udev(deployment: Deployment) -> None:
    with private_system_bus() as empty_bus:
        gone = deployment.root / "no-udev-control"
        found = problems(deployment, system_bus=empty_bus, udev_control=gone)
        assert any("neither UDisks2 (UDisks2 not on the system bus) nor udev" in p for p in found)
        udev_only = replace(deployment.config, usb=UsbConfig(labels=("x",), backend="udisks2"))
        found = problems(deployment, config=udev_only, system_bus=empty_bus)
        assert any('usb.backend is "udisks2" but UDisks2 not on the system bus' in p for p in found)


def test_doctor_tools(deployment: Deployment) -> None:
    empty = deployment.root / "empty-path"
    empty.mkdir()
    assert any(
        "GNU tar: tar is not on $PATH" in p for p in problems(deployment, search_path=str(empty))
    )
    fake = deployment.root / "fake-path"
    fake.mkdir()
    (fake / "tar").write_text("#!/bin/sh\necho 'tar (busybox) 1.36'\n")
    (fake / "tar").chmod(0o755)
    assert any(
        "is not GNU tar (tar (busybox) 1.36)" in p
        for p in problems(deployment, search_path=str(fake))
    )
    code = (
        "import sys; sys.modules['zstandard'] = None\n"
        "from usbagent.doctorbase import Locations\nfrom usbagent.doctorhost import check_tools\n"
        "print('\\n'.join(f.line() for f in check_tools(Locations())))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "PROBLEM  zstandard: cannot import zstandard" in out.stdout
    assert "ok       pyrage: importable" in out.stdout


def test_doctor_missing_metrics_folder(deployment: Deployment) -> None:
    config = replace(
        deployment.config,
        agent=replace(deployment.config.agent, metrics_file=deployment.root / "nope" / "u.prom"),
    )
    assert any("metrics file: folder" in p for p in problems(deployment, config=config))
