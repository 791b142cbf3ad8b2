"""`usbagent doctor`: check the deployment itself and say, for each problem, how to fix it.

`status` reports what happened; `doctor` finds what will go wrong: a unit whose ExecStart
no longer exists (the job would fail at 02:00, silently), a key file anyone can read, a
destination on FAT32 that cannot hold a 4 GiB archive, no device events at all. Every
check is a small probe returning findings; the judgements (unit file parsing, file system
limits) are pure functions, and recipients are judged by the archive job's own parser.

Where doctor looks is a `Locations` value: the defaults are the real system paths; tests
(and unusual installs) point it elsewhere, e.g. $USBAGENT_UNIT_DIRS for the unit folders.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from usbagent import credentials, ledger, mounts, naming, selection, state, systemd
from usbagent.config import Config
from usbagent.devices import FAT_MAX_FILE
from usbagent.errors import UsbagentError
from usbagent.fsutil import special_kind, unwritable
from usbagent.install import check_executable

UNIT_DIRS_ENV = "USBAGENT_UNIT_DIRS"
SYSTEM_UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos"})
# Warn while there is still room to grow: an archive half the limit doubles within months.
FAT_WARN_AT = FAT_MAX_FILE // 2


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


# --- pure judgements -------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitFile:
    exec_paths: tuple[str, ...]  # programs of ExecStart= lines
    read_write_paths: tuple[str, ...]  # the ones that must exist (no "-" prefix)


def parse_unit(text: str) -> UnitFile:
    """The ExecStart= programs and ReadWritePaths= of a unit file (continuations joined)."""
    execs: list[str] = []
    rw: list[str] = []
    for line in text.replace("\\\n", " ").splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key.strip() == "ExecStart" and value.strip():
            program = value.split()[0].lstrip("@-:+!")
            execs.append(program)
        elif key.strip() == "ReadWritePaths":
            # "-/path": systemd ignores it when missing, so it cannot fail the namespace.
            rw.extend(p.lstrip("+") for p in value.split() if not p.startswith("-"))
    return UnitFile(tuple(execs), tuple(rw))


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


# --- probes ------------------------------------------------------------------------------------


def _find_unit(name: str, dirs: Sequence[Path]) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def check_units(locs: Locations, units: Mapping[str, systemd.Unit] | None) -> list[Finding]:
    """Each unit's file: where systemd loaded it from, else the first in the unit folders."""
    findings = []
    for unit in systemd.UNITS:
        fragment = units[unit].get("FragmentPath") if units is not None else ""
        path = Path(fragment) if fragment else _find_unit(unit, locs.unit_dirs)
        if path is None:
            where = ", ".join(str(d) for d in locs.unit_dirs)
            findings.append(
                Finding(unit, False, f"not installed (looked in {where})", "run `usbagent install`")
            )
            continue
        findings.extend(_check_unit_file(unit, path))
    return findings


def _check_unit_file(unit: str, path: Path) -> list[Finding]:
    parsed = parse_unit(path.read_text(errors="replace"))
    problems = []
    for program in parsed.exec_paths:
        try:
            check_executable(Path(program))
        except UsbagentError as exc:
            problems.append(
                Finding(
                    unit,
                    False,
                    f"ExecStart of {path}: {exc}",
                    "rerun `usbagent install` from the installed usbagent",
                )
            )
    for folder in parsed.read_write_paths:
        if not Path(folder).exists():
            problems.append(
                Finding(
                    unit,
                    False,
                    f"ReadWritePaths folder {folder} does not exist: the service would fail "
                    "with 226/NAMESPACE",
                    f"mkdir -p {folder}",
                )
            )
    return problems or [Finding(unit, True, f"{path}: ExecStart {', '.join(parsed.exec_paths)}")]


def check_timer_enabled(locs: Locations, units: Mapping[str, systemd.Unit] | None) -> Finding:
    name = f"{systemd.ARCHIVE_TIMER} enabled"
    fix = f"systemctl enable --now {systemd.ARCHIVE_TIMER}"
    if units is not None and units[systemd.ARCHIVE_TIMER].loaded:
        state_ = units[systemd.ARCHIVE_TIMER].get("UnitFileState")
        if state_ == "enabled-runtime":
            return Finding(name, False, "the timer is enabled only until the next boot", fix)
        if state_ != "enabled":
            return Finding(name, False, f"the timer is {state_}: no nightly archives", fix)
        return Finding(name, True, "enabled (systemd)")
    wants = [d / "timers.target.wants" / systemd.ARCHIVE_TIMER for d in locs.unit_dirs]
    if any(w.exists() for w in wants):
        return Finding(name, True, "enabled (timers.target.wants link)")
    return Finding(name, False, "the timer is not enabled: no nightly archives", fix)


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


