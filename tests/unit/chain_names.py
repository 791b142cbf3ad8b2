"""Archive names of chains for the pure tests: a full on day N, level L of the full of day F."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from usbagent import naming
from usbagent.naming import ArchiveName

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def full(day: int) -> ArchiveName:
    return naming.make("h", T0 + timedelta(days=day))


def inc(day: int, level: int, of: int) -> ArchiveName:
    return naming.make("h", T0 + timedelta(days=day), level=level, full=T0 + timedelta(days=of))


def week(start: int, nights: int) -> list[ArchiveName]:
    """A chain: the full of day `start`, then one level a night, `nights` archives in all."""
    return [full(start), *(inc(start + n, n, start) for n in range(1, nights))]
