"""`usbagent doctor`'s probes of files: the recipients and identity (judged by the archive
job's own parser, so doctor and the job never disagree; a key anyone can read), the sources
and destination, file systems that cannot hold the archives (FAT32 stops at 4 GiB), and the
state dir. The file system limit is a pure judgement.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from usbagent import credentials, ledger, mounts, naming, selection
from usbagent.config import Config
from usbagent.devices import FAT_MAX_FILE
from usbagent.doctorbase import Finding, Locations
from usbagent.errors import UsbagentError
from usbagent.fsutil import special_kind, unwritable

FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos"})
# Warn while there is still room to grow: an archive half the limit doubles within months.
FAT_WARN_AT = FAT_MAX_FILE // 2


def fs_limit_problem(fstype: str | None, largest: int) -> str | None:
    """Why a file system cannot (or soon cannot) hold archives of `largest` bytes, or None."""
    if fstype not in FAT_TYPES:
        return None
    if largest > FAT_MAX_FILE:
        return f"it is {fstype} (FAT): files stop at 4 GiB, the largest archive is {largest} bytes"
    if largest >= FAT_WARN_AT:
        return (
            f"it is {fstype} (FAT): files stop at 4 GiB and the largest archive is already "
            f"{largest / 2**30:.1f} GiB"
        )
    return None


def check_recipients(config: Config) -> Finding:
    """The archive job's own parser judges the file, so doctor and the job never disagree."""
    path = config.archive.recipients_file
    name = "recipients file"
    fix = f"write one age1... or ssh-ed25519 public key per line to {path} (age-keygen -y KEY)"
    try:
        from usbagent import recipients  # needs pyrage: see check_tools
    except ImportError as exc:
        return Finding(name, False, f"cannot be checked: {exc}", "pip install pyrage")
    try:
        found = recipients.read_recipients(path)
    except UsbagentError as exc:
        return Finding(name, False, str(exc), fix)
    if found.ignored:  # the job runs, as age would, but someone cannot decrypt the archives
        return Finding(
            name,
            False,
            recipients.describe_ignored(str(path), found.ignored[0])
            + (f" (and {len(found.ignored) - 1} more)" if len(found.ignored) > 1 else ""),
            "replace it with its owner's ssh-ed25519 or age1… public key",
        )
    return Finding(name, True, f"{path} ({len(found.keys)} recipient(s))")


def check_identity(config: Config) -> Finding:
    name = "identity file"
    path = credentials.identity_path(config)
    if path is None:
        return Finding(name, True, "none configured (verify checks checksums only)")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return Finding(
            name, False, f"{path} does not exist", "fix archive.identity_file or create the key"
        )
    if mode & stat.S_IROTH:
        return Finding(
            name,
            False,
            f"{path} is world-readable: anyone on this machine can decrypt every archive",
            f"chmod 600 {path}",
        )
    try:
        from usbagent.recipients import load_identities  # needs pyrage: see check_tools

        load_identities(path)
    except ImportError as exc:
        return Finding(name, False, f"cannot be checked: {exc}", "pip install pyrage")
    except UsbagentError as exc:
        return Finding(name, False, str(exc), "point archive.identity_file at an age-keygen key")
    return Finding(name, True, f"{path} (mode {stat.S_IMODE(mode):o})")


def check_paths(config: Config) -> list[Finding]:
    findings = []
    for source in config.archive.sources:
        if not source.exists():
            findings.append(
                Finding(
                    "source",
                    False,
                    f"{source} does not exist",
                    f"create it or remove it from archive.sources in {config.path}",
                )
            )
        elif (kind := special_kind(source)) is not None:
            findings.append(
                Finding(
                    "source",
                    False,
                    f"{source} is {kind}: tar stores it as a node, not what it holds",
                    f"name files or folders in archive.sources in {config.path} (for a "
                    "partition, the folder it is mounted on)",
                )
            )
    dest = config.archive.destination
    if not findings:  # the layout the archive's preflight refuses (the same check)
        real = selection.resolve(config.archive.sources), dest.resolve()
        findings += [Finding("sources", False, p.message, p.fix) for p in selection.problems(*real)]
    if not findings:
        findings.append(Finding("sources", True, ", ".join(map(str, config.archive.sources))))
    if not dest.is_dir():
        findings.append(Finding("destination", False, f"{dest} does not exist", f"mkdir -p {dest}"))
    elif (problem := unwritable(dest)) is not None:
        fix = f"{problem.fix}, or move archive.destination"
        findings.append(Finding("destination", False, f"{dest} {problem.reason}", fix))
    else:
        findings.append(Finding("destination", True, str(dest)))
    return findings


def largest_archive(destination: Path) -> int:
    try:
        entries = list(os.scandir(destination))
    except OSError:
        return 0
    sizes = [e.stat().st_size for e in entries if naming.parse(e.name) and e.is_file()]
    return max(sizes, default=0)


def check_destination_fs(config: Config, locs: Locations) -> Finding:
    dest = config.archive.destination
    name = "destination file system"
    try:
        mount = mounts.containing(
            dest.resolve(strict=True), mounts.parse(locs.mountinfo.read_text())
        )
    except OSError:
        return Finding(name, True, f"{dest} not checked (missing, reported above)")
    fstype = mount.fstype if mount else None
    problem = fs_limit_problem(fstype, largest_archive(dest))
    if problem:
        return Finding(
            name,
            False,
            f"{dest}: {problem}",
            "put archive.destination on ext4, xfs or btrfs",
        )
    return Finding(name, True, f"{dest} is on {fstype}")


def check_sticks_fs(config: Config) -> list[Finding]:
    """Sticks in the rotation (from the ledger) whose file system cannot hold our archives."""
    largest = largest_archive(config.archive.destination)
    findings = []
    for stick in ledger.sticks(config.agent.state_dir):
        problem = fs_limit_problem(stick.fstype or None, largest)
        name = f"stick {stick.label or '?'} ({stick.uuid})"
        if problem:
            fix = "reformat the stick as exFAT or ext4 (copy its archives off first)"
            findings.append(Finding(name, False, problem, fix))
        elif stick.fstype:
            findings.append(Finding(name, True, f"{name} is {stick.fstype}"))
    return findings


def check_state_files(config: Config) -> list[Finding]:
    findings = []
    folder = config.agent.state_dir
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not os.access(existing, os.W_OK | os.X_OK):
        findings.append(
            Finding("state dir", False, f"{folder} cannot be written", f"mkdir -p {folder}")
        )
    else:
        findings.append(Finding("state dir", True, str(folder)))
    metrics = config.agent.metrics_file
    if metrics is not None and not metrics.parent.is_dir():
        findings.append(
            Finding(
                "metrics file",
                False,
                f"folder {metrics.parent} does not exist: metrics are not written",
                f"mkdir -p {metrics.parent} (node_exporter --collector.textfile.directory)",
            )
        )
    return findings
