"""/proc/self/mountinfo, parsed once, for every question asked of it.

Which filesystem is mounted exactly here (`usbagent sync` refuses a plain folder), where is
a device mounted (the backends reuse an existing mount), and which filesystem holds a path
(doctor's FAT check) are all answered from the same parsed entries (pure functions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")  # the kernel escapes space, tab, newline, backslash


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    source: str
    fstype: str
    devnum: tuple[int, int]
    mount_id: int = 0  # unique among the mounts present at one time: tells two mounts apart


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def parse(text: str) -> list[MountEntry]:
    """mountinfo lines as entries, in mount order; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or ":" not in fields[2]:
            continue
        sep = fields.index("-", 6)
        major, minor = (int(x) for x in fields[2].split(":"))
        entries.append(
            MountEntry(
                mountpoint=_unescape(fields[4]),
                source=_unescape(fields[sep + 2]),
                fstype=fields[sep + 1],
                devnum=(major, minor),
                mount_id=int(fields[0]) if fields[0].isdigit() else 0,
            )
        )
    return entries


def read() -> list[MountEntry]:
    return parse(MOUNTINFO.read_text())


def mount_at(path: Path, entries: list[MountEntry]) -> MountEntry | None:
    """The filesystem mounted on exactly `path` (the topmost, if stacked), or None."""
    matches = [e for e in entries if e.mountpoint == str(path)]
    return matches[-1] if matches else None


def containing(path: Path, entries: list[MountEntry]) -> MountEntry | None:
    """The mount holding `path` (which must be resolved): the innermost, topmost one."""
    best: MountEntry | None = None
    for entry in entries:
        inside = path == Path(entry.mountpoint) or path.is_relative_to(entry.mountpoint)
        if inside and (best is None or len(entry.mountpoint) >= len(best.mountpoint)):
            best = entry
    return best


def by_devnum(entries: list[MountEntry]) -> dict[tuple[int, int], tuple[str, ...]]:
    """(major, minor) -> the mount points of that device, in mount order."""
    out: dict[tuple[int, int], tuple[str, ...]] = {}
    for e in entries:
        out[e.devnum] = (*out.get(e.devnum, ()), e.mountpoint)
    return out
