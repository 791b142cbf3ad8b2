"""`usbagent agent` end to end: a real agent process, real udevd/udisksd, loop-device sticks.

The agent runs as `python -m usbagent --config X -v agent`; tests wait for the outcome lines
it logs on stderr (with timeouts), then check what a person would check: the copies on the
stick and their checksums, the stick unmounted, the outcome in the state dir.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.stack import MakeStick, PartSpec, Stick
from tests.stack.sticks import mountpoints_of, unmount
from usbagent import demo_stick, journal, naming, state
from usbagent.agent import PROBE_GRACE
from usbagent.agent import Agent as AgentDaemon
from usbagent.config import AgentConfig, load
from usbagent.events import Outcome
from usbagent.udisks import UDisksBackend
from usbagent.watchdog import Watchdog

pytestmark = pytest.mark.stack

MIB = 1024 * 1024
PREFIX = "t"
OUTCOME = re.compile(r"usbagent\.agent: (sync|refused|stick-recognised|stale): (.*)$")


BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def archive_name(n: int) -> str:
    """Archive number `n`, made n minutes after BASE (recent: not stale)."""
    return naming.make(PREFIX, BASE + timedelta(minutes=n)).filename


def write_archive(destination: Path, n: int, size: int) -> str:
    """A fake archive (random bytes) with a correct sha256 sidecar; returns its name."""
    name = archive_name(n)
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    with (destination / name).open("wb") as f:
        left = size
        while left:
            chunk = block[: min(left, MIB)]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    (destination / (name + ".sha256")).write_text(f"{digest.hexdigest()}  {name}\n")
    # Recorded as its run would (in the state dir beside it, see `env`): an archive no run
    # recorded is not a backup, and the agent would rightly call the folder stale.
    details = {"archive": name, "size": size, "sha256": digest.hexdigest()}
    made = Outcome("archive", True, f"archive {name} written", details=details)
    journal.record(AgentConfig(state_dir=destination.parent / "state"), made)
    return name


@dataclass
class Env:
    root: Path
    config: Path
    destination: Path
    state_dir: Path
    label: str

    def write_config(
        self, backend: str, uuids: tuple[str, ...] = (), labels: tuple[str, ...] = ()
    ) -> None:
        labels = labels or (self.label,)
        self.config.write_text(
            f"""
