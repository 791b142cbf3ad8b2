"""Archive health, judged the same way by `usbagent status` and by the agent's freshness check.

A file counts as a backup only when it is an archive a successful run recorded (the state
dir's journal: name, size, sha256) and still matches that record; freshness is judged from
those files, never from what a job claims (see `usbagent.status` for why it is this cheap
check). An increment counts like a full, but only when its whole chain does
(`chainhealth`): a night's increment whose full is gone restores nothing. The agent
publishes a "stale" outcome from the very judgement `status` prints, and neither imports the
other; `doctor` names the same broken chains.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from usbagent import chainhealth, naming, state, systemd
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

    @cached_property
    def parsed(self) -> naming.ArchiveName | None:
        """Its name parsed, once: status judges each file in several checks every minute,
        and parsing a stamp costs more than the judgements."""
        return naming.parse(self.name)


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    message: str
    # what monitoring may want beyond the sentence (`status --json` only; never read back)
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "message": self.message, **self.data}


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


def _good(archives: Iterable[ArchiveFile]) -> dict[naming.ArchiveName, ArchiveFile]:
    """The files that are the archives their runs recorded, by parsed name."""
    return {a.parsed: a for a in archives if archive_problem(a) is None and a.parsed is not None}


def _damaged(archives: Iterable[ArchiveFile]) -> dict[naming.ArchiveName, str]:
    return {
        a.parsed: problem
        for a in archives
        if (problem := archive_problem(a)) is not None and a.parsed is not None
    }


def newest_restorable(archives: tuple[ArchiveFile, ...]) -> ArchiveFile | None:
    """The newest good archive whose whole chain is good (an increment counts like a full)."""
    good = _good(archives)
    point = chainhealth.newest_restorable(good)
    return good[point.archive] if point is not None else None


def _described(f: ArchiveFile) -> str:
    parsed = f.parsed
    if parsed is None or parsed.is_full:
        return f.name
    full = naming.make(parsed.prefix, parsed.full).filename
    return f"{f.name} (increment {parsed.level} on {full})"


def _none_in(archives: tuple[ArchiveFile, ...], destination: Path) -> str:
    """That no archive in `destination` restores, and why (naming the check that says more)."""
    if good := len(_good(archives)):
        return (
            f"no restorable archive in {destination} ({good} recorded archive(s), none with "
            "its whole chain: see archive-chains)"
        )
    others = (
        f" ({len(archives)} file(s) with archive names, none of them one: see archive-files)"
        if archives
        else ""
    )
    return f"no archive a successful run recorded in {destination}{others}"


def check_archive(
    archives: tuple[ArchiveFile, ...],
    problem: str | None,
    destination: Path,
    stale_after_hours: float,
    now: datetime,
    timer_active: bool = False,
) -> Check:
    """Freshness of the newest restorable archive: one a run recorded, that still matches,
    whose chain's every member does too."""
    limit = timedelta(hours=stale_after_hours)
    despite = (
        f" although {systemd.ARCHIVE_TIMER} is enabled and active: the nightly job runs "
        "but produces no archive"
        if timer_active
        else ""
    )
    if problem is not None:
        return Check("archive", CRITICAL, f"archive folder {destination} {problem}")
    newest = newest_restorable(archives)
    if newest is None:
        return Check("archive", CRITICAL, f"{_none_in(archives, destination)}{despite}")
    archive_age = now - newest.created
    data = {"newest": newest.name, "age_seconds": int(archive_age.total_seconds())}
    if archive_age > limit:
        return Check(
            "archive",
            CRITICAL,
            f"newest archive {_described(newest)} is {age(archive_age)} old "
            f"(stale after {stale_after_hours:g} h){despite}",
            data,
        )
    if -archive_age > FUTURE_TOLERANCE:
        return Check(
            "archive",
            WARNING,
            f"newest archive {newest.name} is dated in the future: check the system clock",
            data,
        )
    return Check(
        "archive",
        OK,
        f"newest archive {_described(newest)}, {age(archive_age)} old, {size(newest.size)}",
        data,
    )


