"""The installed units under a real systemd user manager (systemd 252).

Units are rendered by `usbagent install --prefix` exactly as for the system manager, then
written into the user manager's unit dir (see `adapt_for_user_manager`); test-only changes
(a short WatchdogSec, a missing ExecStart) are drop-ins, as an administrator would write.
Every path the services use lives under the manager's runtime dir in /run: the units have
PrivateTmp=yes, so nothing under /tmp would be visible to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage
import pytest
import zstandard

from tests.stack import MakeStick, PartSpec, StackSession
from tests.stack.daemons import wait_for
from tests.stack.user_manager import UserManager
from usbagent import naming, state
from usbagent.events import Outcome

pytestmark = [pytest.mark.systemd, pytest.mark.stack]

USBAGENT = Path(sys.executable).parent / "usbagent"
AGENT = "usbagent.service"
ARCHIVE = "usbagent-archive.service"
HOOK = "usbagent-notify-failure@{}.service"


@dataclass
class Deployment:
    root: Path
    config: Path
    state_dir: Path
    destination: Path
    label: str
    identity: pyrage.x25519.Identity
    units: dict[str, str]

    def usbagent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(USBAGENT), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def deployment(user_manager: UserManager, stack: StackSession, unique_label: str) -> Deployment:
    """A config with its own dirs, and the units `usbagent install --prefix` rendered for it."""
    root = user_manager.runtime_dir / "deploy"
    src = root / "src"
    src.mkdir(parents=True)
    (src / "notes.txt").write_text("hello from the archive test\n")
    (root / "state").mkdir()
    (root / "archives").mkdir()
    recipient = root / "recipient"
    identity = pyrage.x25519.Identity.generate()
    recipient.write_text(str(identity.to_public()) + "\n")
    config = root / "config.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [archive]
            sources = ["{src}"]
            destination = "{root / "archives"}"
            recipients_file = "{recipient}"
            prefix = "systest"
            [usb]
            labels = ["{unique_label}"]
            require_usb = false
            backend = "udev"
            [agent]
            state_dir = "{root / "state"}"
            [notify]
            enabled = false
            """)
    )
    staged = root / "staged"
    dep = Deployment(root, config, root / "state", root / "archives", unique_label, identity, {})
    done = dep.usbagent("install", "--prefix", str(staged))
    assert done.returncode == 0, done.stderr
    unit_dir = staged / "etc/systemd/system"
    dep.units = {p.name: p.read_text() for p in unit_dir.iterdir()}
    return dep


def _status_text(user_manager: UserManager, unit: str) -> str:
    return user_manager.systemctl("status", unit, check=False).stdout


def test_agent_is_active_only_after_ready_and_shows_its_status(
    user_manager: UserManager, deployment: Deployment
) -> None:
    """Type=notify: `systemctl start` returns when the agent said READY=1, i.e. after its
    event source is subscribed (it writes its heartbeat just before), and its STATUS= line
    is what `systemctl status` shows."""
    user_manager.install(deployment.units)
    user_manager.systemctl("start", AGENT)
    props = user_manager.show(AGENT, "ActiveState", "SubState", "StatusText", "MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), (
        user_manager.journal()
    )
    idle = f"idle, watching for sticks labelled {deployment.label}"
    assert props["StatusText"].startswith(idle), props
    shown = _status_text(user_manager, AGENT)
    assert f'Status: "{idle}' in shown, shown
    heartbeat = state.read_json(deployment.state_dir / "heartbeat.json")
    assert heartbeat is not None and heartbeat["pid"] == int(props["MainPID"])
    user_manager.systemctl("stop", AGENT)
    assert user_manager.show(AGENT, "Result")["Result"] == "success"


