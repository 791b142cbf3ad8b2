"""Helpers for the stick sync tests: fake archives, configs, host-file snapshots, the CLI.

The copier never decrypts, so an "archive" here is random bytes under an archive name with
a correct sha256 sidecar: exactly what the copier sees of a real one.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.stack import MakeStick, PartSpec
from usbagent import naming
from usbagent.config import AgentConfig, ArchiveConfig, Config, UsbConfig
from usbagent.plan import LocalArchive

PREFIX = "testhost"
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
MIB = 1024 * 1024


def archive_name(day: int, prefix: str = PREFIX) -> str:
    return naming.make(prefix, T0 + timedelta(days=day)).filename


def increment_name(day: int, level: int, full_day: int, prefix: str = PREFIX) -> str:
    """Level `level` of the chain whose full was made on `full_day`, made on `day`."""
    return naming.make(
        prefix, T0 + timedelta(days=day), level, T0 + timedelta(days=full_day)
    ).filename


def chain_names(full_day: int, nights: int, prefix: str = PREFIX) -> list[str]:
    """A full on `full_day`, then one increment a night: levels 1..nights-1, in order."""
    later = [increment_name(full_day + n, n, full_day, prefix) for n in range(1, nights)]
    return [archive_name(full_day, prefix), *later]


def make_archive(dest: Path, day: int, size: int, prefix: str = PREFIX) -> LocalArchive:
    """Random bytes under an archive name, with its sidecar, as `usbagent archive` leaves it."""
    return make_named(dest, archive_name(day, prefix), size)


def make_named(dest: Path, name: str, size: int) -> LocalArchive:
    """`make_archive` for any archive name (a full or an increment)."""
    dest.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with (dest / name).open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MIB))
            h.update(block)
            f.write(block)
            left -= len(block)
    (dest / (name + naming.SIDECAR)).write_text(f"{h.hexdigest()}  {name}\n")
    return LocalArchive(name, size, h.hexdigest())


def sync_config(tmp: Path, label: str, **usb: Any) -> Config:
    """A config for one test: its own destination and state dir, loop devices allowed."""
    usb_config = replace(UsbConfig(labels=(label,), require_usb=False, keep=3), **usb)
    return Config(
        archive=ArchiveConfig(destination=tmp / "backups", prefix=PREFIX),
        usb=usb_config,
        agent=AgentConfig(state_dir=tmp / "state"),
    )


def write_toml(config: Config, path: Path) -> Path:
    """The same config as a TOML file, for running the real `usbagent` command."""
    usb = config.usb
    labels = ", ".join(f'"{x}"' for x in usb.labels)
    uuids = ", ".join(f'"{x}"' for x in usb.uuids)
    path.write_text(
        f"""[archive]
destination = "{config.archive.destination}"
prefix = "{config.archive.prefix}"
[usb]
labels = [{labels}]
uuids = [{uuids}]
require_usb = {str(usb.require_usb).lower()}
keep = {usb.keep}
directory = "{usb.directory}"
[agent]
state_dir = "{config.agent.state_dir}"
"""
    )
    return path


def usbagent(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usbagent", "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything observable about a host tree: names, types, contents, link targets, times."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", str(p.readlink()))
            elif stat.S_ISREG(st.st_mode):
                out[str(p)] = ("file", sha256_file(p), st.st_size, st.st_mtime_ns)
            else:
                out[str(p)] = ("dir", st.st_mtime_ns)
    return out


def stick_files(mount: Path, directory: str = "usbagent") -> set[str]:
    folder = mount / directory
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def served_once(
    make_stick: MakeStick, label: str, tmp: Path, keep: int
) -> tuple[Config, LocalArchive, Path, Path]:
    """A stick `usbagent sync` has already brought up to date with one 1 MiB archive:
    (config, that archive, the stick's mountpoint, the config file)."""
    config = sync_config(tmp, label, keep=keep)
    old = make_archive(config.archive.destination, 1, MIB)
    mount = make_stick(PartSpec("ext4", label=label)).mount()
    toml = write_toml(config, tmp / "c.toml")
    assert usbagent(toml, "sync", str(mount)).returncode == 0
    return config, old, mount, toml
