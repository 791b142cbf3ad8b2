"""The shipped Prometheus alerting rules, run by `promtool test rules` (Debian: prometheus).

One test drives every alert with synthetic series (firing and not firing, each host's own
thresholds, files from before the thresholds were exported); the other feeds the rules what a
real node_exporter scrapes from a metrics file usbagent itself wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from usbagent import journal, metrics
from usbagent.config import AgentConfig
from usbagent.events import Outcome

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "usbagent.rules.yml"
H = 3600
D = 86400


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} missing: run `make system-deps` (Debian package {package})")
        pytest.skip(f"{name} missing (Debian package {package})")
    return path


def promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    """Run promtool's rule unit tests (JSON is YAML); fail with its report."""
    spec = tmp_path / "usbagent.rules.test.yml"
    spec.write_text(
        json.dumps({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests})
    )
    proc = subprocess.run(
        [tool("promtool", "prometheus"), "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "node", **labels}
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def alert(name: str, at: str, *fired: tuple[dict[str, str], str, str]) -> dict[str, Any]:
    """Expect `name` at `at` to have fired exactly for (labels, summary, description)."""
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {"exp_labels": labels, "exp_annotations": {"summary": s, "description": d}}
            for labels, s, d in fired
        ],
    }


def archive_stale(instance: str, age: str) -> tuple[dict[str, str], str, str]:
    return (
        {"severity": "critical", "instance": instance, "job": "node"},
        f"usbagent on {instance}: no new backup archive",
        f"The newest successful archive is {age} old (a timestamp of 0 means there has "
        "never been one). Run `usbagent status` and `usbagent doctor` on the host; the "
        "archive job's journal says why it did not run or failed.",
    )


def sync_stale(instance: str, age: str) -> tuple[dict[str, str], str, str]:
    return (
        {"severity": "warning", "instance": instance, "job": "node"},
        f"usbagent on {instance}: no recent copy on a backup stick",
        f"The newest verified copy to a backup stick is {age} old (0 means never). Plug in "
        "a backup stick; `usbagent status` shows the last sync.",
    )


def errors(instance: str, kind: str, count: str) -> tuple[dict[str, str], str, str]:
    return (
        {"severity": "warning", "instance": instance, "job": "node", "kind": kind},
        f"usbagent on {instance}: {kind} failed",
        f"{count} failed {kind} outcome(s) in the last day. `usbagent status` on the host "
        "names the newest error and its fix.",
    )


def metrics_stale(instance: str, file: str, age: str) -> tuple[dict[str, str], str, str]:
    return (
        {"severity": "warning", "instance": instance, "job": "node", "file": file},
        f"usbagent on {instance}: metrics not written for a day",
        f"{file} was last written {age} ago; usbagent rewrites it after every archive and "
        "sync, so nothing has been recorded since.",
    )


