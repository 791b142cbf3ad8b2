"""Read what systemd recorded about usbagent's units (`systemctl show`), for status and doctor.

`systemctl show` is used rather than a D-Bus client because it speaks to the system or user
manager alike (`user_scope`, shared with the OnFailure hook:
$USBAGENT_SYSTEMD_SCOPE=user|system, else $MANAGERPID means a user manager) and prints
timestamps as plain Unix seconds with --timestamp=unix. A machine without a running systemd
is a normal case (containers, this project's CI): it is reported as `SystemdUnavailable`,
never as a crash.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

AGENT_SERVICE = "usbagent.service"
ARCHIVE_SERVICE = "usbagent-archive.service"
ARCHIVE_TIMER = "usbagent-archive.timer"
UNITS = (AGENT_SERVICE, ARCHIVE_SERVICE, ARCHIVE_TIMER)
TIMEOUT_SECONDS = 10


class SystemdUnavailable(Exception):
    """No systemd manager answered; the message says why (one line)."""


@dataclass(frozen=True)
class Unit:
    """The properties of one unit, as systemctl printed them ("" when empty or unknown)."""

    name: str
    props: Mapping[str, str]

    def get(self, key: str) -> str:
        return self.props.get(key, "")

    def time(self, key: str) -> datetime | None:
        """A timestamp property (printed as '@<seconds>'), None when unset."""
        value = self.get(key)
        if not value.startswith("@"):
            return None
        try:
            seconds = int(value[1:])
        except ValueError:
            return None
        return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None

    def number(self, key: str) -> int | None:
        try:
            return int(self.get(key))
        except ValueError:
            return None

    @property
    def loaded(self) -> bool:
        return self.get("LoadState") == "loaded"


def user_scope(env: Mapping[str, str]) -> bool:
    """$USBAGENT_SYSTEMD_SCOPE=user|system, else $MANAGERPID (set by a user manager)."""
    explicit = env.get("USBAGENT_SYSTEMD_SCOPE", "").strip().lower()
    if explicit in ("user", "system"):
        return explicit == "user"
    return "MANAGERPID" in env


def scope_args() -> list[str]:
    return ["--user"] if user_scope(os.environ) else []


def show(units: Sequence[str], props: Sequence[str], user: bool | None = None) -> dict[str, Unit]:
    """Properties of each unit (of the user manager when `user`, by default as
    `user_scope` says); raise SystemdUnavailable when no manager can be asked.

    The one `systemctl show` client: status, doctor and the OnFailure hook all ask here.
    """
    scope = ["--user"] if (user_scope(os.environ) if user is None else user) else []
    cmd = ["systemctl", *scope, "show", "--timestamp=unix", "-p", ",".join(props)]
    try:
        proc = subprocess.run(
            [*cmd, *units], capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError:
        raise SystemdUnavailable("systemctl is not installed") from None
    except subprocess.TimeoutExpired:
        raise SystemdUnavailable(f"systemctl show did not answer in {TIMEOUT_SECONDS} s") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["systemctl show failed"])[0]
        raise SystemdUnavailable(first)
    return dict(zip(units, parse_show(proc.stdout, units), strict=True))


def parse_show(text: str, units: Sequence[str]) -> list[Unit]:
    """Split `systemctl show` output (blank-line separated blocks, in argument order)."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition("=")
        blocks[-1][key] = "" if value == "n/a" else value
    blocks = [b for b in blocks if b]
    blocks += [{}] * (len(units) - len(blocks))
    return [Unit(name, block) for name, block in zip(units, blocks, strict=False)]
