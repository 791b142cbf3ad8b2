"""Boot the guest with QEMU (TCG) and drive it: run commands, wait on conditions, plug sticks.

The guest boots its own kernel with systemd as PID 1 from a qcow2 overlay on the cached base
image (`image`), so every test run starts from the clean image and the base is never
written. Channels:

- QMP (a unix socket) for the machine: hot-plug and pull USB sticks and disks, power.
- A virtio serial port to `vm-agent` in the guest (tests/vm/guest/vm-agent.py): one JSON
  line per command, answered with its exit status and output.
- ttyS0 (the kernel and systemd console) goes to a log file kept for failures.

A power cut is QEMU killed without a shutdown; `boot()` again starts the same overlay. The
overlay honours the guest's flushes (cache=writeback): with cache=unsafe QEMU keeps qcow2's
own mapping tables in its memory, and a kill would lose writes the guest had flushed.
Waiting is always on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.vm.image import Image

BOOT_TIMEOUT = 600.0  # TCG on a busy 2-core host: a boot has taken 3+ min
MEMORY_MB = 1536
# kvm: `-cpu max` shows SVM to the guest, whose kvm modules then load for nothing (seconds).
APPEND = (
    "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=0 "
    "modprobe.blacklist=kvm,kvm_amd,kvm_intel,powernow_k8 "
)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel SIGKILLs the child when `parent` (the starter) dies.

    A pytest killed (timeout, ^C twice, OOM) must not leave a QEMU burning CPU behind it.
    """

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:  # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start QEMU so that it dies with this process (see `die_with`)."""
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with(os.getpid())
    )


@dataclass(frozen=True)
class UsbStick:
    """A USB mass-storage stick backed by an image file; `name` is its QEMU device id."""

    name: str
    image: Path
    serial: str

    def qemu_args(self) -> list[str]:
        """The command-line form of `Vm.plug_usb`: the same node and device names."""
        node = f"n-{self.name}"
        return [
            "-blockdev", f"driver=raw,node-name={node},file.driver=file,"
            f"file.filename={self.image}",
            "-device", f"usb-storage,bus=xhci.0,drive={node},id={self.name},"
            f"serial={self.serial},removable=on",
        ]  # fmt: skip


