"""A throwaway loop-device "USB stick" for `usbagent demo` and the plug-latency benchmark.

Kernel loop devices and mounts outlive the process that made them, so everything here is a
context manager that detaches what it attached (and unmounts what is mounted on it) even when
the body fails. Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from usbagent import mounts
from usbagent.config import Config
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.naming import SIDECAR

WAIT_SECONDS = 10.0
SERVE_TIMEOUT = 120.0
DEMO_LABEL = "ua-demo"
Say = Callable[[str], None]


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UsbagentError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout.strip()


def can_make_sticks() -> str | None:
    """None when loop-device sticks can be made here, else the reason why not."""
    if os.geteuid() != 0:
        return "making a loop-device stick needs root (run `sudo usbagent demo`)"
    if not Path("/dev/loop-control").exists():
        return "this machine has no loop devices (/dev/loop-control is missing)"
    ping = subprocess.run(["udevadm", "control", "--ping"], capture_output=True, check=False)
    if ping.returncode != 0:
        return (
            "systemd-udevd is not running, so no plug-in event would reach the agent "
            "(start it: `/lib/systemd/systemd-udevd --daemon`; `sudo make demo` does)"
        )
    return None


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():  # the partition node appears asynchronously after partx
        if time.monotonic() > deadline:
            raise UsbagentError(f"{path} did not appear within {WAIT_SECONDS:.0f} s")
        time.sleep(0.02)


def make_image(image: Path, label: str, size_mib: int = 64, fstype: str = "ext4") -> str:
    """A GPT image with one partition named and labelled `label`; returns the fs UUID.

    ext4 labels hold 16 bytes; a longer label is left to the GPT partition name, which the
    agent matches as well.
    """
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    _run("parted", "-s", str(image), "mklabel", "gpt", "mkpart", label, fstype, "1MiB", "100%")
    with attached(image) as loop:
        _run(
            f"mkfs.{fstype}",
            *(["-q", "-F"] if fstype == "ext4" else ["-f"]),
            *(["-L", label] if len(label.encode()) <= 16 else []),
            f"{loop}p1",
        )
        uuid = _run("blkid", "-p", "-o", "value", "-s", "UUID", f"{loop}p1").lower()
    return uuid


@contextlib.contextmanager
def attached(image: Path, settle: bool = True) -> Iterator[str]:
    """Attach `image` as a loop device with its partitions ("plug it in"); detach on exit.

    `settle` waits for udev to finish with it; a latency benchmark wants to start at once.
    """
    # No --partscan: on a kernel without GPT support (CONFIG_EFI_PARTITION unset, as on the
    # test VM) a partscan-enabled loop device loses the partitions partx added whenever udev
    # re-reads its table (e.g. after losetup's own close-after-write). partx works everywhere.
    loop = _run("losetup", "--find", "--show", str(image))
    try:
        subprocess.run(["partx", "--add", loop], capture_output=True, check=False)
        _wait_for(Path(f"{loop}p1"))
        if settle:
            _run("udevadm", "settle", "--timeout=10")
        yield loop
    finally:
        detach(loop)


def _mounts_of(loop: str) -> list[str]:
    """Mount points of `loop` and its partitions, innermost first."""
    ours = [e for e in mounts.read() if e.source == loop or e.source.startswith(loop + "p")]
    return [e.mountpoint for e in reversed(ours)]


def detach(loop: str) -> None:
    """Unplug: unmount whatever is mounted from `loop`, drop its partitions, detach it."""
    for point in _mounts_of(loop):
        subprocess.run(["umount", point], capture_output=True, check=False)
    # Without partscan the kernel keeps partitions on a detached loop device (and shows them
    # on the next image attached there), so they must really go; udev probing after the
    # unmount can hold them busy for a moment.
    deadline = time.monotonic() + WAIT_SECONDS
    while Path(f"{loop}p1").exists() and time.monotonic() < deadline:
        subprocess.run(["partx", "--delete", loop], capture_output=True, check=False)
        if Path(f"{loop}p1").exists():
            time.sleep(0.05)
    subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False)
    # While udev/UDisks2 still hold it open, detach only sets autoclear; the device (and the
    # name losetup --find hands out next) is free once the backing file link is gone.
    backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file")
    deadline = time.monotonic() + WAIT_SECONDS
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    subprocess.run(["udevadm", "settle", "--timeout=10"], capture_output=True, check=False)


# --- the demo's stick step ------------------------------------------------------------------


def _demo_config(config: Config) -> Config:
    """The demo's config as the agent needs it for a loop device: loop devices are not on the
    USB bus and have no drive to power off. The label is the demo's own, so an agent already
    running here for real sticks (say "sovereign-backup") leaves the demo stick alone."""
    label = f"{DEMO_LABEL}-{os.getpid() % 10000}"
    usb = dataclasses.replace(config.usb, labels=(label,), require_usb=False, power_off=False)
    return dataclasses.replace(config, usb=usb)


async def _serve_once(config: Config, image: Path, say: Say) -> tuple[Outcome, str]:
    """Start the agent, plug the stick, wait for the sync outcome, stop the agent."""
    from usbagent import sources
    from usbagent.agent import Agent
    from usbagent.watchdog import Watchdog

    agent = Agent(config, await sources.select(config), Watchdog())
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    agent.bus.subscribe(outcomes.put)
    runner = asyncio.get_running_loop().create_task(agent.run())
    try:
        with attached(image) as loop:  # no need to wait for readiness: the snapshot covers it
            say(f"    plugged in the stick as {loop}; the agent ({agent.backend.name}) takes over")
            async with asyncio.timeout(SERVE_TIMEOUT):
                while (outcome := await outcomes.get()).kind in ("stick-recognised", "stale"):
                    say(f"    agent: {outcome.summary}")
            still_mounted = _mounts_of(loop)
            return outcome, _show_copies(loop, config.usb.directory, still_mounted, say)
    finally:
        agent.stop()
        await runner


def _show_copies(loop: str, directory: str, still_mounted: list[str], say: Say) -> str:
    """Mount the stick read-only, list the copies, check them with sha256sum -c."""
    if still_mounted:
        return f"the agent left the stick mounted at {', '.join(still_mounted)}"
    say(f"    the agent unmounted the stick ({loop}p1 is not mounted any more)")
    with tempfile.TemporaryDirectory(prefix="usbagent-demo-mnt-") as mnt:
        _run("mount", "-o", "ro,nosuid,nodev,noexec", f"{loop}p1", mnt)
        try:
            folder = Path(mnt) / directory
            for entry in sorted(folder.iterdir()):
                say(f"    on the stick: {directory}/{entry.name} ({entry.stat().st_size} bytes)")
            check = subprocess.run(
                ["sha256sum", "-c", *sorted(p.name for p in folder.glob("*" + SIDECAR))],
                cwd=folder, capture_output=True, text=True, check=False,
            )  # fmt: skip
            for line in check.stdout.splitlines():
                say(f"    sha256sum -c on the stick: {line}")
            return "" if check.returncode == 0 else "sha256sum -c found a bad copy on the stick"
        finally:
            _run("umount", mnt)


def demo_step(config: Config, workdir: Path, say: Say = print) -> str:
    """The demo's stick step: a loop-device stick served by the agent; shows the copies,
    their verification and the unmount. Returns the step's line; raises when it failed."""
    if reason := can_make_sticks():
        return f"skipped: {reason}"
    config = _demo_config(config)
    label = config.usb.labels[0]
    image = workdir / "demo-stick.img"
    say(f"    making a 64 MiB loop-device stick labelled {label!r} (ext4)")
    make_image(image, label)
    quiet = logging.getLogger("usbagent")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # `say` tells the story; the agent's INFO log repeats it
    try:
        outcome, problem = asyncio.run(_serve_once(config, image, say))
    except TimeoutError:
        raise UsbagentError(
            f"the agent did not finish serving the demo stick within {SERVE_TIMEOUT:.0f} s "
            "(run `usbagent -v demo` to see its log)"
        ) from None
    finally:
        quiet.setLevel(level)
        image.unlink(missing_ok=True)
    if not outcome.ok or problem:
        raise UsbagentError(problem or outcome.summary)
    return outcome.summary
