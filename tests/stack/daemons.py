"""The real device stack's daemons: system D-Bus, systemd-udevd and udisksd.

Each is started only when it is not already answering, and `Stack.stop()` stops only what
this `Stack` started, so the stack can be brought up on a machine (or CI run) where some or
all of them already run without disturbing their other users. "Running" always means
"answering" (the bus replies, udevd answers a ping, the UDisks2 name is owned): a process
that exists but does not answer is no use to a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_BUS_DIR = Path("/run/dbus")
SYSTEM_BUS_SOCKET = SYSTEM_BUS_DIR / "system_bus_socket"
SYSTEM_BUS_PIDFILE = SYSTEM_BUS_DIR / "pid"
SYSTEM_BUS_ADDRESS = f"unix:path={SYSTEM_BUS_SOCKET}"
UDEVD = "/lib/systemd/systemd-udevd"
UDISKSD = "/usr/libexec/udisks2/udisksd"
UDISKS_NAME = "org.freedesktop.UDisks2"
POLKIT_NAME = "org.freedesktop.PolicyKit1"
DEFAULT_LOG_DIR = Path("/run/usbagent-stack")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class StackError(RuntimeError):
    """A daemon of the stack could not be started or stopped; the message says which and why."""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; for kernel/daemon state that offers no event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _run(*argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def bus_answers() -> bool:
    """True when the system bus socket accepts a connection and the bus replies to GetId."""
    if not SYSTEM_BUS_SOCKET.exists():
        return False
    try:
        r = _run(
            "dbus-send", "--system", "--print-reply", "--reply-timeout=2000",
            "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.GetId",
            timeout=5,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def name_owned(name: str) -> bool:
    """True when `name` has an owner on the system bus (the daemon is registered, not just up)."""
    try:
        r = _run(
            "dbus-send", "--system", "--print-reply", "--reply-timeout=2000",
            "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner", f"string:{name}",
            timeout=5,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and "boolean true" in r.stdout


def name_owner_pid(name: str) -> int | None:
    """Pid of the process owning `name` on the system bus, None if nobody owns it."""
    try:
        r = _run(
            "dbus-send", "--system", "--print-reply", "--reply-timeout=2000",
            "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetConnectionUnixProcessID", f"string:{name}",
            timeout=5,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    words = r.stdout.split()
    return int(words[-1]) if r.returncode == 0 and "uint32" in words else None


def udevd_answers() -> bool:
    """True when a udevd answers on its control socket."""
    try:
        return _run("udevadm", "control", "--ping", "--timeout=2", timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def pids_named(comm: str) -> list[int]:
    """Pids of processes whose command name (/proc/PID/comm, max 15 chars) is `comm`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == comm[:15]:
                pids.append(int(entry.name))
    return pids


def pid_is(pid: int, comm: str) -> bool:
    """True if `pid` is alive and still the program `comm` (guards against a reused pid)."""
    try:
        return pid_alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == comm[:15]
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, what: str, timeout: float) -> None:
    """Wait until process `pid` has exited (a zombie counts as gone: its parent reaps it)."""
    wait_for(lambda: not pid_alive(pid), timeout, f"{what} to exit")


