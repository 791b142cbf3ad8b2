"""Prometheus node_exporter textfile metrics, recomputed from the state dir after every outcome.

The file is derived only from what `state.record` persisted, so it can never disagree with
`usbagent status`; it is replaced atomically because node_exporter may read it at any moment
and a half-written file would be a scrape error (or worse, a silently missing series).

Timestamps are 0 when the event never happened: an alert on `time() - timestamp > X` then
fires for a system that has never made an archive, which is exactly what it should do.
"""

from __future__ import annotations

import logging
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from usbagent import state
from usbagent.config import AgentConfig
from usbagent.events import Kind, Outcome
from usbagent.fsutil import write_atomic

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = typing.get_args(Kind)


@dataclass(frozen=True)
class MetricFacts:
    last_archive: Outcome | None  # newest successful archive outcome
    last_sync: Outcome | None  # newest successful stick sync
    errors: tuple[tuple[str, int], ...]  # (kind, failed outcomes in history), every kind


def gather(state_dir: Path) -> MetricFacts:
    """Read the history (and the last-of-kind files, which outlive history trimming)."""
    history = state.events(state_dir)
    counts: Counter[str] = Counter(o.kind for o in history if not o.ok)
    return MetricFacts(
        last_archive=_newest_ok(history, state.last(state_dir, "archive"), "archive"),
        last_sync=_newest_ok(history, state.last(state_dir, "sync"), "sync"),
        errors=tuple((kind, counts.get(kind, 0)) for kind in KINDS),
    )


def _newest_ok(history: list[Outcome], last: Outcome | None, kind: str) -> Outcome | None:
    candidates = [o for o in history if o.kind == kind and o.ok]
    if last is not None and last.ok:
        candidates.append(last)
    return max(candidates, key=lambda o: o.time, default=None)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


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
    details = archive.details if archive else {}
    for key, name, help_ in (
        ("size", "usbagent_last_archive_size_bytes", "Size of the newest successful archive."),
        (
            "duration",
            "usbagent_last_archive_duration_seconds",
            "Time the newest successful archive took to make.",
        ),
    ):
        value = _number(details.get(key))
        if value is not None:
            family(name, "gauge", help_, [("", value)])
    family(
        "usbagent_last_stick_sync_timestamp_seconds",
        "gauge",
        "Unix time of the newest successful copy to a backup stick (0: never).",
        [("", facts.last_sync.time.timestamp() if facts.last_sync else 0.0)],
    )
    family(
        "usbagent_errors_total",
        "counter",
        "Failed outcomes in the recorded history (newest 1000 events), by kind.",
        [(f'{{kind="{kind}"}}', float(n)) for kind, n in facts.errors],
    )
    return "\n".join(out) + "\n"


def write(agent: AgentConfig) -> None:
    """Rewrite agent.metrics_file; a failure is logged, never raised into the outcome's producer.

    Metrics are a side channel: an unwritable textfile folder must not turn a good archive
    into a failed one (`usbagent doctor` reports the missing folder instead).
    """
    if agent.metrics_file is None:
        return
    text = render(gather(agent.state_dir))
    try:
        write_atomic(agent.metrics_file, text.encode())
    except OSError as exc:
        log.warning("cannot write metrics file %s: %s", agent.metrics_file, exc)
