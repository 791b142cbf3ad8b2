"""The tier's run folders (QEMU's overlay, sockets, sticks) under /var/tmp, and their owners.

Each run writes its owner (pid and start time) into its folder. A run that was killed
cannot remove its folder (hundreds of MB of overlay and stick images); the next run
removes every folder whose owner is gone, and never one whose owner still runs (another
run on this machine at the same time). Folders without an owner record are left alone:
nothing says whose they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "usbagent-vm-"
OWNER = "owner"


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks after boot), None if it is gone.

    With the pid it names one process: a recycled pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def make(root: Path) -> Path:
    """A new run folder under `root`, owned by this process."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    (path / OWNER).write_text(f"{os.getpid()} {start_time(os.getpid())}\n")
    return path


def disown(folder: Path) -> None:
    """Keep `folder` after this run (USBAGENT_VM_KEEP): without an owner nobody removes it."""
    (folder / OWNER).unlink(missing_ok=True)


def abandoned(folder: Path) -> bool:
    """Whether the run that made `folder` is gone (False when unknown)."""
    try:
        pid, started = (folder / OWNER).read_text().split()
        return start_time(int(pid)) != started
    except (OSError, ValueError):
        return False


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the run folders under `root` whose owner is gone; the ones removed."""
    gone = [d for d in sorted(root.glob(PREFIX + "*")) if d.is_dir() and abandoned(d)]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone
