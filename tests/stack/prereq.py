"""Whether device stack tests can run here, decided purely from the facts (unit-tested).

Without root they are skipped on a developer's machine but fail under CI=true: a CI run
that skipped every device test would look healthy while testing nothing. Missing tools or
no loop support are setup errors with a fix, never a skip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.stack.daemons import UDEVD, UDISKSD

TOOLS = ("dbus-daemon", "dbus-send", "udevadm", "losetup", "partx", "parted", "mount", "umount",
         "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "mkfs.vfat", "mkfs.exfat", "unshare")  # fmt: skip
LOOP_CONTROL = Path("/dev/loop-control")


@dataclass(frozen=True)
class Facts:
    root: bool
    ci: bool
    missing: tuple[str, ...]  # tools/daemons not installed
    loop_support: bool


@dataclass(frozen=True)
class Verdict:
    action: str  # "skip" or "fail"
    reason: str


def gather() -> Facts:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [p for p in (UDEVD, UDISKSD) if not Path(p).exists()]
    return Facts(
        root=os.geteuid() == 0,
        ci=os.environ.get("CI") == "true",
        missing=tuple(missing),
        loop_support=LOOP_CONTROL.exists(),
    )


def verdict(facts: Facts) -> Verdict | None:
    """None when the stack can run; else whether to skip or fail, and the one-line why/fix."""
    if not facts.root:
        reason = "device stack tests need root (loop devices, mount, udevd, udisksd)"
        if facts.ci:
            return Verdict("fail", f"{reason}; CI=true must not skip them: run CI as root")
        return Verdict("skip", reason)
    if facts.missing:
        missing = ", ".join(facts.missing)
        return Verdict("fail", f"device stack tools missing: {missing}; run `make system-deps`")
    if not facts.loop_support:
        return Verdict("fail", f"no {LOOP_CONTROL}: load the loop module (modprobe loop)")
    return None
