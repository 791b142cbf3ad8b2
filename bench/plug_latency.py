"""Plug-to-first-byte latency of the running agent, and its event-loop lag during a big copy.

    sudo .venv/bin/python -m bench.plug_latency [--backend udisks2|udev|both] [--plugs 10]
                                               [--big-mb 1024]

For each backend: start `usbagent agent` (a subprocess, as systemd would), then plug N fresh
loop-device sticks one after another and measure the time from `losetup` (the plug) to the
first `.partial` file appearing on the stick (the first byte being written). Each stick is
fresh, so every plug really copies. Then one stick gets a `--big-mb` archive and the agent's
own loop-lag probe (a 100 ms sleep timed on the loop) reports max/p99 lag during that copy.

Needs root and the device stack (udevd, and udisksd for that backend). The `.partial` poll
below is a tight loop on purpose: it is the measuring instrument, not part of the agent.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from usbagent import demo_stick, naming
from usbagent.udev import MOUNT_BASE

MIB = 1024 * 1024
PREFIX = "bench"
SEEN = {".partial", ".age"}  # a copy in progress, or (if quicker than the poll) finished


def write_archive(destination: Path, minutes_ago: int, size: int) -> str:
    name = naming.make(PREFIX, datetime.now(UTC) - timedelta(minutes=minutes_ago)).filename
    block, digest, left = os.urandom(MIB), hashlib.sha256(), size
    with (destination / name).open("wb") as f:
        while left:
            chunk = block[: min(left, MIB)]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    (destination / (name + naming.SIDECAR)).write_text(f"{digest.hexdigest()}  {name}\n")
    return name


class AgentProcess:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "usbagent", "--config", str(config), "-v", "agent"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pattern: str, start: int, timeout: float = 120.0) -> tuple[int, str]:
        """First line at index >= start matching `pattern`: (index, line)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if rx.search(self.lines[i]):
                        return i, self.lines[i]
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no {pattern!r}:\n" + "\n".join(self.lines[-30:]))
                self.cond.wait(left)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def first_byte_latency(image: Path, mountpoint_of: str, agent: AgentProcess) -> float:
    """Plug `image`; seconds from losetup to a .partial on the stick; waits for the outcome."""
    mark = len(agent.lines)
    start = time.monotonic()
    with demo_stick.attached(image, settle=False) as loop:
        folder = Path(mountpoint_of) / "usbagent"
        while not (folder.is_dir() and any(p.suffix in SEEN for p in folder.iterdir())):
            if time.monotonic() - start > 30:
                tail = "\n".join(line for line in agent.lines if "ub-" in line or "ERROR" in line)
                raise RuntimeError(f"no .partial in {folder} after 30 s; agent log:\n{tail}")
            time.sleep(0.0005)
        elapsed = time.monotonic() - start
        agent.wait_line(r"usbagent\.agent: sync: ", mark)
        del loop
    return elapsed


def run_backend(backend: str, plugs: int, big_mb: int, work: Path) -> None:
    label = "ub-" + secrets.token_hex(3)
    destination = work / backend / "archives"
    destination.mkdir(parents=True)
    config = work / backend / "config.toml"
    config.write_text(
        f'[archive]\ndestination = "{destination}"\nprefix = "{PREFIX}"\n'
        f'[usb]\nlabels = ["{label}"]\nrequire_usb = false\nkeep = 1\nbackend = "{backend}"\n'
        f'[agent]\nstate_dir = "{work / backend / "state"}"\n[notify]\nenabled = false\n'
    )
    write_archive(destination, 10, 64 * MIB)
    images = []
    for i in range(plugs):
        image = work / backend / f"stick{i}.img"
        uuid = demo_stick.make_image(image, label, size_mib=160)
        images.append((image, uuid))
    agent = AgentProcess(config)
    try:
        agent.wait_line(r"usbagent\.agent: ready: ", 0, 30)
        latencies = []
        for image, uuid in images:
            mountpoint = f"/media/root/{label}" if backend == "udisks2" else f"{MOUNT_BASE}/{uuid}"
            latencies.append(first_byte_latency(image, mountpoint, agent))
        ms = sorted(round(x * 1000, 1) for x in latencies)
        median = statistics.median(ms)
        print(
            f"{backend}: plug -> first byte over {plugs} plugs: median {median:.1f} ms, "
            f"min {ms[0]} ms, max {ms[-1]} ms (target < 500 ms median)"
        )
        print(f"{backend}:   all (ms): {ms}")
        if big_mb:
            for image, _ in images:
                image.unlink()
            write_archive(destination, 5, big_mb * MIB)  # newest: the one a fresh stick gets
            big = work / backend / "big.img"
            demo_stick.make_image(big, label, size_mib=big_mb * 11 // 10 + 200)  # ext4 overhead
            mark = len(agent.lines)
            start = time.monotonic()
            with demo_stick.attached(big):
                _, line = agent.wait_line(r"event loop lag meanwhile", mark, 600)
                agent.wait_line(r"usbagent\.agent: sync: ", mark, 600)
            took = time.monotonic() - start
            lag = line.split("usbagent.agent: ", 1)[1]
            print(f"{backend}: {big_mb} MiB copy+verify, plug to done {took:.1f} s; {lag}")
    finally:
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("udisks2", "udev", "both"), default="both")
    parser.add_argument("--plugs", type=int, default=10)
    parser.add_argument("--big-mb", type=int, default=1024, help="0 skips the loop-lag run")
    args = parser.parse_args()
    if reason := demo_stick.can_make_sticks():
        print(f"plug_latency: {reason}", file=sys.stderr)
        return 1
    backends = ("udisks2", "udev") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="usbagent-bench-", dir="/var/tmp") as tmp:
        for backend in backends:
            run_backend(backend, args.plugs, args.big_mb, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