[archive]
destination = "{self.destination}"
prefix = "{PREFIX}"
[usb]
labels = ["{self.label}"]
uuids = {json.dumps(list(uuids))}
require_usb = false
keep = 3
backend = "{backend}"
[agent]
state_dir = "{self.state_dir}"
[notify]
enabled = false
"""
        )


@pytest.fixture
def env(tmp_path: Path, unique_label: str) -> Env:
    destination = tmp_path / "archives"
    destination.mkdir()
    e = Env(tmp_path, tmp_path / "config.toml", destination, tmp_path / "state", unique_label)
    e.write_config("udisks2")
    return e


class Agent:
    """The agent as a subprocess; its stderr lines are collected by a reader thread."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "usbagent", "--config", str(config), "-v", "agent"],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The next log line matching `pattern` (lines before it are kept in self.log)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} in {timeout} s:\n" + self.text()
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.log.append(line)
            if m := rx.search(line):
                return m

    def outcome(self, timeout: float = 60.0) -> tuple[str, str]:
        """The next published outcome (kind, summary), skipping stick-recognised."""
        while True:
            m = self.wait_line(OUTCOME.pattern, timeout)
            if m[1] != "stick-recognised":
                return m[1], m[2]

    def text(self) -> str:
        while not self.lines.empty():
            self.log.append(self.lines.get_nowait())
        return "\n".join(self.log[-60:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def start_agent(env: Env) -> Iterator[type[Agent]]:
    started: list[Agent] = []

    def start(extra_env: dict[str, str] | None = None) -> Agent:
        agent = Agent(env.config, extra_env)
        started.append(agent)
        agent.wait_line(r"usbagent\.agent: ready: ", 30)
        return agent

    yield start  # type: ignore[misc]
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)
        print(f"--- agent pid {agent.proc.pid} log ---\n{agent.text()}")  # shown on failure


def stick_files(stick: Stick, env: Env) -> dict[str, bytes]:
    """Mount the stick read-only, return {name: content-hash-line or sha256 of file}."""
    target = env.root / f"check-{time.monotonic_ns()}"
    target.mkdir()
    subprocess.run(["mount", "-o", "ro", stick.device(0), str(target)], check=True)
    try:
        folder = target / "usbagent"
        if not folder.is_dir():
            return {}
        return {p.name: hashlib.sha256(p.read_bytes()).digest() for p in folder.iterdir()}
    finally:
        unmount(target)
        target.rmdir()


def local_digests(env: Env, names: list[str]) -> dict[str, bytes]:
    out = {}
    for name in names:
        for n in (name, name + ".sha256"):
            out[n] = hashlib.sha256((env.destination / n).read_bytes()).digest()
    return out


def assert_served(stick: Stick, env: Env, names: list[str]) -> None:
    assert not mountpoints_of(stick.partitions), "the agent left the stick mounted"
    assert stick_files(stick, env) == local_digests(env, names)
    last = json.loads((env.state_dir / "last" / "sync.json").read_text())
    assert last["ok"] is True, last


def assert_recorded_as_told(env: Env, summary: str, removal: str) -> None:
    """The state dir holds exactly what the person was told, and how the stick was left."""
    last = json.loads((env.state_dir / "last" / "sync.json").read_text())
    assert last["summary"] == summary
    assert last["details"]["removal"] == removal
    told = [e for e in state.events(env.state_dir) if e.kind == "sync"]
    assert told[-1].summary == summary, "the history holds a sync the person was not told"


# --- main flow, both backends ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["udisks2", "udev"])
def test_plugged_stick_gets_verified_copies_and_is_unmounted(
    backend: str, env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    env.write_config(backend)
    names = [write_archive(env.destination, d, 3 * MIB) for d in (1, 2)]
    agent = start_agent()
    stick = make_stick(PartSpec(label=env.label))
    kind, summary = agent.outcome()
    assert kind == "sync" and "copied 2 archive(s)" in summary, summary
    assert summary.endswith("unmounted, safe to remove"), summary
    assert_served(stick, env, names)
    assert_recorded_as_told(env, summary, "unmounted")
    # re-plug: served again (an archive made meanwhile is copied)
    stick.unplug()
    names.append(write_archive(env.destination, 3, 2 * MIB))
    stick.plug()
    kind, summary = agent.outcome()
    assert kind == "sync" and "copied 1 archive(s)" in summary, summary
    assert_served(stick, env, names)
    assert agent.stop() == 0


def test_stick_plugged_before_start_is_served(
    env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    names = [write_archive(env.destination, 1, MIB)]
    stick = make_stick(PartSpec(label=env.label))
    agent = start_agent()
    kind, summary = agent.outcome()
    assert kind == "sync" and "safe to remove" in summary, summary
    assert_served(stick, env, names)


def test_two_sticks_at_once_one_known_by_gpt_name_only(
    env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    """Both served, concurrently; the second is recognised by its GPT partition name alone."""
    names = [write_archive(env.destination, 1, 200 * MIB)]
    a = make_stick(PartSpec(label=env.label, size_mb=300), plug=False)
    b = make_stick(PartSpec(label=None, name=env.label, size_mb=300), plug=False)
    agent = start_agent()
    a.plug()
    agent.wait_line(r"stick-recognised: " + env.label)
    b.plug()  # while a is still being copied to
    m = agent.wait_line(r"usbagent\.agent: (stick-recognised|sync): ")
    assert m[1] == "stick-recognised", "the second stick waited for the first"
    results = [agent.outcome(), agent.outcome()]
    assert all(k == "sync" and "safe to remove" in s for k, s in results), results
    for stick in (a, b):
        assert_served(stick, env, names)


def test_unenrolled_stick_is_refused_and_untouched(
    env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    env.write_config("udisks2", uuids=("0000aaaa-0000-0000-0000-000000000000",))
    write_archive(env.destination, 1, MIB)
    agent = start_agent()
    stick = make_stick(PartSpec(label=env.label))
    kind, summary = agent.outcome()
    assert kind == "refused" and "not enrolled" in summary, summary
    assert stick_files(stick, env) == {}
    assert json.loads((env.state_dir / "last" / "refused.json").read_text())["ok"] is False


def test_io_error_mid_copy_is_recorded_and_next_stick_served(
    env: Env, make_stick: MakeStick, start_agent: type[Agent], tmp_path: Path
) -> None:
    """A stick that fails mid-copy (EIO: its backing store fills) does not stop the agent."""
    small = tmp_path / "tmpfs"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(small)], check=True)
    try:
        names = [write_archive(env.destination, 1, 48 * MIB)]
        agent = start_agent()
        bad = make_stick(PartSpec(label=env.label, size_mb=96), image_dir=small)
        kind, summary = agent.outcome(timeout=120)
        assert kind == "sync" and "failed" in summary, summary
        assert json.loads((env.state_dir / "last-error.json").read_text())["kind"] == "sync"
        bad.unplug()
        good = make_stick(PartSpec(label=env.label, size_mb=96))
        kind, summary = agent.outcome()
        assert kind == "sync" and "safe to remove" in summary, summary
        assert_served(good, env, names)
        assert agent.proc.poll() is None
    finally:
        for stick_dir in small.iterdir():  # the bad stick's image, unplugged by make_stick
            stick_dir.unlink(missing_ok=True)
        unmount(small)


def _wait_for_partial(stick: Stick, timeout: float = 30.0) -> Path:
    """The .partial being written on the stick (polled: the copy gives no other signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mp in mountpoints_of(stick.partitions):
            partials = list((mp / "usbagent").glob("*.partial"))
            if partials:
                return partials[0]
        time.sleep(0.005)
    raise AssertionError("no .partial appeared on the stick")


@pytest.mark.parametrize("backend", ["udisks2", "udev"])
def test_sigterm_mid_copy_stops_cleanly(
    backend: str, env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    env.write_config(backend)
    write_archive(env.destination, 1, 400 * MIB)
    agent = start_agent()
    stick = make_stick(PartSpec(label=env.label, size_mb=600))
    _wait_for_partial(stick)
    started = time.monotonic()
    assert agent.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5.0
    assert not mountpoints_of(stick.partitions), "left mounted after SIGTERM"
    leftovers = [n for n in stick_files(stick, env) if n.endswith(".partial")]
    assert leftovers == []
    last = json.loads((env.state_dir / "last" / "sync.json").read_text())
    assert last["ok"] is False and "stopped" in last["summary"]


def test_kill9_mid_copy_then_restart_completes(
    env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    names = [write_archive(env.destination, 1, 300 * MIB)]
    agent = start_agent()
    stick = make_stick(PartSpec(label=env.label, size_mb=500))
    _wait_for_partial(stick)
    agent.stop(signal.SIGKILL)
    # the stick is still mounted with a .partial on it; a new agent must clean up and finish
    again = start_agent()
    kind, summary = again.outcome(timeout=120)
    assert kind == "sync" and "safe to remove" in summary, summary
    assert_served(stick, env, names)


class NotifySocket:
    """A real AF_UNIX datagram socket playing systemd's side of sd_notify(3)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no such notify message in {timeout} s; got {self.messages}")


def test_systemd_notify_status_watchdog_and_heartbeat(
    env: Env, make_stick: MakeStick, start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    write_archive(env.destination, 1, 64 * MIB)
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = start_agent({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
    notify.wait(lambda m: m == "READY=1")
    assert notify.messages[0].startswith("STATUS=idle, watching for sticks labelled " + env.label)
    heartbeat = json.loads((env.state_dir / "heartbeat.json").read_text())
    assert heartbeat["pid"] == agent.proc.pid and heartbeat["status"].startswith("idle")
    # WATCHDOG_USEC=2 s: pings every second, from the loop
    pings = time.monotonic()
    notify.wait(lambda m: m == "WATCHDOG=1", timeout=3)
    notify.wait(lambda m: m == "WATCHDOG=1", timeout=3)
    assert time.monotonic() - pings < 3.5
    make_stick(PartSpec(label=env.label, size_mb=128))
    busy = notify.wait(lambda m: m.startswith("STATUS=") and "idle" not in m)
    busy_states = r"checking|mounting|syncing|copying \d+ of \d+, \d+% to|unmounting"
    assert re.match(rf"STATUS=({busy_states})", busy)
    kind, summary = agent.outcome()
    assert kind == "sync" and "safe to remove" in summary
    notify.wait(lambda m: m.startswith("STATUS=idle"))
    assert agent.stop() == 0
    notify.wait(lambda m: m == "STOPPING=1")


def test_stick_removed_mid_copy_is_recorded_and_agent_goes_on(
    env: Env, make_stick: MakeStick
) -> None:
    """A stick pulled mid-copy. A loop device cannot vanish while mounted (the kernel keeps
    it busy), so the `removed` event a real pull produces is put into the running agent's
    queue; the agent, backend, udisksd, mount and copy are all real."""
    write_archive(env.destination, 1, 400 * MIB)
    config = load(env.config)

    async def scenario() -> None:
        agent = AgentDaemon(config, UDisksBackend(), Watchdog())
        outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        agent.bus.subscribe(outcomes.put)
        runner = asyncio.create_task(agent.run())

        async def next_outcome() -> Outcome:
            async with asyncio.timeout(60):
                while (o := await outcomes.get()).kind == "stick-recognised":
                    pass
                return o

        stick = await asyncio.to_thread(make_stick, PartSpec(label=env.label, size_mb=600))
        await asyncio.to_thread(_wait_for_partial, stick)
        (job,) = agent.jobs.values()
        agent.queue.put_nowait(("removed", job.partition))
        pulled = await next_outcome()
        assert not pulled.ok and "removed during the copy" in pulled.summary, pulled
        assert state.last_error(env.state_dir) is not None
        assert agent.jobs == {}
        # served again after a re-plug, by the same agent
        await asyncio.to_thread(stick.unplug)
        await asyncio.to_thread(stick.plug)
        again = await next_outcome()
        assert again.ok and "safe to remove" in again.summary, again
        agent.stop()
        assert await runner == 0

    asyncio.run(scenario())


def test_demo_stick_step_serves_a_loop_stick_and_detaches_it(env: Env, stack: object) -> None:
    """`usbagent demo`'s stick step: copies shown, checked with sha256sum, nothing left."""
    name = write_archive(env.destination, 1, 2 * MIB)
    said: list[str] = []
    line = demo_stick.demo_step(load(env.config), env.root, said.append)
    assert "unmounted, safe to remove" in line, said
    assert "    the agent unmounted the stick" in "\n".join(said)
    assert f"    sha256sum -c on the stick: {name}: OK" in said
    assert not (env.root / "demo-stick.img").exists()
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(env.root) not in attached


def test_demo_stick_step_without_root_says_what_it_skipped() -> None:
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    code = (
        "from pathlib import Path; from usbagent import demo_stick; "
        "from usbagent.config import Config; "
        "print(demo_stick.demo_step(Config(), Path('/nonexistent')))"
    )
    out = subprocess.run([*user, sys.executable, "-c", code], capture_output=True, text=True)
    assert (
        out.stdout.strip()
        == "skipped: making a loop-device stick needs root (run `sudo usbagent demo`)"
    ), out


@pytest.mark.parametrize("backend", ["udisks2", "udev"])
def test_stick_formatted_while_plugged_in_is_served_each_time(
    backend: str, env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    """The label appears after the plug (mkfs on a plugged stick): served; formatted again
    (a new filesystem UUID on the same device): served again, as a new stick."""
    env.write_config(backend)
    names = [write_archive(env.destination, 1, MIB)]
    agent = start_agent()
    stick = make_stick(PartSpec(label="not-ours"))
    for _ in range(2):
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", env.label, stick.device(0)], check=True)
        kind, summary = agent.outcome()
        assert kind == "sync" and "copied 1 archive(s)" in summary, summary
        assert_served(stick, env, names)


def test_unformatted_partition_with_the_name_is_refused_after_the_probe_grace(
    env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    """`parted mkpart <label>` without mkfs: refused (unknown filesystem), but only after the
    grace period in which udev/UDisks2 could still be probing it."""
    write_archive(env.destination, 1, MIB)
    agent = start_agent()
    started = time.monotonic()
    make_stick(PartSpec(fstype="none", name=env.label))
    kind, summary = agent.outcome()
    assert kind == "refused" and "filesystem type is unknown" in summary, summary
    assert time.monotonic() - started >= PROBE_GRACE


@pytest.mark.parametrize("backend", ["udisks2", "udev"])
def test_busy_stick_that_cannot_be_unmounted_is_reported_not_safe(
    backend: str, env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    """Someone's shell sits in the stick's folder: copies are fine, but the person must
    hear "do not pull it yet" instead of "safe to remove"."""
    env.write_config(backend)
    write_archive(env.destination, 1, 200 * MIB)
    agent = start_agent()
    stick = make_stick(PartSpec(label=env.label, size_mb=300))
    partial = _wait_for_partial(stick)
    squatter = subprocess.Popen(["sleep", "120"], cwd=partial.parent.parent)
    try:
        kind, summary = agent.outcome()
        assert kind == "sync" and "copies verified, but unmount failed" in summary, summary
        assert "do not pull it yet" in summary and "safe to remove" not in summary
        last_error = json.loads((env.state_dir / "last-error.json").read_text())
        assert "do not pull it yet" in last_error["summary"]
    finally:
        squatter.kill()
        squatter.wait()


def test_watchdog_pings_stop_when_the_event_source_dies(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: object
) -> None:
    """A dead D-Bus connection must end the WATCHDOG=1 pings (systemd then restarts us).
    The shared system bus cannot be killed here, so the agent's own connection is closed."""
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = load(env.config)

    async def scenario() -> None:
        backend = UDisksBackend()
        agent = AgentDaemon(config, backend, Watchdog())
        runner = asyncio.create_task(agent.run())
        await asyncio.to_thread(notify.wait, lambda m: m == "WATCHDOG=1", 5)
        assert backend._bus is not None
        backend._bus.disconnect()  # the connection drops, as when dbus-daemon dies
        gone = await asyncio.to_thread(notify.wait, lambda m: "event source is gone" in m, 5)
        assert gone.startswith("STATUS=")
        with pytest.raises(AssertionError):  # no ping for 4 intervals
            await asyncio.to_thread(notify.wait, lambda m: m == "WATCHDOG=1", 2)
        agent.stop()
        assert await runner == 0

    asyncio.run(scenario())


def _wait_for_udisks_to_see(stick: Stick, mountpoint: Path) -> None:
    """udisksd learns of a mount from mountinfo a moment later; the agent asks it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = subprocess.run(
            ["udisksctl", "info", "-b", stick.device(0)], capture_output=True, text=True
        ).stdout
        if str(mountpoint) in info:
            return
        time.sleep(0.1)
    raise AssertionError(f"udisksd does not show {mountpoint} for {stick.device(0)}")


@pytest.mark.parametrize("backend", ["udisks2", "udev"])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_stick_mounted_by_someone_else_is_used_and_left_as_it_was_found(
    backend: str, read_only: bool, env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    env.write_config(backend)
    names = [write_archive(env.destination, 1, MIB)]
    stick = make_stick(PartSpec(label=env.label))
    options = "ro,nosuid,nodev" if read_only else "rw,nosuid,nodev"
    theirs = stick.mount(options=options)
    _wait_for_udisks_to_see(stick, theirs)

    agent = start_agent()
    kind, summary = agent.outcome()

    assert mountpoints_of(stick.partitions) == [theirs], "the agent changed someone's mount"
    found = subprocess.run(
        ["findmnt", "-n", "-o", "OPTIONS", str(theirs)], capture_output=True, text=True
    ).stdout
    assert found.split(",")[0] == options.split(",")[0]
    if read_only:
        assert kind == "refused", summary
        assert f"{theirs} is mounted read-only" in summary and "remount it read-write" in summary
        assert "fsck" not in summary
        assert not (theirs / "usbagent").exists()  # nothing written
        assert not any("stick-recognised" in line for line in agent.log), agent.text()
    else:
        assert kind == "sync" and "copied 1 archive(s)" in summary, summary
        assert f"left mounted at {theirs} as it was found" in summary
        assert "unmount it before removing the stick" in summary
        assert "safe to remove" not in summary
        assert_recorded_as_told(env, summary, "left-mounted")
        on_stick = {
            p.name: hashlib.sha256(p.read_bytes()).digest() for p in (theirs / "usbagent").iterdir()
        }
        assert on_stick == local_digests(env, names)
        recognised = [line for line in agent.log if "stick-recognised" in line]
        assert len(recognised) == 1 and "copying 1 archive(s)" in recognised[0]
    assert agent.stop() == 0


def test_a_note_of_an_old_mount_of_ours_does_not_make_a_new_foreign_mount_ours(
    env: Env, make_stick: MakeStick, start_agent: type[Agent]
) -> None:
    """A crash left the note "usbagent mounted /dev/X at P"; later a person mounts the stick
    at P themselves. The mount id tells the two apart: theirs stays mounted."""
    env.write_config("udev")
    write_archive(env.destination, 1, MIB)
    stick = make_stick(PartSpec(label=env.label))
    theirs = stick.mount()
    uuid = subprocess.run(
        ["blkid", "-p", "-s", "UUID", "-o", "value", stick.device(0)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (env.state_dir / "mounts").mkdir(parents=True)
    note = {"device": stick.device(0), "mountpoint": str(theirs), "id": 1}  # an old mount's id
    (env.state_dir / "mounts" / f"{uuid}.json").write_text(json.dumps(note))

    agent = start_agent()
    kind, summary = agent.outcome()

    assert kind == "sync" and f"left mounted at {theirs}" in summary, summary
    assert mountpoints_of(stick.partitions) == [theirs]
    assert agent.stop() == 0
