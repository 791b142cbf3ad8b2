"""Prometheus node_exporter textfile metrics, the journal's subscriber: rewritten after every
outcome from the files the journal keeps for it (last-ok/<kind>.json, error counts).

The file is derived only from what `journal.record` persisted, so it can never disagree with
`usbagent status`; it is replaced atomically because node_exporter may read it at any moment
and a half-written file would be a scrape error (or worse, a silently missing series).

Timestamps are 0 when the event never happened: an alert on `time() - timestamp > X` then
fires for a system that has never made an archive, which is exactly what it should do.
The staleness thresholds `status` uses are exported too, so the shipped alerting rules
(contrib/prometheus/usbagent.rules.yml) judge each host by its own configuration.

`usbagent_errors_total` must be a real counter (Prometheus' `increase()` reads any drop as a
reset): the history is trimmed, so counting its failures could fall or stand still while
errors happen. The counts are therefore kept in the state dir (ERROR_COUNTS), incremented
once per failed outcome and seeded from the history the first time.
"""

from __future__ import annotations

import logging
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from usbagent import state
from usbagent.config import AgentConfig
from usbagent.details import ArchiveDetails
from usbagent.events import Kind, Outcome
from usbagent.fsutil import write_atomic

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = typing.get_args(Kind)
ERROR_COUNTS = "error-counts.json"  # in the state dir: failed outcomes ever recorded, by kind


@dataclass(frozen=True)
class MetricFacts:
    last_archive: Outcome | None  # newest successful archive outcome
    last_sync: Outcome | None  # newest successful stick sync
    errors: tuple[tuple[str, int], ...]  # (kind, failed outcomes ever recorded), every kind
    archive_stale_after: float  # seconds, agent.stale_after_hours
    sync_stale_after: float  # seconds, agent.usb_stale_after_days


def _stored_counts(state_dir: Path) -> dict[str, int] | None:
    data = state.read_json(state_dir / ERROR_COUNTS)
    if not isinstance(data, dict):
        return None
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def count_errors(
    state_dir: Path, history: Callable[[], list[Outcome]], new: Outcome | None
) -> dict[str, int]:
    """The persisted counts, plus `new` if it failed; seeded from the history (which already
    holds `new`) when there are none yet. Called under journal.record's lock."""
    counts = _stored_counts(state_dir)
    if counts is None:
        counts = dict(Counter(o.kind for o in history() if not o.ok))
    elif new is not None and not new.ok:
        counts[new.kind] = counts.get(new.kind, 0) + 1
    else:
        return counts
    state.write_json(state_dir / ERROR_COUNTS, counts)
    return counts


def gather(agent: AgentConfig, new: Outcome | None = None) -> MetricFacts:
    """The facts from the files the journal keeps per kind (last-ok/, error counts); the
    history is read only for a state dir an older version wrote, which lacks them."""
    state_dir = agent.state_dir
    events: list[Outcome] | None = None

    def history() -> list[Outcome]:
        nonlocal events
        if events is None:
            events = state.events(state_dir)
        return events

    def newest_ok(kind: str) -> Outcome | None:
        kept = state.last_ok(state_dir, kind)
        return kept or _newest_ok(history(), state.last(state_dir, kind), kind)

    counts = count_errors(state_dir, history, new)
    return MetricFacts(
        last_archive=newest_ok("archive"),
        last_sync=newest_ok("sync"),
        errors=tuple((kind, counts.get(kind, 0)) for kind in KINDS),
        archive_stale_after=float(agent.stale_after_hours * 3600),
        sync_stale_after=float(agent.usb_stale_after_days * 86400),
    )


def _newest_ok(history: list[Outcome], last: Outcome | None, kind: str) -> Outcome | None:
    candidates = [o for o in history if o.kind == kind and o.ok]
    if last is not None and last.ok:
        candidates.append(last)
    return max(candidates, key=lambda o: o.time, default=None)


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def render(facts: MetricFacts) -> str:
    """The textfile: HELP and TYPE before every family, one sample per line, trailing newline."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_fmt(value)}" for labels, value in samples)

    archive = facts.last_archive
    family(
        "usbagent_last_archive_timestamp_seconds",
        "gauge",
        "Unix time of the newest successful archive (0: never).",
        [("", archive.time.timestamp() if archive else 0.0)],
    )
    made = ArchiveDetails.of(archive) if archive else None
    for value, name, help_ in (
        (
            made.size if made else None,
            "usbagent_last_archive_size_bytes",
            "Size of the newest successful archive.",
        ),
        (
            made.duration if made else None,
            "usbagent_last_archive_duration_seconds",
            "Time the newest successful archive took to make.",
        ),
    ):
        if value is not None:
            family(name, "gauge", help_, [("", float(value))])
    family(
        "usbagent_last_stick_sync_timestamp_seconds",
        "gauge",
        "Unix time of the newest successful copy to a backup stick (0: never).",
        [("", facts.last_sync.time.timestamp() if facts.last_sync else 0.0)],
    )
    family(
        "usbagent_errors_total",
        "counter",
        "Failed outcomes recorded since the state dir was created, by kind.",
        [(f'{{kind="{kind}"}}', float(n)) for kind, n in facts.errors],
    )
    family(
        "usbagent_archive_stale_after_seconds",
        "gauge",
        "Age at which the newest archive counts as stale (agent.stale_after_hours).",
        [("", facts.archive_stale_after)],
    )
    family(
        "usbagent_stick_sync_stale_after_seconds",
        "gauge",
        "Age at which the newest stick copy counts as stale (agent.usb_stale_after_days).",
        [("", facts.sync_stale_after)],
    )
    return "\n".join(out) + "\n"


def write(agent: AgentConfig, new: Outcome | None = None) -> None:
    """Rewrite agent.metrics_file after `new` was recorded; a failure is logged, never raised
    into the outcome's producer.

    Metrics are a side channel: an unwritable textfile folder must not turn a good archive
    into a failed one (`usbagent doctor` reports the missing folder instead).
    """
    if agent.metrics_file is None:
        return
    try:
        text = render(gather(agent, new))
        write_atomic(agent.metrics_file, text.encode())
    except OSError as exc:
        log.warning("cannot write metrics file %s: %s", agent.metrics_file, exc)
