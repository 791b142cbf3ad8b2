"""Configuration: one TOML file, validated once at load into frozen dataclasses.

Every problem in the file is collected and reported together (one line per key), so a
user fixes a broken config in one pass instead of discovering errors one restart at a time.
"""

from __future__ import annotations

import math
import os
import re
import socket
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

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


# --- rules shared with `install` ----------------------------------------------------------
# One rule in one place: a value the config accepts is one `install` can render, so a label
# or path never passes config and doctor only to be refused by install.

# Characters udev keeps as-is in ID_FS_LABEL / ID_PART_ENTRY_NAME (others are rewritten, so
# a rule matching the label as written would never match the device).
UDEV_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "#+-.:=@_")


def label_problem(label: str) -> str | None:
    """Why a stick label cannot be matched by the udev rule `install` writes, or None."""
    bad = sorted(set(label) - UDEV_LABEL_CHARS)
    if not bad:
        return None
    return (
        f"{label!r} contains {''.join(bad)!r}, which udev rewrites in device properties; "
        "use only letters, digits and - _ . : = @ # +"
    )


def unit_path_problem(text: str) -> str | None:
    """Why a path cannot be written into a systemd unit file safely, or None."""
    if any(c in text for c in "\"'\\$") or not text.isprintable():
        return (
            f"{text!r}: quotes, '$', '\\' and control characters cannot be written into a "
            "systemd unit safely; use a path without them"
        )
    return None


# --- validation ---------------------------------------------------------------------------
# A checker turns a raw TOML value into the typed value or raises ValueError with a message
# saying what is allowed; the loader prefixes it with the key's dotted name.

Checker = Callable[[Any], Any]
# Upper bounds that keep every later date computation (now - limit) representable: a
# value past them would be accepted here and crash retention or status with an
# OverflowError every night. 100 years of archives, 10 years before "stale".
MAX_KEEP_DAYS = 36500
MAX_STALE_HOURS = 87600.0
MAX_STALE_DAYS = 3650.0
# A stick is usually FAT or exFAT: a folder name they cannot hold fails on every such stick.
_FAT_FORBIDDEN = frozenset('"*/:<>?\\|')
_HEX_UUID = re.compile(r"^[0-9a-f]+(-[0-9a-f]+)*$")


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _int_range(lo: int, hi: int | None = None) -> Checker:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi else f"must be >= {lo}")
        return v

    return check


def _positive_number(most: float) -> Checker:
    def check(v: Any) -> float:
        # nan and inf are floats TOML allows; nan passes every comparison test but "> 0"
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"must be a positive number (at most {most:g}), got {v!r}")
        if not 0 < v <= most:
            raise ValueError(f"must be a positive number, at most {most:g}")
        return float(v)

    return check


def _abs_path(v: Any) -> Path:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty path string")
    if "\0" in v:
        raise ValueError("must not contain a NUL character")
    p = Path(v)
    if not p.is_absolute():
        raise ValueError(f"must be an absolute path, got {v!r}")
    return p


def _unit_path(v: Any) -> Path:
    """A path `install` writes into the units (ReadWritePaths=): it must be writable there."""
    p = _abs_path(v)
    problem = unit_path_problem(str(p))
    if problem:
        raise ValueError(problem)
    return p


def _optional_path(v: Any) -> Path | None:
    return None if v == "" else _abs_path(v)


def _metrics_path(v: Any) -> Path | None:
    p = None if v == "" else _unit_path(v)
    if p is not None and p.suffix != ".prom":
        raise ValueError(
            "must end in .prom: node_exporter's textfile collector reads only *.prom files"
        )
    return p


