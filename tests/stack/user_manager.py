"""A real systemd user manager (`systemd --user`) for testing the units end to end.

This machine has no systemd as PID 1, but `systemd --user` runs when /run/systemd/system
exists (MACHINE-NOTES). Each manager gets its own runtime dir under /run, so its private
socket, its unit dir ($XDG_RUNTIME_DIR/systemd/user) and everything it made go away with it.

Caution: while /run/systemd/system exists, Debian package scripts believe systemd is PID 1;
never run apt-get then. The manager creates the folder only if missing and removes only
what it created.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import usbagent
from tests.stack.daemons import StackError, wait_for

SYSTEMD = "/lib/systemd/systemd"
BOOTED_MARKER = Path("/run/systemd/system")  # sd_booted(3): what the manager checks for
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
LOCK = Path("/run/lock/usbagent-test-user-manager.lock")
# What the manager leaves in /run/systemd besides the marker; removed if it made them.
MANAGER_LEFTOVERS = (Path("/run/systemd/unit-root"), Path("/run/systemd/systemd-units-load"))
# No journald here: a top-level drop-in sends every service's output to one file.
LOG_DROPIN = "[Service]\nStandardOutput=append:{log}\nStandardError=append:{log}\n"


# Settings that fail with 226/NAMESPACE under this user manager on this VM (tested one by
# one: ProtectKernelTunables= alone; ProtectControlGroups= together with ReadWritePaths=).
# They are standard under the system manager, so the shipped units keep them.
NOT_UNDER_USER_MANAGER = ("ProtectKernelTunables=", "ProtectControlGroups=")


def _installation_under_tmp() -> list[str]:
    """Folders of the usbagent under test that PrivateTmp= would hide (a checkout in /tmp)."""
    folders = {Path(sys.prefix).resolve(), Path(usbagent.__file__).resolve().parents[1]}
    tmp = (Path("/tmp"), Path("/var/tmp"))
    return sorted(str(f) for f in folders if any(f.is_relative_to(t) for t in tmp))


def adapt_for_user_manager(text: str) -> str:
    """A unit rendered for the system manager, as this user manager can run it.

    multi-user.target does not exist for a user manager (its equivalent is default.target),
    and the NOT_UNDER_USER_MANAGER settings are dropped; everything else runs as shipped.
    When the checkout under test lives in /tmp (CI clones anywhere), it is bound back into
    the services' private /tmp read-only, so ExecStart= still finds it.
    """
    lines = [line for line in text.splitlines() if not line.startswith(NOT_UNDER_USER_MANAGER)]
    hidden = _installation_under_tmp()
    if hidden and "PrivateTmp=yes" in lines:
        lines.insert(lines.index("[Service]") + 1, f"BindReadOnlyPaths={' '.join(hidden)}")
    return "\n".join(lines).replace("WantedBy=multi-user.target", "WantedBy=default.target")


@dataclass
class UserManager:
    runtime_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def unit_dir(self) -> Path:
        return self.runtime_dir / "systemd" / "user"

    @property
    def env(self) -> dict[str, str]:
        """Environment for `systemctl --user` and friends to reach this manager."""
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["systemctl", "--user", "--no-pager", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and r.returncode != 0:
            tail = "\n".join(self.journal().splitlines()[-30:])
            raise StackError(f"systemctl --user {' '.join(args)}: {r.stderr.strip()}\n{tail}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "--property=" + ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def install(self, units: Mapping[str, str], dropins: Mapping[str, str] = {}) -> None:
        """Write units (adapted) and drop-ins ({unit: text}), then daemon-reload."""
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (self.unit_dir / name).write_text(adapt_for_user_manager(text))
        for name, text in dropins.items():
            d = self.unit_dir / f"{name}.d"
            d.mkdir(exist_ok=True)
            (d / "test.conf").write_text(text)
        self.systemctl("daemon-reload")

    def wait_until(self, unit: str, what: str, timeout: float, **expected: str) -> None:
        """Poll `systemctl show` until every expected property has its value."""
        wait_for(
            lambda: all(self.show(unit, *expected).get(k) == v for k, v in expected.items()),
            timeout,
            f"{unit} {what} ({expected}); now {self.show(unit, *expected)}",
        )

    def journal(self) -> str:
        """Every service's stdout/stderr, and the manager's own (there is no journald)."""
        return self.log.read_text(errors="replace")

    def is_running(self) -> bool:
        state = self.systemctl("is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")


@contextlib.contextmanager
def user_manager() -> Iterator[UserManager]:
    """Start `systemd --user` in a fresh runtime dir; at exit stop it and all it started.

    One at a time on this machine (a lock in /run/lock): what exists in /run/systemd before
    the start, and so what to remove after, must not depend on another test run's manager.
    """
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with _user_manager() as manager:
            yield manager


@contextlib.contextmanager
def _user_manager() -> Iterator[UserManager]:
    created = [p for p in (BOOTED_MARKER, *MANAGER_LEFTOVERS) if not p.exists()]
    BOOTED_MARKER.mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="usbagent-um-", dir="/run"))
    log = runtime.with_name(runtime.name + ".log")
    dropin = runtime / "systemd" / "user" / "service.d" / "10-log.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text(LOG_DROPIN.format(log=log))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(runtime),
    }
    proc = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [SYSTEMD, "--user"],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        manager = UserManager(runtime_dir=runtime, process=proc, log=log)
        wait_for(
            lambda: proc.poll() is not None or manager.is_running(),
            START_TIMEOUT,
            "systemd --user to answer",
        )
        if proc.poll() is not None:
            raise StackError(f"systemd --user exited {proc.returncode}: {log.read_text()}")
        yield manager
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(runtime, ignore_errors=True)
        log.unlink(missing_ok=True)
        for path in created[::-1]:  # the marker (a parent) last
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes the user manager stop every unit and exit; SIGKILL its group if stuck."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