def metrics_missing(instance: str) -> tuple[dict[str, str], str, str]:
    return (
        {"severity": "critical", "instance": instance, "job": "node"},
        f"usbagent on {instance}: metrics disappeared",
        "usbagent's metrics were scraped in the last 7 days but are gone now: the textfile "
        "was removed or renamed, node_exporter cannot read it (node_textfile_scrape_error), "
        "or node_exporter is down. Backups on this host are not being watched.",
    )


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    minutes = 52 * 60  # 52 hours of 1-minute samples
    n = f"x{minutes}"
    prom = "/var/lib/prometheus/node-exporter/usbagent.prom"
    inputs = [
        # archived at 1h; default threshold exported (26 h): stale from 27 h on
        series("usbagent_last_archive_timestamp_seconds", f"{H}{n}", instance="a"),
        series("usbagent_archive_stale_after_seconds", f"{26 * H}{n}", instance="a"),
        # same age, but this host allows 48 h
        series("usbagent_last_archive_timestamp_seconds", f"{H}{n}", instance="b"),
        series("usbagent_archive_stale_after_seconds", f"{48 * H}{n}", instance="b"),
        # an older file without thresholds: 26 h applies
        series("usbagent_last_archive_timestamp_seconds", f"{H}{n}", instance="c"),
        # never archived: 0
        series("usbagent_last_archive_timestamp_seconds", f"0{n}", instance="never"),
        series("usbagent_archive_stale_after_seconds", f"{26 * H}{n}", instance="never"),
        # stick sync: at 1h, thresholds 2 days (a) and the 7-day default (c)
        series("usbagent_last_stick_sync_timestamp_seconds", f"{H}{n}", instance="a"),
        series("usbagent_stick_sync_stale_after_seconds", f"{2 * D}{n}", instance="a"),
        series("usbagent_last_stick_sync_timestamp_seconds", f"{H}{n}", instance="c"),
        # one sync failure at 2h; the counter then stays at 1
        series("usbagent_errors_total", f"0x120 1x{minutes - 120}", instance="a", kind="sync"),
        series("usbagent_errors_total", f"0{n}", instance="a", kind="archive"),
        # the textfile: written at 1h (a), at 2h and every hour after (b)
        series("node_textfile_mtime_seconds", f"{H}{n}", instance="a", file=prom),
        series(
            "node_textfile_mtime_seconds",
            " ".join(str((2 + m // 60) * H) for m in range(minutes)),
            instance="b",
            file=prom,
        ),
        series("node_textfile_mtime_seconds", f"{H}{n}", instance="a", file="/x/other.prom"),
        # metrics of host "gone" vanish at 10h
        series("usbagent_last_archive_timestamp_seconds", f"{H}x600 _x{minutes}", instance="gone"),
    ]
    tests = [
        alert("UsbagentArchiveStale", "20h"),  # (promtool's clock starts at 0: "never" is 20h)
        alert(
            "UsbagentArchiveStale",
            "28h",
            archive_stale("a", "1d 3h 0m 0s"),
            archive_stale("c", "1d 3h 0m 0s"),
            archive_stale("never", "1d 4h 0m 0s"),
        ),
        alert(
            "UsbagentArchiveStale",
            "50h",
            archive_stale("a", "2d 1h 0m 0s"),
            archive_stale("b", "2d 1h 0m 0s"),
            archive_stale("c", "2d 1h 0m 0s"),
            archive_stale("never", "2d 2h 0m 0s"),
        ),
        alert("UsbagentStickSyncStale", "49h"),  # 2 days are up at 49h, but `for: 1h`
        alert("UsbagentStickSyncStale", "50h30m", sync_stale("a", "2d 1h 30m 0s")),
        alert("UsbagentErrors", "1h"),
        alert("UsbagentErrors", "3h", errors("a", "sync", "1")),
        alert("UsbagentErrors", "27h"),  # a day without a new failure: resolved
        alert("UsbagentMetricsStale", "20h"),
        alert(
            "UsbagentMetricsStale",
            "29h",
            metrics_stale("a", prom, "1d 4h 0m 0s"),
        ),
        alert("UsbagentMetricsMissing", "10h"),
        alert("UsbagentMetricsMissing", "11h", metrics_missing("gone")),
    ]
    promtool_test(tmp_path, [{"interval": "1m", "input_series": inputs, "alert_rule_test": tests}])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real node_exporter reading only the textfile collector from `tmp_path/textfile`."""
    folder = tmp_path / "textfile"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            tool("prometheus-node-exporter", "prometheus-node-exporter"),
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={folder}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("node_exporter did not start") from None
                time.sleep(0.05)
        yield folder, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def scrape(url: str) -> dict[str, float]:
    """usbagent's and the textfile collector's samples, as `name{labels}` -> value."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if re.match(r"(usbagent_|node_textfile_)", line):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def with_instance(name: str) -> str:
    """Add the labels a Prometheus scrape would add to a scraped series name."""
    extra = 'instance="host1",job="node"'
    if name.endswith("}"):
        return name[:-1] + "," + extra + "}"
    return name + "{" + extra + "}"


def test_rules_on_what_node_exporter_scrapes_from_usbagents_file(
    tmp_path: Path, node_exporter: tuple[Path, str]
) -> None:
    """usbagent writes its file, node_exporter serves it, the rules see it: an archive
    at 1h, never a stick copy, then a failed archive, and no rewrite after that."""
    folder, url = node_exporter
    agent = AgentConfig(state_dir=tmp_path / "state", metrics_file=folder / "usbagent.prom")
    at = datetime.fromtimestamp(H, UTC)  # promtool's clock starts at 0

    def written_at(seconds: int) -> dict[str, float]:
        assert agent.metrics_file is not None
        os.utime(agent.metrics_file, (seconds, seconds))
        return scrape(url)

    journal.record(agent, Outcome("archive", True, "ok", at, {"size": 10, "duration": 1.5}))
    before = written_at(H)
    journal.record(
        agent, Outcome("archive", False, "tar failed", datetime.fromtimestamp(2 * H, UTC))
    )
    after = written_at(2 * H)
    assert f'node_textfile_mtime_seconds{{file="{agent.metrics_file}"}}' in after
    assert after['usbagent_errors_total{kind="archive"}'] == 1
    minutes = 40 * 60
    inputs = [
        {
            "series": with_instance(name),
            "values": f"{before.get(name, after[name])}x120 {after[name]}x{minutes - 120}",
        }
        for name in after
        if "scrape_error" not in name
    ]
    tests = [
        alert("UsbagentErrors", "1h30m"),
        alert("UsbagentErrors", "2h30m", errors("host1", "archive", "1")),
        alert("UsbagentArchiveStale", "26h"),
        alert("UsbagentArchiveStale", "28h", archive_stale("host1", "1d 3h 0m 0s")),
        alert(
            "UsbagentMetricsStale",
            "30h",
            metrics_stale("host1", str(agent.metrics_file), "1d 4h 0m 0s"),
        ),
    ]
    promtool_test(tmp_path, [{"interval": "1m", "input_series": inputs, "alert_rule_test": tests}])


def test_the_rules_use_only_metrics_usbagent_writes() -> None:
    """A rule on a renamed or never-written series would silently never fire."""
    written = set(
        re.findall(
            r"^# TYPE (\w+)",
            metrics.render(metrics.MetricFacts(None, None, (("archive", 0),), 1.0, 1.0)),
            re.MULTILINE,
        )
    )
    used = set(re.findall(r"\b(usbagent_\w+)", RULES.read_text()))
    assert used and used <= written, used - written
