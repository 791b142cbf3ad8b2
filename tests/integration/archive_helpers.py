"""Helpers for the archive/verify/restore tests: a real setup on disk and the real CLI.

Each test gets its own sources, destination, state dir, age identity and config file under
its tmp_path, and runs `python -m usbagent` as a user (or a timer) would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage

from usbagent import naming

PREFIX = "ua-test"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Setup:
    root: Path
    source: Path
    destination: Path
    state_dir: Path
    identity: Path
    recipients: Path
    config: Path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return usbagent("--config", str(self.config), *args, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "usbagent", "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def archives(self) -> list[Path]:
        return sorted(p for p in self.destination.iterdir() if naming.parse(p.name))

    def files(self) -> list[str]:
        return sorted(p.name for p in self.destination.iterdir())

    def last(self, kind: str = "archive") -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "last" / f"{kind}.json").read_text())
        return data


def usbagent(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usbagent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def new_identity(path: Path) -> str:
    """Write an age identity file like age-keygen does; returns the public key."""
    identity = pyrage.x25519.Identity.generate()
    path.write_text(f"# test identity\n{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public())


def make_setup(
    root: Path,
    *,
    extra_recipients: Sequence[str] = (),
    sources: Sequence[Path] | None = None,
    destination: Path | None = None,
    **archive: object,
) -> Setup:
    """A complete, valid setup with a little sample data in `root/data`."""
    source = root / "data"
    (source / "docs").mkdir(parents=True)
    (source / "docs" / "a.txt").write_text("alpha\n")
    (source / "docs" / "b.txt").write_text("beta\n" * 1000)
    (source / "scratch.tmp").write_text("excluded\n")
    identity = root / "identity.txt"
    public = new_identity(identity)
    recipients = root / "recipients.txt"
    recipients.write_text("\n".join(["# test", public, *extra_recipients]) + "\n")
    dest = destination or root / "backups"
    dest.mkdir(parents=True, exist_ok=True)
    state_dir = root / "state"
    config = write_config(
        root / "config.toml",
        {
            "archive": {
                "sources": [str(s) for s in (sources or [source])],
                "destination": str(dest),
                "recipients_file": str(recipients),
                "prefix": PREFIX,
                **archive,
            },
            "agent": {"state_dir": str(state_dir)},
            "notify": {"enabled": False},
        },
    )
    return Setup(root, source, dest, state_dir, identity, recipients, config)


def fill_random(path: Path, mib: int) -> None:
    """An incompressible file, so archiving it takes a measurable time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def age_listing(archive: Path, identity: Path) -> list[str]:
    """`age -d -i KEY F | zstd -d | tar -t` with Debian's tools."""
    out = subprocess.run(
        f"age -d -i '{identity}' '{archive}' | zstd -d | tar -t",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.rstrip("/") for line in out.splitlines()]


def member(path: Path) -> str:
    """The name under which the archive stores an absolute path."""
    return str(path).lstrip("/")
