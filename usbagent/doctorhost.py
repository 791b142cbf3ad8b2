"""`usbagent doctor`'s probes of the host: the systemd units (a unit whose ExecStart no
longer exists fails at 02:00, silently), the last run systemd saw, the device event sources
the agent would use, and the tools the archive job needs. Unit file parsing is pure.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from usbagent import state, systemd
from usbagent.config import Config
from usbagent.doctorbase import Finding, Locations
from usbagent.errors import UsbagentError
from usbagent.install import check_executable


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


def systemd_units() -> Mapping[str, systemd.Unit] | None:
    try:
        props = ("LoadState", "FragmentPath", "UnitFileState", "Result", "ExecMainStatus")
        return systemd.show(systemd.UNITS, props)
    except systemd.SystemdUnavailable:
        return None