def test_service_stays_activating_until_ready(
    user_manager: UserManager, deployment: Deployment
) -> None:
    """The same unit with a stand-in that holds back READY=1 until told: systemd must not
    report it active before, and shows the UTF-8 STATUS line sent through our Watchdog."""
    go = deployment.root / "go"
    script = deployment.root / "standin.py"
    script.write_text(
        textwrap.dedent(f"""\
            import pathlib, time
            from usbagent.watchdog import Watchdog
            wd = Watchdog()
            wd.status("starting — wärming up")
            while not pathlib.Path("{go}").exists():
                time.sleep(0.05)
            wd.status("idle — wäiting for a stick")
            wd.ready()
            while True:
                time.sleep(wd.interval or 1)
                wd.ping()
            """)
    )
    dropin = f"[Service]\nExecStart=\nExecStart={sys.executable} {script}\n"
    user_manager.install(deployment.units, {AGENT: dropin})
    user_manager.systemctl("start", "--no-block", AGENT)
    user_manager.wait_until(AGENT, "starts", 10, StatusText="starting — wärming up")
    time.sleep(0.5)  # READY withheld: the state must not move on its own
    assert user_manager.show(AGENT, "ActiveState")["ActiveState"] == "activating"
    go.touch()
    user_manager.wait_until(AGENT, "gets ready", 10, ActiveState="active", SubState="running")
    assert 'Status: "idle — wäiting for a stick"' in _status_text(user_manager, AGENT)


def test_hung_agent_is_killed_and_restarted_by_the_watchdog(
    user_manager: UserManager, deployment: Deployment
) -> None:
    dropin = "[Service]\nWatchdogSec=3s\nRestartSec=100ms\n"
    user_manager.install(deployment.units, {AGENT: dropin})
    user_manager.systemctl("start", AGENT)
    before = user_manager.show(AGENT, "MainPID", "NRestarts")
    assert before["NRestarts"] == "0"
    os.kill(int(before["MainPID"]), signal.SIGSTOP)  # the whole agent hangs
    user_manager.wait_until(AGENT, "restarts", 20, NRestarts="1", SubState="running")
    assert user_manager.show(AGENT, "MainPID")["MainPID"] != before["MainPID"]
    assert not Path(f"/proc/{before['MainPID']}").exists(), "the hung agent was not killed"
    # OnFailure= stays silent (restarted); the agent's ExecStopPost= hook recorded the hang.
    [hang] = _unit_failed(deployment)
    assert hang.summary == (
        f"{AGENT} failed: stopped answering its watchdog (hung) and was killed"
    ), hang
    assert hang.details["via"] == "ExecStopPost"


def test_archive_service_makes_an_archive(
    user_manager: UserManager, deployment: Deployment
) -> None:
    user_manager.install(deployment.units)
    timer = user_manager.systemctl("start", "usbagent-archive.timer")
    assert timer.returncode == 0
    assert user_manager.show("usbagent-archive.timer", "NextElapseUSecRealtime")[
        "NextElapseUSecRealtime"
    ], "the timer has no next elapse time"
    user_manager.systemctl("start", ARCHIVE)  # what the timer starts at 02:00
    props = user_manager.show(ARCHIVE, "Result", "ExecMainStatus")
    assert props == {"Result": "success", "ExecMainStatus": "0"}, user_manager.journal()
    archives = [p for p in deployment.destination.iterdir() if naming.parse(p.name) is not None]
    assert len(archives) == 1, sorted(deployment.destination.iterdir())
    assert (deployment.destination / (archives[0].name + ".sha256")).exists()
    plain = pyrage.decrypt(archives[0].read_bytes(), [deployment.identity])
    with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(plain), mode="r|") as t:
        names = [m.name for m in t]
    assert any(n.endswith("src/notes.txt") for n in names), names


def _wait_hook_done(user_manager: UserManager, failed: str) -> None:
    """The hook ran to completion and exited 0 (ExecMainCode 1 = exited; 0 = never ran)."""
    user_manager.wait_until(
        HOOK.format(failed),
        "finishes",
        20,
        ActiveState="inactive",
        ExecMainCode="1",
        ExecMainStatus="0",
    )