def check_last_run(config: Config, units: Mapping[str, systemd.Unit] | None) -> Finding:
    name = "last archive run"
    fix = f"see journalctl -u {systemd.ARCHIVE_SERVICE}, fix the cause, run `usbagent archive`"
    if units is not None:
        service = units[systemd.ARCHIVE_SERVICE]
        result = service.get("Result")
        if service.loaded and result not in ("", "success"):
            return Finding(
                name,
                False,
                f"{systemd.ARCHIVE_SERVICE} failed (Result={result}, "
                f"exit status {service.get('ExecMainStatus') or '?'})",
                fix,
            )
    last = state.last(config.agent.state_dir, "archive")
    if last is not None and not last.ok:
        return Finding(name, False, f"failed at {last.time:%Y-%m-%d %H:%M}: {last.summary}", fix)
    if last is None:
        return Finding(name, True, "no archive run recorded yet")
    return Finding(name, True, f"succeeded at {last.time:%Y-%m-%d %H:%M}")


def udisks_available(address: str | None, activatable: bool) -> tuple[bool, str]:
    """As the agent asks (sources / udisks.on_bus): running now for usb.backend "auto",
    running or started on demand by the bus for "udisks2"."""
    from usbagent import udisks  # deferred: doctor without dbus-next still reports the rest

    async def probe() -> bool:
        async with asyncio.timeout(5):
            return await udisks.on_bus(address, activatable)

    try:
        return asyncio.run(probe()), "UDisks2 not on the system bus"
    except Exception as exc:
        return False, f"no system bus ({exc or type(exc).__name__})"


def udev_available(control: Path) -> tuple[bool, str]:
    if not control.exists():
        return False, f"udevd is not running ({control} missing)"
    try:
        import pyudev

        pyudev.Context()
    except Exception as exc:
        return False, f"pyudev cannot open udev: {exc}"
    return True, "udevd running"


def check_device_events(config: Config, locs: Locations) -> Finding:
    name = "device events"
    udisks, why_not_udisks = udisks_available(locs.system_bus, config.usb.backend == "udisks2")
    udev, why_not_udev = udev_available(locs.udev_control)
    backend = config.usb.backend
    if (backend == "udisks2" and not udisks) or (backend == "udev" and not udev):
        why = why_not_udisks if backend == "udisks2" else why_not_udev
        return Finding(
            name,
            False,
            f'usb.backend is "{backend}" but {why}',
            'start it, or set usb.backend = "auto"',
        )
    if not udisks and not udev:
        return Finding(
            name,
            False,
            f"neither UDisks2 ({why_not_udisks}) nor udev ({why_not_udev}): sticks are never seen",
            "apt-get install udisks2 (or start systemd-udevd)",
        )
    found = [n for n, ok in (("UDisks2", udisks), ("udev", udev)) if ok]
    return Finding(name, True, " and ".join(found) + " available")


def check_tools(locs: Locations) -> list[Finding]:
    findings = []
    for module, package in (("pyrage", "pyrage"), ("zstandard", "zstandard")):
        try:
            importlib.import_module(module)
            findings.append(Finding(module, True, "importable"))
        except ImportError as exc:
            findings.append(
                Finding(module, False, f"cannot import {module}: {exc}", f"pip install {package}")
            )
    findings.append(_check_tar(locs.search_path))
    return findings


def _check_tar(search_path: str) -> Finding:
    tar = shutil.which("tar", path=search_path)
    if tar is None:
        return Finding("GNU tar", False, "tar is not on $PATH", "apt-get install tar")
    try:
        out = subprocess.run(
            [tar, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError as exc:
        return Finding("GNU tar", False, f"{tar} cannot run: {exc}", "apt-get install tar")
    first = (out.splitlines() or [""])[0]
    if "GNU tar" not in first:
        return Finding(
            "GNU tar",
            False,
            f"{tar} is not GNU tar ({first or 'no version'})",
            "apt-get install tar",
        )
    return Finding("GNU tar", True, f"{tar}: {first}")


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


def _systemd_units() -> Mapping[str, systemd.Unit] | None:
    try:
        props = ("LoadState", "FragmentPath", "UnitFileState", "Result", "ExecMainStatus")
        return systemd.show(systemd.UNITS, props)
    except systemd.SystemdUnavailable:
        return None


def diagnose(config: Config, locs: Locations) -> list[Finding]:
    units = _systemd_units()
    probes: list[Callable[[], Finding | list[Finding]]] = [
        lambda: check_units(locs, units),
        lambda: check_timer_enabled(locs, units),
        lambda: check_last_run(config, units),
        lambda: check_recipients(config),
        lambda: check_identity(config),
        lambda: check_paths(config),
        lambda: check_destination_fs(config, locs),
        lambda: check_sticks_fs(config),
        lambda: check_device_events(config, locs),
        lambda: check_tools(locs),
        lambda: check_state_files(config),
    ]
    findings: list[Finding] = []
    for probe in probes:
        result = probe()
        findings.extend(result if isinstance(result, list) else [result])
    return findings


def run(config: Config, args: argparse.Namespace) -> int:
    findings = diagnose(config, Locations())
    for finding in findings:
        sys.stdout.write(finding.line() + "\n")
    problems = sum(not f.ok for f in findings)
    summary = f"doctor: {problems} problem(s) found" if problems else "doctor: all good"
    sys.stdout.write(summary + "\n")
    return 1 if problems else 0