def _str_list(nonempty: bool) -> Checker:
    def check(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise ValueError("must be a list of non-empty strings")
        if any("\0" in s for s in v):
            raise ValueError("must not contain a NUL character")
        if nonempty and not v:
            raise ValueError("must not be empty")
        return tuple(v)

    return check


def _labels(v: Any) -> tuple[str, ...]:
    labels: tuple[str, ...] = _str_list(nonempty=True)(v)
    problems = [p for p in map(label_problem, labels) if p]
    if problems:
        raise ValueError("; ".join(problems))
    return labels


def _source_list(v: Any) -> tuple[Path, ...]:
    """Absolute paths; a source is stored under its name, which a '..' would make unsafe."""
    paths = tuple(_abs_path(s) for s in _str_list(nonempty=True)(v))
    climbing = [str(p) for p in paths if ".." in p.parts]
    if climbing:
        raise ValueError(f"{climbing[0]!r} has a '..' component; write the path it means")
    return paths


def _prefix(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    if v and not naming.valid_prefix(v):  # else its archives would never be found again
        raise ValueError(f"may contain only {naming.PREFIX_CHARS}, got {v!r}")
    if v[:1] in ("-", "."):
        raise ValueError(
            f"must start with a letter or digit, got {v!r} (an archive name starting with '-' "
            "reads as an option to age and sha256sum; one starting with '.' is hidden)"
        )
    return v


def _anchored_exclude(pattern: str) -> str:
    """An absolute exclude pattern, normalised ('//' and a trailing '/' dropped)."""
    parts = [p for p in pattern.split("/") if p]
    if not parts:
        raise ValueError(f"{pattern!r} would exclude everything")
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{pattern!r}: '.' and '..' are not allowed in an absolute pattern")
    return "/" + "/".join(parts)


def _exclude_list(v: Any) -> tuple[str, ...]:
    """tar patterns; an absolute one is anchored: it names a path under one of the sources."""
    items = _str_list(nonempty=False)(v)
    return tuple(_anchored_exclude(s) if s.startswith("/") else s for s in items)


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


def _directory_name(v: Any) -> str:
    """One folder name that FAT, exFAT and ext4 all hold as written (FAT drops a trailing
    dot or space, and refuses the reserved characters), so every stick gets the same one."""
    if (
        not isinstance(v, str)
        or not v.strip(" .")
        or any(c in _FAT_FORBIDDEN or not c.isprintable() for c in v)
        or v != v.strip(" ")
        or v.endswith(".")
        or len(v.encode()) > 255
    ):
        raise ValueError(
            'must be a single folder name a FAT stick can hold: no / \\ : * ? " < > |, '
            "no control characters, no leading or trailing space, no trailing dot"
        )
    return v


def _choice(options: tuple[str, ...]) -> Checker:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return str(v)

    return check


def _uuid_list(v: Any) -> tuple[str, ...]:
    uuids = tuple(s.lower() for s in _str_list(nonempty=False)(v))
    bad = [u for u in uuids if not _HEX_UUID.match(u)]
    if bad:
        raise ValueError(
            f"{bad[0]!r} is not a filesystem UUID as blkid shows it (hex digits and '-', "
            "e.g. 1234-ABCD): a stick could never match it"
        )
    return uuids


SCHEMA: dict[str, tuple[type, dict[str, Checker]]] = {
    "archive": (
        ArchiveConfig,
        {
            "sources": _source_list,
            "exclude": _exclude_list,
            "destination": _unit_path,
            "recipients_file": _abs_path,
            "keep_days": _int_range(1, MAX_KEEP_DAYS),
            "compression_level": _int_range(1, 19),
            "prefix": _prefix,
            "identity_file": _optional_path,
        },
    ),
    "usb": (
        UsbConfig,
        {
            "labels": _labels,
            "uuids": _uuid_list,
            "require_usb": _bool,
            "directory": _directory_name,
            "keep": _int_range(1),
            "backend": _choice(BACKENDS),
            "power_off": _bool,
        },
    ),
    "agent": (
        AgentConfig,
        {
            "state_dir": _unit_path,
            "stale_after_hours": _positive_number(MAX_STALE_HOURS),
            "usb_stale_after_days": _positive_number(MAX_STALE_DAYS),
            "metrics_file": _metrics_path,
        },
    ),
    "notify": (NotifyConfig, {"enabled": _bool}),
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
