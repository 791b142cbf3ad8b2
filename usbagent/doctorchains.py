"""`usbagent doctor`'s probes of incremental archives: chains that cannot be restored, and
snapshot files that belong to no archive.

A broken chain is judged exactly as `status` judges it (`health.check_chains`, over
`chainhealth`), so the two never disagree about which restore points are lost; doctor adds
one finding per broken member, with its fix. A snapshot (`<state_dir>/snapshots/<archive
file name>.snar`, GNU tar's record of what the archive saw) that belongs to no archive in
the destination is never used again: the archive job continues only from the snapshot of the
newest archive there. Such a file means an archive was removed by something other than
usbagent's retention, or `archive.destination`/`archive.prefix` changed; it is reported,
never deleted here (doctor only looks). `.partial` files are a running job's.
"""

from __future__ import annotations

import os
from pathlib import Path

from usbagent import naming, state
from usbagent.config import Config
from usbagent.doctorbase import Finding
from usbagent.health import (
    archive_facts,
    broken_members,
    chain_fix,
    chain_in_force,
    known_outcomes,
)

SNAPSHOTS = "snapshots"  # the folder under agent.state_dir (written by the archive job)
SNAPSHOT_SUFFIX = ".snar"


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


def described(folder: Path) -> list[str]:
    """The archive names that have a snapshot in `folder` (`NAME.snar`; its digest
    `NAME.snar.json` and a running job's `NAME.snar.partial` are not snapshots)."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries]
    return sorted(n.removesuffix(SNAPSHOT_SUFFIX) for n in names if n.endswith(SNAPSHOT_SUFFIX))


def check_snapshots(config: Config) -> list[Finding]:
    """Snapshot files whose archive is not in the destination."""
    folder = config.agent.state_dir / SNAPSHOTS
    dest = config.archive.destination
    try:
        archives = described(folder)
    except FileNotFoundError:
        return []
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
    return [_orphan(folder / (a + SNAPSHOT_SUFFIX), dest) for a in orphans]


def _orphan(path: Path, dest: Path) -> Finding:
    return Finding(
        "snapshot",
        False,
        f"{path} belongs to no archive in {dest} (its archive was removed other than by "
        "retention, or archive.destination or archive.prefix changed): it is never used again",
        f"rm {path} {path}.json (the archive job never reads it; if an archive was removed by "
        "hand, `usbagent status` names the chains that lost it)",
    )
