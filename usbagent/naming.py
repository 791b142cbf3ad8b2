"""Archive file names: the one place that knows how an archive, its level and its chain are
spelled.

- a full archive: `<prefix>-<YYYYmmddTHHMMSSZ>.tar.zst.age` (every archive versions before
  incremental archives wrote is a full);
- an increment: `<prefix>-<stamp>.inc<N>.<fullstamp>.tar.zst.age`, level N >= 1, made
  against the state after level N-1 of the chain whose full was made at `<fullstamp>`.

Names sort by creation time (the stamp comes right after the prefix), the level and the
chain are readable by a person and by `chains`, and the increment part is joined by '.',
which cannot end a prefix followed by '-<stamp>', so no name parses two ways.

Retention and pruning delete only names this module recognises, so a stray file in the
destination or on a stick is never mistaken for an archive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SUFFIX = ".tar.zst.age"
SIDECAR = ".sha256"
PARTIAL = ".partial"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# The one rule for prefixes, used by config validation and by `parse` alike: a prefix the
# config accepts always yields names that `parse` (status, verify, retention, sync) finds.
PREFIX_CHARS = "ASCII letters, digits, '-', '_' and '.'"
_PREFIX = r"[A-Za-z0-9._-]+"
_STAMP = r"\d{8}T\d{6}Z"
MAX_LEVEL = 9999  # far beyond any chain a `full_every_days` allows; bounds the name
_NAME = re.compile(
    rf"(?P<prefix>{_PREFIX})-(?P<stamp>{_STAMP})"
    rf"(?:\.inc(?P<level>[1-9][0-9]{{0,3}})\.(?P<full>{_STAMP}))?" + re.escape(SUFFIX),
    re.ASCII,
)


@dataclass(frozen=True, order=True)
class ArchiveName:
    """A parsed archive name; orders by creation time.

    `level` 0 is a full; `full` is when the chain's full was made (for a full: `created`).
    """

    created: datetime
    prefix: str
    level: int
    full: datetime

    @property
    def is_full(self) -> bool:
        return self.level == 0

    @property
    def chain(self) -> tuple[str, datetime]:
        """What identifies the chain this archive belongs to: its prefix and its full."""
        return self.prefix, self.full

    @property
    def filename(self) -> str:
        stamp = self.created.strftime(STAMP_FORMAT)
        if self.is_full:
            return f"{self.prefix}-{stamp}{SUFFIX}"
        return f"{self.prefix}-{stamp}.inc{self.level}.{self.full.strftime(STAMP_FORMAT)}{SUFFIX}"

    @property
    def sidecar(self) -> str:
        return self.filename + SIDECAR


def valid_prefix(prefix: str) -> bool:
    """Whether archives named with `prefix` are recognised again (see PREFIX_CHARS)."""
    return re.fullmatch(_PREFIX, prefix) is not None


def safe_prefix(text: str) -> str:
    """`text` with every character a prefix may not contain replaced by '-'."""
    return "".join(c if valid_prefix(c) else "-" for c in text)


def _second(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(microsecond=0)


def make(prefix: str, when: datetime, level: int = 0, full: datetime | None = None) -> ArchiveName:
    """The name for an archive created at `when` (truncated to whole seconds, UTC): a full,
    or the increment of `level` in the chain whose full was made at `full`."""
    if not 0 <= level <= MAX_LEVEL or (level > 0) != (full is not None):
        raise ValueError(f"level {level} with full {full}: not an archive name")
    created = _second(when)
    base = _second(full) if full is not None else created
    if level and base >= created:
        raise ValueError("an increment must be made after its chain's full")
    return ArchiveName(created=created, prefix=prefix, level=level, full=base)


def _stamp(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # looks like a stamp but is no date (month 13): not one of ours
        return None


def parse(filename: str, prefix: str | None = None) -> ArchiveName | None:
    """The archive a file name denotes, or None if it is not one (of `prefix`, when given).

    An increment dated no later than its own full is no name usbagent makes: not ours.
    """
    m = _NAME.fullmatch(filename)
    if not m or (prefix is not None and m["prefix"] != prefix):
        return None
    created = _stamp(m["stamp"])
    full = _stamp(m["full"]) if m["full"] else created
    if created is None or full is None:
        return None
    level = int(m["level"] or 0)
    if level and full >= created:
        return None
    return ArchiveName(created=created, prefix=m["prefix"], level=level, full=full)


# How far an archive's name may be ahead of the clock before it is suspect: a clock set
# right by NTP shortly after an archive was made must not make that archive suspect.
FUTURE_SLACK = timedelta(hours=1)


def in_future(filename: str, now: datetime) -> bool:
    """Is this archive name dated later than the clock allows? (False for other names.)

    A future-dated name is never one usbagent just made; counted as the newest archive, it
    would push every real one out of retention and off the sticks.
    """
    parsed = parse(filename)
    return parsed is not None and parsed.created > now + FUTURE_SLACK


def is_partial(filename: str) -> bool:
    """A temporary file of ours: an archive or sidecar name with the `.partial` suffix."""
    if not filename.endswith(PARTIAL):
        return False
    base = filename.removesuffix(PARTIAL).removesuffix(SIDECAR)
    return parse(base) is not None


_SIDECAR_LINE = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}) [ *](?P<name>.+)$")


def sidecar_line(name: str, sha256: str) -> bytes:
    """The sidecar of archive `name`: one `sha256sum` line, as `sha256sum -c` reads it."""
    return f"{sha256}  {name}\n".encode()


def parse_sidecar(text: str, archive_name: str) -> str:
    """The hex digest a sidecar states for `archive_name`; ValueError says what is wrong.

    The one reading of a sidecar, on the host and on a stick alike: a sidecar that names
    another file, or holds more than its one line, states nothing about this archive.
    """
    lines = text.splitlines()
    match = _SIDECAR_LINE.match(lines[0]) if len(lines) == 1 else None
    if match is None:
        raise ValueError("sidecar is not one `sha256sum` line")
    if match["name"] != archive_name:
        raise ValueError(f"sidecar is for {match['name']!r}, not for this archive")
    return match["hex"].lower()


def sidecar_digest(text: str, archive_name: str) -> str | None:
    """`parse_sidecar`, or None when the sidecar states no digest for `archive_name`."""
    try:
        return parse_sidecar(text, archive_name)
    except ValueError:
        return None