class VmError(Exception):
    """The guest or QEMU did not do what a test needed; the message says what."""


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    def check(self, what: str) -> Result:
        if self.rc != 0:
            raise VmError(f"{what}: exit {self.rc}\nstdout: {self.out}\nstderr: {self.err}")
        return self


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `cond` until it returns something truthy; VmError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise VmError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Qmp:
    """A minimal QMP client: one command at a time, events skipped."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise VmError("QMP connection closed (QEMU exited)")
        return dict(json.loads(line))

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise VmError(f"QMP {command} {arguments}: {reply['error']}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


class Vm:
    """One guest machine: a disk overlay, and QEMU while it runs."""

    def __init__(self, image: Image, workdir: Path, payload: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.payload = payload  # an ext4 image the guest sees as /dev/vdb (the wheels)
        self.overlay = workdir / "disk.qcow2"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self._agent: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self.boots = 0
        self.clock: datetime | None = None  # the hardware clock the last boot began with
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
             "-b", str(image.root), str(self.overlay)],
            check=True,
        )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def console_log(self) -> Path:
        return self.workdir / f"console-{self.boots}.log"

    def boot(self, sticks: tuple[UsbStick, ...] = (), clock: datetime | None = None) -> None:
        """Start QEMU on the overlay, with `sticks` plugged in from power-on, and wait until
        vm-agent answers. A stick plugged at boot is pulled like a hot-plugged one.

        `clock`: what the guest's hardware clock says at power-on (default: the host's
        time). A later one is a machine that was off that long (the guest has no network
        time to correct it).
        """
        if self.proc is not None:
            raise VmError("boot(): the machine is already running")
        self.boots += 1
        self.clock = clock
        qmp_path, agent_path = self.workdir / "qmp.sock", self.workdir / "agent.sock"
        for p in (qmp_path, agent_path):
            p.unlink(missing_ok=True)
        cmd = [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(MEMORY_MB), "-smp", "2",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", APPEND + os.environ.get("USBAGENT_VM_APPEND", ""),
            "-drive", f"file={self.overlay},format=qcow2,if=virtio,cache=writeback",
            "-drive", f"file={self.payload},format=raw,if=virtio,readonly=on",
            "-device", "qemu-xhci,id=xhci",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=agent,path={agent_path},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=vm-agent",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-serial", f"file:{self.console_log}",
            "-no-reboot",
            *(["-rtc", f"base={clock.astimezone(UTC):%Y-%m-%dT%H:%M:%S}"] if clock else []),
            *(arg for stick in sticks for arg in stick.qemu_args()),
        ]  # fmt: skip
        self.proc = spawn(cmd)
        wait_for(lambda: qmp_path.exists() and agent_path.exists(), 30, "QEMU's sockets")
        self.qmp = Qmp(qmp_path)
        self._agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._agent.connect(str(agent_path))
        self._buf = b""
        self._replies = {}
        self._await_ready()

    def _await_ready(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            self._pump(deadline, "the guest's vm-agent (boot)")
            if 0 in self._replies:
                del self._replies[0]
                return

    def _pump(self, deadline: float, what: str) -> None:
        """Read what the agent sent until at least one line, or fail at the deadline."""
        assert self._agent is not None
        if self.proc is not None and self.proc.poll() is not None:
            raise VmError(f"QEMU exited ({self.proc.returncode}) while waiting for {what}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VmError(f"timed out waiting for {what}; console: {self.console_log}")
        self._agent.settimeout(min(remaining, 1.0))
        try:
            chunk = self._agent.recv(1 << 20)
        except TimeoutError:
            return
        if not chunk:
            raise VmError(f"agent channel closed while waiting for {what}")
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                reply = json.loads(line)
                self._replies[int(reply["id"])] = reply

    def sh(self, cmd: str, timeout: float = 120, stdin: bytes = b"") -> Result:
        """Run `cmd` with bash as root in the guest; its exit status and output."""
        if self._agent is None:
            raise VmError("sh(): the machine is not running")
        rid = next(self._ids)
        req = {"id": rid, "cmd": cmd, "timeout": timeout, "stdin": base64.b64encode(stdin).decode()}
        self._agent.sendall(json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + timeout + 15
        while rid not in self._replies:
            self._pump(deadline, f"guest command {cmd!r}")
        reply = self._replies.pop(rid)
        return Result(
            int(reply["rc"]),
            base64.b64decode(reply["out"]).decode(errors="replace"),
            base64.b64decode(reply["err"]).decode(errors="replace"),
        )

    def ok(self, cmd: str, timeout: float = 120) -> str:
        """Run `cmd`, fail unless it exits 0; its stdout."""
        return self.sh(cmd, timeout).check(cmd).out

    def wait_guest(self, condition: str, timeout: float, what: str) -> None:
        """Wait (inside the guest, so no round trip per poll) until a shell condition holds."""
        script = f"until {condition}; do sleep 0.2; done"
        r = self.sh(f"timeout {timeout:.0f} bash -c {shlex.quote(script)}", timeout + 5)
        if r.rc != 0:
            raise VmError(f"timed out after {timeout:.0f} s waiting for {what} ({condition})")

    def write(self, path: str, data: bytes | str, mode: str = "0644") -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.sh(f"install -D -m {mode} /dev/stdin {shlex.quote(path)}", stdin=raw).check(
            f"write {path}"
        )

    # --- hardware ------------------------------------------------------------------------

    def _qmp(self) -> Qmp:
        if self.qmp is None:
            raise VmError("the machine is not running")
        return self.qmp

    def _add_image(self, name: str, image: Path) -> Qmp:
        """The block node `n-<name>` backed by `image`, for a device_add to plug in."""
        qmp = self._qmp()
        qmp.execute(
            "blockdev-add",
            **{
                "node-name": f"n-{name}",
                "driver": "raw",
                "file": {"driver": "file", "filename": str(image)},
            },
        )
        return qmp

    def plug_usb(self, name: str, image: Path, serial: str) -> None:
        """Hot-plug `image` as a USB mass-storage stick on the xHCI bus."""
        qmp = self._add_image(name, image)
        qmp.execute(
            "device_add", driver="usb-storage", id=name, drive=f"n-{name}", bus="xhci.0",
            serial=serial, removable=True,
        )  # fmt: skip

    def plug_disk(self, name: str, image: Path, serial: str) -> None:
        """Hot-plug `image` as a virtio disk (not on USB)."""
        qmp = self._add_image(name, image)
        qmp.execute("device_add", driver="virtio-blk-pci", id=name, drive=f"n-{name}",
                    serial=serial)  # fmt: skip

    def unplug(self, name: str, timeout: float = 30) -> None:
        """Pull a device (device_del), wait until QEMU has let it go, drop its backend."""
        qmp = self._qmp()
        with contextlib.suppress(VmError):  # already gone (the guest powered it off)
            qmp.execute("device_del", id=name)
        wait_for(lambda: not self.has_device(name), timeout, f"device {name} to leave")
        self.drop_backend(name)

    def drop_backend(self, name: str, timeout: float = 15) -> None:
        """Remove the block node of a pulled device (QEMU releases it shortly after)."""
        node = f"n-{name}"

        def gone() -> bool:
            nodes = {n["node-name"] for n in self._qmp().execute("query-named-block-nodes")}
            if node in nodes:
                with contextlib.suppress(VmError):  # still in use for a moment
                    self._qmp().execute("blockdev-del", **{"node-name": node})
                return False
            return True

        wait_for(gone, timeout, f"QEMU to release block node {node}")

    def has_device(self, name: str) -> bool:
        """Is a device with this id still on QEMU's buses?"""
        return name in _ids(self._qmp().execute("qom-list", path="/machine/peripheral"))

    def power_cut(self) -> None:
        """Kill QEMU: the guest loses whatever it had not written to its disks."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self._disconnect()

    def shutdown(self, timeout: float = 90) -> None:
        """A clean poweroff, then QEMU exits (-no-reboot); a kill if it does not."""
        if self.proc is None:
            return
        with contextlib.suppress(VmError, OSError):
            self._qmp().execute("system_powerdown")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._disconnect()

    def _disconnect(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
        if self._agent is not None:
            self._agent.close()
        self.qmp, self._agent, self.proc = None, None, None

    def console_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _ids(entries: list[dict[str, Any]]) -> set[str]:
    return {e["name"] for e in entries if str(e.get("type", "")).startswith("child<")}


@contextlib.contextmanager
def running(vm: Vm) -> Iterator[Vm]:
    vm.boot()
    try:
        yield vm
    finally:
        vm.power_cut()


def environment_problem() -> str | None:
    """Why this machine cannot run the tier, or None."""
    if os.geteuid() != 0:
        return "the vm tier needs root (mmdebstrap --mode=root, mkfs of stick images)"
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "mkfs.vfat",
                 "mkfs.exfat", "parted", "mdir", "mcopy"):  # fmt: skip
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            return f"{tool} is not installed (sudo make vm-deps)"
    return None
