"""The config's value checkers, and the rules `install` shares with them.

A checker turns one raw TOML value into its typed value or raises ValueError saying what
is allowed; `usbagent.config` applies them key by key and prefixes each message with the
key's dotted name. They live apart from the config's shape so that each file stays about
one thing: config.py what the file holds, this module what each value may be.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usbagent import naming

# --- rules shared with `install` -----------------------------------------------------------
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


# --- checkers --------------------------------------------------------------------------------

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


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def int_range(lo: int, hi: int | None = None) -> Checker:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi else f"must be >= {lo}")
        return v

    return check


def positive_number(most: float) -> Checker:
    def check(v: Any) -> float:
        # nan and inf are floats TOML allows; nan passes every comparison test but "> 0"
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"must be a positive number (at most {most:g}), got {v!r}")
        if not 0 < v <= most:
            raise ValueError(f"must be a positive number, at most {most:g}")
        return float(v)

    return check


def abs_path(v: Any) -> Path:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty path string")
    if "\0" in v:
        raise ValueError("must not contain a NUL character")
    p = Path(v)
    if not p.is_absolute():
        raise ValueError(f"must be an absolute path, got {v!r}")
    return p


def unit_path(v: Any) -> Path:
    """A path `install` writes into the units (ReadWritePaths=): it must be writable there."""
    p = abs_path(v)
    problem = unit_path_problem(str(p))
    if problem:
        raise ValueError(problem)
    return p


def optional_path(v: Any) -> Path | None:
    return None if v == "" else abs_path(v)


def metrics_path(v: Any) -> Path | None:
    p = None if v == "" else unit_path(v)
    if p is not None and p.suffix != ".prom":
        raise ValueError(
            "must end in .prom: node_exporter's textfile collector reads only *.prom files"
        )
    return p


def str_list(nonempty: bool) -> Checker:
    def check(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise ValueError("must be a list of non-empty strings")
        if any("\0" in s for s in v):
            raise ValueError("must not contain a NUL character")
        if nonempty and not v:
            raise ValueError("must not be empty")
        return tuple(v)

    return check


def labels(v: Any) -> tuple[str, ...]:
    labels: tuple[str, ...] = str_list(nonempty=True)(v)
    problems = [p for p in map(label_problem, labels) if p]
    if problems:
        raise ValueError("; ".join(problems))
    return labels


def source_list(v: Any) -> tuple[Path, ...]:
    """Absolute paths; a source is stored under its name, which a '..' would make unsafe."""
    paths = tuple(abs_path(s) for s in str_list(nonempty=True)(v))
    climbing = [str(p) for p in paths if ".." in p.parts]
    if climbing:
        raise ValueError(f"{climbing[0]!r} has a '..' component; write the path it means")
    return paths


def prefix(v: Any) -> str:
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


def anchored_exclude(pattern: str) -> str:
    """An absolute exclude pattern, normalised ('//' and a trailing '/' dropped)."""
    parts = [p for p in pattern.split("/") if p]
    if not parts:
        raise ValueError(f"{pattern!r} would exclude everything")
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{pattern!r}: '.' and '..' are not allowed in an absolute pattern")
    return "/" + "/".join(parts)


def exclude_list(v: Any) -> tuple[str, ...]:
    """tar patterns; an absolute one is anchored: it names a path under one of the sources."""
    items = str_list(nonempty=False)(v)
    return tuple(anchored_exclude(s) if s.startswith("/") else s for s in items)


def directory_name(v: Any) -> str:
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


def choice(options: tuple[str, ...]) -> Checker:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return str(v)

    return check


def uuid_list(v: Any) -> tuple[str, ...]:
    uuids = tuple(s.lower() for s in str_list(nonempty=False)(v))
    bad = [u for u in uuids if not _HEX_UUID.match(u)]
    if bad:
        raise ValueError(
            f"{bad[0]!r} is not a filesystem UUID as blkid shows it (hex digits and '-', "
            "e.g. 1234-ABCD): a stick could never match it"
        )
    return uuids
