"""Configuration: one TOML file, validated once at load into frozen dataclasses.

Every problem in the file is collected and reported together (one line per key), so a
user fixes a broken config in one pass instead of discovering errors one restart at a time.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from usbagent import configcheck as check
from usbagent import naming, selection

DEFAULT_PATH = Path("/etc/usbagent/config.toml")
ENV_VAR = "USBAGENT_CONFIG"
BACKENDS = ("auto", "udisks2", "udev")


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message names every bad key."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class ArchiveConfig:
    sources: tuple[Path, ...] = (Path("/data"),)
    exclude: tuple[str, ...] = ("*.tmp",)
    destination: Path = Path("/data/backups")
    recipients_file: Path = Path("/data/secrets/age-recipient")
    keep_days: int = 14
    # A full archive at least every this many (UTC calendar) days; increments in between.
    full_every_days: int = 7
    compression_level: int = 3
    prefix: str = ""  # "" means: the host name (resolved by Config.archive_prefix)
    # Optional age identity for restore drills and `verify --identity` default; may also come
    # from systemd credentials ($CREDENTIALS_DIRECTORY/<name>).
    identity_file: Path | None = None


@dataclass(frozen=True)
class UsbConfig:
    labels: tuple[str, ...] = ("sovereign-backup",)
    uuids: tuple[str, ...] = ()
    require_usb: bool = True
    directory: str = "usbagent"
    keep: int = 14
    backend: str = "auto"
    power_off: bool = True


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path = Path("/var/lib/usbagent")
    stale_after_hours: float = 26
    usb_stale_after_days: float = 7
    # Prometheus node_exporter textfile; None disables metrics.
    metrics_file: Path | None = None


@dataclass(frozen=True)
class NotifyConfig:
    enabled: bool = True


@dataclass(frozen=True)
class Config:
    archive: ArchiveConfig = ArchiveConfig()
    usb: UsbConfig = UsbConfig()
    agent: AgentConfig = AgentConfig()
    notify: NotifyConfig = NotifyConfig()
    path: Path | None = None

    @property
    def archive_prefix(self) -> str:
        """Archive name prefix; the host name when unset, so several hosts can share a stick."""
        return self.archive.prefix or _safe_hostname()


def _safe_hostname() -> str:
    prefix = naming.safe_prefix(socket.gethostname().split(".")[0]).lstrip("-.")
    return prefix or "backup"  # no leading '-' or '.': see _prefix


def _excludes_outside_sources(values: Mapping[str, Any]) -> list[str]:
    """Absolute exclude patterns that would do nothing, or exclude a whole source."""
    sources = values.get("sources", ArchiveConfig.sources)
    problems = []
    for p in values.get("exclude", ()):
        if not p.startswith("/"):
            continue
        source = selection.source_of(p, sources)
        if source is None:
            problems.append(
                f"archive.exclude: {p} is not inside any of archive.sources (an absolute "
                "pattern names a path under a source, as written there; a relative one "
                "matches anywhere)"
            )
        elif source == Path(p):
            problems.append(
                f"archive.exclude: {p} is a source itself and would leave nothing of it "
                "(remove it from archive.sources instead)"
            )
    return problems


SCHEMA: dict[str, tuple[type, dict[str, check.Checker]]] = {
    "archive": (
        ArchiveConfig,
        {
            "sources": check.source_list,
            "exclude": check.exclude_list,
            "destination": check.unit_path,
            "recipients_file": check.abs_path,
            "keep_days": check.int_range(1, check.MAX_KEEP_DAYS),
            "full_every_days": check.int_range(1, check.MAX_KEEP_DAYS),
            "compression_level": check.int_range(1, 19),
            "prefix": check.prefix,
            "identity_file": check.optional_path,
        },
    ),
    "usb": (
        UsbConfig,
        {
            "labels": check.labels,
            "uuids": check.uuid_list,
            "require_usb": check.boolean,
            "directory": check.directory_name,
            "keep": check.int_range(1),
            "backend": check.choice(BACKENDS),
            "power_off": check.boolean,
        },
    ),
    "agent": (
        AgentConfig,
        {
            "state_dir": check.unit_path,
            "stale_after_hours": check.positive_number(check.MAX_STALE_HOURS),
            "usb_stale_after_days": check.positive_number(check.MAX_STALE_DAYS),
            "metrics_file": check.metrics_path,
        },
    ),
    "notify": (NotifyConfig, {"enabled": check.boolean}),
}


def parse(raw: Mapping[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for name in raw:
        if name not in SCHEMA:
            problems.append(f"unknown section [{name}] (known: {', '.join(SCHEMA)})")
    for name, (cls, checkers) in SCHEMA.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{name}: must be a table [{name}]")
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in checkers:
                problems.append(f"{name}.{key}: unknown key (known: {', '.join(checkers)})")
                continue
            try:
                values[key] = checkers[key](value)
            except ValueError as exc:
                problems.append(f"{name}.{key}: {exc}")
        if name == "archive" and ("sources" in values or "sources" not in table):
            problems += _excludes_outside_sources(values)
        known = {f.name for f in fields(cls)}
        sections[name] = cls(**{k: v for k, v in values.items() if k in known})
    if problems:
        raise ConfigError(path, problems)
    return Config(path=path, **sections)


def resolve_path(cli_value: str | None) -> Path:
    """--config wins, then $USBAGENT_CONFIG, then the system default."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load(path: Path) -> Config:
    """Read and validate the config file at `path`."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            path, [f"no such file (create it, or pass --config / set ${ENV_VAR})"]
        ) from None
    except PermissionError:
        raise ConfigError(path, ["not readable by this user (check its permissions)"]) from None
    except IsADirectoryError:
        raise ConfigError(path, ["is a folder; --config takes the config file itself"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot be read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text, as TOML must be: {exc.reason}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    return parse(raw, path)
