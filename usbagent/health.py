"""Archive health, judged the same way by `usbagent status` and by the agent's freshness check.

A file counts as a backup only when it is an archive a successful run recorded (the state
dir's journal: name, size, sha256) and still matches that record; freshness is judged from
those files, never from what a job claims (see `usbagent.status` for why it is this cheap
check). The agent publishes a "stale" outcome from the very judgement `status` prints, and
neither imports the other.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from usbagent import naming, state, systemd
from usbagent.config import Config
from usbagent.events import Kind, Outcome
from usbagent.units import human_bytes

OK, WARNING, CRITICAL, UNKNOWN = "OK", "WARNING", "CRITICAL", "UNKNOWN"
KINDS: tuple[Kind, ...] = typing.get_args(Kind)
# An archive dated this far in the future would look fresh forever: a clock problem.
FUTURE_TOLERANCE = timedelta(hours=1)


@dataclass(frozen=True)
class ArchiveFile:
    """A file with one of our archive names in the destination, and what it is checked by."""

    name: str
    created: datetime  # from the name: when the archive job started
    size: int
    record: state.ArchiveRecord | None = None  # what its run recorded; None: no run did
    sidecar: str | None = None  # the sha256 its sidecar states, None when it states none
    sidecar_problem: str = "the sidecar is missing"  # why it states none


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "state": self.state, "message": self.message}


def _sidecar(folder: Path, name: str) -> tuple[str | None, str]:
    """The digest the sidecar of archive `name` states, or None and why it states none."""
    sidecar = folder / (name + naming.SIDECAR)
    try:
        with sidecar.open("rb") as f:
            text = f.read(4096).decode("utf-8", "replace")  # one line: a name and 64 hex
    except FileNotFoundError:
        return None, f"the sidecar {sidecar.name} is missing"
    except OSError as exc:
        return None, f"the sidecar {sidecar.name} cannot be read: {exc.strerror}"
    try:
        return naming.parse_sidecar(text, name), ""
    except ValueError as exc:
        return None, str(exc)


def archive_files(
    destination: Path, prefix: str, known: Mapping[str, state.ArchiveRecord]
) -> tuple[ArchiveFile, ...]:
    """Our archive files in `destination`, newest first (raises OSError if unreadable)."""
    found = []
    with os.scandir(destination) as entries:
        for entry in entries:
            parsed = naming.parse(entry.name, prefix)
            if parsed is None or not entry.is_file(follow_symlinks=False):
                continue
            digest, why = _sidecar(destination, entry.name)
            size_ = entry.stat(follow_symlinks=False).st_size
            found.append(
                ArchiveFile(entry.name, parsed.created, size_, known.get(entry.name), digest, why)
            )
    return tuple(sorted(found, key=lambda a: a.created, reverse=True))


def archive_facts(
    config: Config, known: Mapping[str, state.ArchiveRecord]
) -> tuple[tuple[ArchiveFile, ...], str | None]:
    try:
        return archive_files(config.archive.destination, config.archive_prefix, known), None
    except FileNotFoundError:
        return (), "does not exist"
    except NotADirectoryError:
        return (), "is not a folder"
    except PermissionError:
        return (), "is not readable by this user"


def age(delta: timedelta) -> str:
    """'45 s', '12 min', '5 h 3 min', '3 d 4 h': precise enough to act on, short to read."""
    s = int(delta.total_seconds())
    if s < 0:
        return "in the future"
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


size = human_bytes  # the one byte formatter: status lines quote sync summaries


def known_outcomes(state_dir: Path) -> list[Outcome]:
    """The history plus the newest outcome, and the newest success, of each kind (those
    outlive history trimming: many failures must not make the last good run unknown)."""
    kept = [read(state_dir, kind) for kind in KINDS for read in (state.last, state.last_ok)]
    return state.events(state_dir) + [o for o in kept if o is not None]


def archive_problem(f: ArchiveFile) -> str | None:
    """Why this file is not the archive a successful run recorded under its name, or None."""
    r = f.record
    if r is None:
        return "is not an archive a successful usbagent run recorded"
    if f.size != r.size:
        return f"is {f.size} bytes, but its run wrote {r.size} bytes"
    if f.sidecar is None:
        return f"fails its sidecar: {f.sidecar_problem}"
    if f.sidecar != r.sha256:
        return "fails its sidecar: it states another sha256 than the archive's run wrote"
    return None


def check_archive(
    archives: tuple[ArchiveFile, ...],
    problem: str | None,
    destination: Path,
    stale_after_hours: float,
    now: datetime,
    timer_active: bool = False,
) -> Check:
    """Freshness of the newest good archive: one a run recorded, that still matches."""
    limit = timedelta(hours=stale_after_hours)
    despite = (
        f" although {systemd.ARCHIVE_TIMER} is enabled and active: the nightly job runs "
        "but produces no archive"
        if timer_active
        else ""
    )
    if problem is not None:
        return Check("archive", CRITICAL, f"archive folder {destination} {problem}")
    newest = next((a for a in archives if archive_problem(a) is None), None)
    if newest is None:
        others = (
            f" ({len(archives)} file(s) with archive names, none of them one: see archive-files)"
            if archives
            else ""
        )
        return Check(
            "archive",
            CRITICAL,
            f"no archive a successful run recorded in {destination}{others}{despite}",
        )
    archive_age = now - newest.created
    if archive_age > limit:
        return Check(
            "archive",
            CRITICAL,
            f"newest archive {newest.name} is {age(archive_age)} old "
            f"(stale after {stale_after_hours:g} h){despite}",
        )
    if -archive_age > FUTURE_TOLERANCE:
        return Check(
            "archive",
            WARNING,
            f"newest archive {newest.name} is dated in the future: check the system clock",
        )
    return Check(
        "archive",
        OK,
        f"newest archive {newest.name}, {age(archive_age)} old, {size(newest.size)}",
    )


def archive_freshness(config: Config, now: datetime) -> Outcome | None:
    """Outcome(kind="stale") when the newest archive is too old or missing, else None."""
    state_dir = config.agent.state_dir
    archives, problem = archive_facts(config, state.archives(state_dir, known_outcomes(state_dir)))
    check = check_archive(
        archives, problem, config.archive.destination, config.agent.stale_after_hours, now
    )
    if check.state == OK:
        return None
    newest = next((a.name for a in archives if archive_problem(a) is None), None)
    return Outcome(
        kind="stale", ok=False, summary=check.message, time=now, details={"archive": newest}
    )
