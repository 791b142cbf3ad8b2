"""`usbagent doctor`'s probes of incremental archives: chains that cannot be restored, and
snapshot files that belong to no archive.

A broken chain is judged exactly as `status` judges it (`health.broken_members`, over
`chainhealth`), so the two never disagree about which restore points are lost; doctor adds
one finding per broken member, with its fix. A snapshot (`usbagent.snapshots`: GNU tar's
record of what an archive saw) that belongs to no archive in the destination is never used
again: the archive job continues only from the snapshot of the newest archive there, and
retention removes a snapshot with its archive. Such a file means an archive was removed by
something other than usbagent's retention, or `archive.destination`/`archive.prefix`
changed; it is reported, never deleted here (doctor only looks).
"""

from __future__ import annotations

from pathlib import Path

from usbagent import naming, snapshots, state
from usbagent.config import Config
from usbagent.doctorbase import Finding
from usbagent.health import (
    archive_facts,
    broken_members,
    chain_fix,
    chain_in_force,
    known_outcomes,
)


def check_chain_restores(config: Config) -> list[Finding]:
    """One finding per chain member that leaves restore points unrestorable."""
    state_dir = config.agent.state_dir
    recorded = state.archives(state_dir, known_outcomes(state_dir))
    archives, problem = archive_facts(config, recorded)
    dest = config.archive.destination
    if problem is not None:
        return [Finding("archive chains", True, f"{dest} not checked (reported above)")]
    members = broken_members(archives, recorded)
    if not members:
        points = sum(1 for a in archives if a.record is not None)
        return [Finding("archive chains", True, f"{points} recorded archive(s), every chain whole")]
    in_force = chain_in_force(archives)
    return [
        Finding(
            f"chain {m.chain}",
            False,
            f"{m.describe()}: restore point(s) {', '.join(m.breaks)} cannot be restored",
            chain_fix(m, in_force, dest),
        )
        for m in members
    ]


def check_snapshots(config: Config) -> list[Finding]:
    """Snapshot files whose archive is not in the destination."""
    state_dir = config.agent.state_dir
    folder, dest = snapshots.folder(state_dir), config.archive.destination
    try:
        archives = snapshots.described(state_dir)
    except OSError as exc:
        fix = f"let this user read {folder} (ls -ld {folder})"
        return [Finding("snapshots", False, f"{folder} cannot be read: {exc.strerror}", fix)]
    orphans = [
        a
        for a in archives
        if naming.parse(a, config.archive_prefix) is None or not (dest / a).is_file()
    ]
    if not orphans:
        return [Finding("snapshots", True, f"{len(archives)} in {folder}, each of an archive")]
    return [_orphan(snapshots.path(state_dir, a), dest) for a in orphans]


def _orphan(path: Path, dest: Path) -> Finding:
    return Finding(
        "snapshot",
        False,
        f"{path} belongs to no archive in {dest} (its archive was removed other than by "
        "retention, or archive.destination or archive.prefix changed): it is never used again",
        f"rm {path} {path}{snapshots.META} (the archive job never reads it; if an archive "
        "was removed by hand, `usbagent status` names the chains that lost it)",
    )
