"""What a `usbagent doctor` probe returns (`Finding`: a problem with its fix, or a fact) and
where doctor looks (`Locations`: the real system paths by default; tests, and unusual
installs, point it elsewhere, e.g. $USBAGENT_UNIT_DIRS for the unit folders).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from usbagent import systemd

UNIT_DIRS_ENV = "USBAGENT_UNIT_DIRS"
SYSTEM_UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    message: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok       {self.name}: {self.message}"
        return f"PROBLEM  {self.name}: {self.message}. Fix: {self.fix}"


def _default_unit_dirs() -> tuple[Path, ...]:
    configured = os.environ.get(UNIT_DIRS_ENV)
    if configured:
        return tuple(Path(p) for p in configured.split(":") if p)
    if systemd.scope_args():  # a user manager
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        user_dirs = [Path.home() / ".config/systemd/user", Path("/etc/systemd/user")]
        return tuple(([Path(runtime) / "systemd/user"] if runtime else []) + user_dirs)
    return SYSTEM_UNIT_DIRS


@dataclass(frozen=True)
class Locations:
    """Where the deployment lives; tests point these at temporary folders."""

    unit_dirs: tuple[Path, ...] = field(default_factory=_default_unit_dirs)
    udev_control: Path = Path("/run/udev/control")
    mountinfo: Path = Path("/proc/self/mountinfo")
    search_path: str = field(default_factory=lambda: os.environ.get("PATH", os.defpath))
    system_bus: str | None = None  # None: the system bus ($DBUS_SYSTEM_BUS_ADDRESS honoured)