def broken_members(
    archives: tuple[ArchiveFile, ...], recorded: Iterable[str]
) -> list[chainhealth.BrokenMember]:
    """The chain members that leave restore points in the destination unrestorable;
    `recorded`: the names of every archive a successful run recorded (only those not in the
    destination can be a gone member: the present ones are good or damaged)."""
    names = (naming.parse(r) for r in set(recorded) - {a.name for a in archives})
    return chainhealth.broken_members(
        _good(archives), _damaged(archives), [n for n in names if n is not None]
    )


def chain_in_force(archives: tuple[ArchiveFile, ...]) -> tuple[str, datetime] | None:
    """The chain the next increment would extend: the newest good archive's."""
    good = _good(archives)
    return max(good).chain if good else None


def check_chains(
    archives: tuple[ArchiveFile, ...], recorded: Iterable[str], destination: Path
) -> Check:
    """CRITICAL for each chain member that leaves restore points unrestorable: those
    backups look present but restore nothing (or an older state than their date)."""
    broken = broken_members(archives, recorded)
    if not broken:
        return Check("archive-chains", OK, "every restore point has its whole chain")
    # the newest chain first, its lowest broken level: the member that breaks the most
    first = max(broken, key=lambda b: (b.chain, -b.level))
    more = f"; and {len(broken) - 1} more broken member(s)" if len(broken) > 1 else ""
    in_force = chain_in_force(archives)
    return Check(
        "archive-chains",
        CRITICAL,
        f"chain member {first.describe()}: {len(first.breaks)} restore point(s) cannot be "
        f"restored ({', '.join(first.breaks)}){more}; {chain_fix(first, in_force, destination)}",
        {"broken": [b.to_json() for b in broken]},
    )


def chain_fix(
    member: chainhealth.BrokenMember, in_force: tuple[str, datetime] | None, destination: Path
) -> str:
    """What to do: the archive job starts a new full only when the chain in force (the
    newest archive's) is the broken one; an older chain is mended from a stick or lost."""
    copy_back = (
        f"copy {member.files[0]} and its sidecar back into {destination} from a stick that "
        "holds it, if one does"
        if member.files and member.failure != "ambiguous"
        else f"find out what put or removed these archives in {destination}"
    )
    chain = naming.parse(member.chain)
    if chain is not None and chain.chain == in_force:
        return (
            f"run `usbagent archive` now: it starts a new full, as the chain in force is "
            f"broken; and {copy_back}"
        )
    return (
        f"{copy_back}; if none does, those restore points cannot be restored: move them out "
        f"of {destination} to clear this"
    )


def check_full_age(archives: tuple[ArchiveFile, ...], every_days: int, now: datetime) -> Check:
    """A WARNING when the newest full is older than twice `archive.full_every_days`: fulls
    stopped coming, and each night adds to a chain that a lost member breaks whole."""
    good = _good(archives)
    full = chainhealth.newest_full(good)
    if full is None:
        return Check("full-archive", OK, "no full archive yet (see archive)")
    full_age = now - full.created
    data = {"newest_full": full.filename, "age_seconds": int(full_age.total_seconds())}
    due = f"a full is due every {every_days} d, archive.full_every_days"
    if not chainhealth.full_overdue(full, every_days, now):
        return Check(
            "full-archive", OK, f"newest full archive {full.filename}, {age(full_age)} old", data
        )
    held = sum(1 for a in good if a.chain == full.chain)
    return Check(
        "full-archive",
        WARNING,
        f"newest full archive {full.filename} is {age(full_age)} old ({due}): its chain holds "
        f"{held} archives; see the archive runs' outcomes for why no full was made",
        data,
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
    newest = newest_restorable(archives)
    return Outcome(
        kind="stale",
        ok=False,
        summary=check.message,
        time=now,
        details={"archive": newest.name if newest else None},
    )