def terminate(pid: int, what: str) -> None:
    """SIGTERM `pid`, wait for it to go, SIGKILL if it will not; raise if it survives even that."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_gone(pid, f"{what} (pid {pid})", STOP_TIMEOUT)
    except StackError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, f"{what} (pid {pid}) after SIGKILL", 5)


@dataclass
class Stack:
    """The running stack; remembers what it started so `stop()` touches nothing else."""

    log_dir: Path = DEFAULT_LOG_DIR
    system_bus_address: str = SYSTEM_BUS_ADDRESS
    started: list[str] = field(default_factory=list)  # "dbus", "udevd", "udisksd", in order
    dbus_pid: int | None = None
    udisksd_pid: int | None = None
    _udisksd: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def state_file(self) -> Path:
        """Where `python -m tests.stack up` leaves what it started, for a later `down`."""
        return self.log_dir / "started.json"

    def save(self) -> None:
        state = {
            "started": self.started,
            "dbus_pid": self.dbus_pid,
            "udisksd_pid": self.udisksd_pid,
        }
        self.state_file.write_text(json.dumps(state))

    @classmethod
    def load(cls, log_dir: Path = DEFAULT_LOG_DIR) -> Stack:
        """The Stack a previous `save()` described; an empty one (stops nothing) if none."""
        stack = cls(log_dir=log_dir)
        with contextlib.suppress(FileNotFoundError):
            state = json.loads(stack.state_file.read_text())
            stack.started = list(state["started"])
            stack.dbus_pid = state["dbus_pid"]
            stack.udisksd_pid = state["udisksd_pid"]
        return stack

    @property
    def udisksd_log(self) -> Path:
        return self.log_dir / "udisksd.log"

    def start(self) -> Stack:
        """Start whichever daemons do not answer yet, and wait until each one answers."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not bus_answers():
                self._start_dbus()
            if not udevd_answers():
                self._start_udevd()
            if not name_owned(UDISKS_NAME):
                self._start_udisksd()
        except BaseException:
            with contextlib.suppress(StackError):  # the start failure is the news
                self.stop()
            raise
        return self

    def _start_dbus(self) -> None:
        # A bus that died leaves its pid file behind and dbus-daemon then refuses to start;
        # the socket did not answer (checked by the caller), so the file is stale.
        SYSTEM_BUS_DIR.mkdir(parents=True, exist_ok=True)
        SYSTEM_BUS_PIDFILE.unlink(missing_ok=True)
        SYSTEM_BUS_SOCKET.unlink(missing_ok=True)
        r = _run("dbus-daemon", "--system", "--fork", "--print-pid")
        if r.returncode != 0:
            raise StackError(f"dbus-daemon --system failed: {r.stderr.strip()}")
        self.dbus_pid = int(r.stdout.split()[0])
        self.started.append("dbus")
        wait_for(bus_answers, START_TIMEOUT, "the system bus to answer")

    def _start_udevd(self) -> None:
        r = _run(UDEVD, "--daemon")
        if r.returncode != 0:
            raise StackError(f"{UDEVD} --daemon failed: {r.stderr.strip()}")
        self.started.append("udevd")
        wait_for(udevd_answers, START_TIMEOUT, "systemd-udevd to answer a ping")
        # Devices that appeared while no udevd ran have no udev database entry yet.
        _run("udevadm", "trigger", "--subsystem-match=block", "--action=change")
        _run("udevadm", "settle", "--timeout=30", timeout=40)

    def _start_udisksd(self) -> None:
        log = self.udisksd_log.open("ab")
        try:
            self._udisksd = subprocess.Popen(
                [UDISKSD],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed by the developer's Ctrl-C on the shell
            )
        finally:
            log.close()
        self.udisksd_pid = self._udisksd.pid
        self.started.append("udisksd")
        proc = self._udisksd

        def ready() -> bool:
            if proc.poll() is None:
                return name_owned(UDISKS_NAME)
            if name_owned(UDISKS_NAME):  # another udisksd won the race for the name: use it
                self.started.remove("udisksd")
                self.udisksd_pid = self._udisksd = None
                return True
            tail = self.udisksd_log.read_text(errors="replace")[-2000:]
            raise StackError(f"udisksd exited with {proc.returncode}; log:\n{tail}")

        wait_for(ready, START_TIMEOUT, f"{UDISKS_NAME} on the system bus")

    def stop(self) -> None:
        """Stop, in reverse order, only the daemons this Stack started; raise if one survives."""
        errors: list[str] = []
        for name, stop in (
            ("udisksd", self._stop_udisksd),
            ("udevd", self._stop_udevd),
            ("dbus", self._stop_dbus),
        ):
            if name in self.started:
                try:
                    stop()
                    self.started.remove(name)
                except (StackError, OSError, subprocess.SubprocessError) as e:
                    errors.append(f"{name}: {e}")
        if errors:
            raise StackError("could not stop the stack: " + "; ".join(errors))

    def _stop_udisksd(self) -> None:
        if self.udisksd_pid is not None and pid_is(self.udisksd_pid, "udisksd"):
            terminate(self.udisksd_pid, "udisksd")
        if self._udisksd is not None:
            self._udisksd.wait(5)  # reap our child
        self.udisksd_pid = None
        self._udisksd = None

    def _stop_udevd(self) -> None:
        pids = pids_named("systemd-udevd")
        _run("udevadm", "control", "--exit", timeout=STOP_TIMEOUT + 5)
        for pid in pids:  # --exit returns once udevd stopped listening; wait for the process
            wait_gone(pid, f"systemd-udevd (pid {pid})", STOP_TIMEOUT)

    def _stop_dbus(self) -> None:
        if self.dbus_pid is None or not pid_is(self.dbus_pid, "dbus-daemon"):
            self.dbus_pid = None
            return
        # Services this bus activated (polkitd, for udisksd) would outlive it: stop them too.
        activated = [pid for name in (POLKIT_NAME, UDISKS_NAME) if (pid := name_owner_pid(name))]
        terminate(self.dbus_pid, "dbus-daemon")
        for pid in activated:
            if pid_alive(pid):
                terminate(pid, f"bus-activated service (pid {pid})")
        self.dbus_pid = None
        SYSTEM_BUS_PIDFILE.unlink(missing_ok=True)

    def status(self) -> dict[str, bool]:
        """Which daemons answer right now (whoever started them)."""
        return {
            "dbus": bus_answers(),
            "udevd": udevd_answers(),
            "udisksd": name_owned(UDISKS_NAME),
        }