def _unit_failed(deployment: Deployment) -> list[Outcome]:
    return [o for o in state.events(deployment.state_dir) if o.kind == "unit-failed"]


def test_missing_execstart_triggers_the_failure_hook(
    user_manager: UserManager, deployment: Deployment
) -> None:
    missing = deployment.root / "gone" / "usbagent"
    dropin = f"[Service]\nExecStart=\nExecStart={missing} --config {deployment.config} archive\n"
    user_manager.install(deployment.units, {ARCHIVE: dropin})
    user_manager.systemctl("start", ARCHIVE, check=False)
    wait_for(lambda: bool(_unit_failed(deployment)), 20, "the unit-failed record")
    _wait_hook_done(user_manager, ARCHIVE)
    [outcome] = _unit_failed(deployment)
    assert outcome.summary == (
        f"{ARCHIVE} failed: cannot run {missing}: not found or not executable (status 203/EXEC)"
    )
    assert outcome.details["unit"] == ARCHIVE and outcome.details["scope"] == "user"
    status = deployment.usbagent("status", "--json")
    assert status.returncode == 2, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["state"] == "CRITICAL"
    assert any(c["state"] == "CRITICAL" and "203/EXEC" in c["message"] for c in report["checks"]), (
        report
    )


def test_onfailure_fires_once_when_restarts_give_up(
    user_manager: UserManager, deployment: Deployment
) -> None:
    """systemd 252: with Restart=on-failure, OnFailure= does not fire for a failed run that
    is restarted; it fires once, when the start limit stops the restarts. Each failed run is
    recorded by the agent's ExecStopPost= hook."""
    missing = deployment.root / "gone" / "usbagent"
    dropin = textwrap.dedent(f"""\
        [Unit]
        StartLimitIntervalSec=60s
        StartLimitBurst=3
        [Service]
        ExecStart=
        ExecStart={missing} --config {deployment.config} agent
        RestartSec=200ms
        """)
    user_manager.install(deployment.units, {AGENT: dropin})
    user_manager.systemctl("start", "--no-block", AGENT)
    user_manager.wait_until(AGENT, "gives up", 30, ActiveState="failed")
    _wait_hook_done(user_manager, AGENT)
    # 3 failed runs; the third restart is the one the start limit refused
    assert user_manager.show(AGENT, "NRestarts")["NRestarts"] == "3"
    records = _unit_failed(deployment)
    assert [o.details["via"] for o in records] == ["ExecStopPost"] * 3 + ["OnFailure"]
    assert all("203/EXEC" in o.summary for o in records), records
    assert records[-1].summary.endswith("; systemd stopped restarting it after 3 restarts")


def test_sandboxed_agent_mounts_copies_and_unmounts_a_stick(
    user_manager: UserManager, deployment: Deployment, make_stick: MakeStick
) -> None:
    """The hardening leaves the udev backend able to mount(8), copy, verify and unmount."""
    name = naming.make("systest", datetime.now(UTC) - timedelta(hours=1)).filename
    (deployment.destination / name).write_bytes(b"not really encrypted, but copied as is")
    digest = hashlib.sha256((deployment.destination / name).read_bytes()).hexdigest()
    (deployment.destination / (name + ".sha256")).write_text(f"{digest}  {name}\n")
    user_manager.install(deployment.units)
    user_manager.systemctl("start", AGENT)
    stick = make_stick(PartSpec("ext4", label=deployment.label, size_mb=32))
    wait_for(
        lambda: state.last(deployment.state_dir, "sync") is not None,
        60,
        "the agent's sync outcome",
    )
    outcome = state.last(deployment.state_dir, "sync")
    assert outcome is not None and outcome.ok, (outcome, user_manager.journal())
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if stick.device(0) in m]
    copied = stick.mount(0) / "usbagent" / name
    assert copied.read_bytes() == (deployment.destination / name).read_bytes()
