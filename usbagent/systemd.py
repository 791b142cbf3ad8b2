"""Read what systemd recorded about usbagent's units (`systemctl show`), for status and doctor.

The one `systemctl show` client and parser: `status`, `doctor` and the OnFailure hook
(`unitfailure`) all ask through `show`. `systemctl show` is used rather than a D-Bus client
because it speaks to the system or user manager alike (`user_scope`:
$USBAGENT_SYSTEMD_SCOPE=user|system, else $MANAGERPID means a user manager). With
--timestamp=unix it prints `*Timestamp` properties as `@<seconds>`, but systemd 252 prints a
timer's NextElapseUSecRealtime and LastTriggerUSec in its default style
(`Wed 2026-12-02 02:01:23 UTC`) whatever --timestamp says: systemctl therefore runs with
TZ=UTC and the C locale, so that style is unambiguous, and `Unit.time` reads both forms. A
machine without a running systemd is a normal case (containers, this project's CI): it is
reported as `SystemdUnavailable`, never as a crash.
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
# systemd's default timestamp style, as printed under TZ=UTC in the C locale.
DEFAULT_STYLE = "%a %Y-%m-%d %H:%M:%S UTC"
# So that systemctl prints that style with an unambiguous zone and English day names.
SHOW_ENV = {"TZ": "UTC", "LC_ALL": "C"}


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
        """A timestamp property, None when unset or unreadable."""
        return parse_timestamp(self.get(key))

    def number(self, key: str) -> int | None:
        try:
            return int(self.get(key))
        except ValueError:
            return None

    @property
    def loaded(self) -> bool:
        return self.get("LoadState") == "loaded"


def parse_timestamp(value: str) -> datetime | None:
    """`@<seconds>` (--timestamp=unix) or systemd's default style in UTC
    (`Wed 2026-12-02 02:01:23 UTC`, what 252 prints for timer properties); None otherwise."""
    if value.startswith("@"):
        try:
            seconds = int(value[1:])
        except ValueError:
            return None
        return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None
    try:
        return datetime.strptime(value, DEFAULT_STYLE).replace(tzinfo=UTC)
    except ValueError:
        return None


def user_scope(env: Mapping[str, str]) -> bool:
    """Whether usbagent's units live under a user manager: $USBAGENT_SYSTEMD_SCOPE=user|system,
    else $MANAGERPID (which a user manager sets for the units it starts)."""
    explicit = env.get("USBAGENT_SYSTEMD_SCOPE", "").strip().lower()
    if explicit in ("user", "system"):
        return explicit == "user"
    return "MANAGERPID" in env


def scope_args(user: bool | None = None) -> list[str]:
    """`--user` for a user manager; `user` None: decided by `user_scope` of the environment."""
    return ["--user"] if (user_scope(os.environ) if user is None else user) else []


def show(
    units: Sequence[str],
    props: Sequence[str],
    user: bool | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, Unit]:
    """Properties of each unit; raise SystemdUnavailable when no manager can be asked."""
    cmd = ["systemctl", *scope_args(user), "show", "--timestamp=unix", "-p", ",".join(props)]
    try:
        proc = subprocess.run(
            [*cmd, *units],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **SHOW_ENV},
        )
    except FileNotFoundError:
        raise SystemdUnavailable("systemctl is not installed") from None
    except OSError as exc:
        raise SystemdUnavailable(f"cannot run systemctl: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise SystemdUnavailable(f"systemctl show did not answer in {timeout:g} s") from None
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
