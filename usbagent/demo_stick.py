"""A throwaway loop-device "USB stick" for `usbagent demo` and the plug-latency benchmark.

Kernel loop devices and mounts outlive the process that made them, so everything here is a
context manager that detaches what it attached (and unmounts what is mounted on it) even when
the body fails. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from usbagent.errors import UsbagentError

WAIT_SECONDS = 10.0


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
    return None


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():  # the partition node appears asynchronously after partx
        if time.monotonic() > deadline:
            raise UsbagentError(f"{path} did not appear within {WAIT_SECONDS:.0f} s")
        time.sleep(0.02)


def make_image(image: Path, label: str, size_mib: int = 64, fstype: str = "ext4") -> str:
    """A GPT image with one partition named and labelled `label`; returns the fs UUID."""
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    _run("parted", "-s", str(image), "mklabel", "gpt", "mkpart", label, fstype, "1MiB", "100%")
    with attached(image) as loop:
        _run(
            f"mkfs.{fstype}",
            *(["-q", "-F"] if fstype == "ext4" else ["-f"]),
            "-L",
            label,
            f"{loop}p1",
        )
        uuid = _run("blkid", "-p", "-o", "value", "-s", "UUID", f"{loop}p1").lower()
    return uuid


@contextlib.contextmanager
def attached(image: Path, settle: bool = True) -> Iterator[str]:
    """Attach `image` as a loop device with its partitions ("plug it in"); detach on exit.

    `settle` waits for udev to finish with it; a latency benchmark wants to start at once.
    """
    loop = _run("losetup", "--find", "--show", "--partscan", str(image))
    try:
        # Kernels that scan partition tables made p1 already; partx then fails harmlessly.
        subprocess.run(["partx", "--add", loop], capture_output=True, check=False)
        _wait_for(Path(f"{loop}p1"))
        if settle:
            _run("udevadm", "settle", "--timeout=10")
        yield loop
    finally:
        detach(loop)


def _mounts_of(loop: str) -> list[str]:
    """Mount points of `loop` and its partitions, innermost first."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target = line.split(" ")[:2]
        if source == loop or source.startswith(loop + "p"):
            points.append(target.replace("\\040", " "))
    return points[::-1]


def detach(loop: str) -> None:
    """Unplug: unmount whatever is mounted from `loop`, drop its partitions, detach it."""
    for point in _mounts_of(loop):
        subprocess.run(["umount", point], capture_output=True, check=False)
    subprocess.run(["partx", "--delete", loop], capture_output=True, check=False)
    subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False)
    # While udev/UDisks2 still hold it open, detach only sets autoclear; the device (and the
    # name losetup --find hands out next) is free once the backing file link is gone.
    backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file")
    deadline = time.monotonic() + WAIT_SECONDS
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    subprocess.run(["udevadm", "settle", "--timeout=10"], capture_output=True, check=False)
