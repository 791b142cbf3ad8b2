"""Cost of `usbagent status` on a full state dir, of the metrics rewrite, and of one desktop
notification (helper process start + session bus + Notify round trip).

    sudo .venv/bin/python -m bench.status_notify [--runs 20]

Status runs as monitoring runs it (a fresh `usbagent status --json` process each time) on a
state dir at its size bound: 1000 events, 20 stick ledgers, 30 archives. The notification
is delivered to root's own session bus (a private dbus-daemon) with the notification server
double from the tests, so no user account is needed; the helper still starts as it does in
production (a fresh interpreter importing dbus-next).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from usbagent import journal, ledger, metrics, naming, notify
from usbagent.config import AgentConfig
from usbagent.events import Kind, Outcome
from usbagent.outbox import CRITICAL, Note

DOUBLES = Path(__file__).resolve().parents[1] / "tests" / "integration" / "dbus_doubles.py"


def fill(root: Path) -> tuple[Path, AgentConfig]:
    dest, state_dir = root / "dest", root / "state"
    dest.mkdir()
    now = datetime.now(UTC)
    for day in range(30):
        name = naming.make("bench", now - timedelta(days=day))
        (dest / name.filename).write_bytes(b"x")
    agent = AgentConfig(state_dir=state_dir, metrics_file=root / "usbagent.prom")
    for i in range(1000):
        kinds: tuple[Kind, ...] = ("archive", "sync", "refused", "stick-recognised")
        kind = kinds[i % 4]
        journal.record(
            AgentConfig(state_dir=state_dir),  # no metrics while filling
            Outcome(kind, i % 7 != 0, f"event {i}", now - timedelta(minutes=1000 - i),
                    {"size": 123, "duration": 1.5}),
        )  # fmt: skip
    for i in range(20):
        ledger.record_ok(state_dir, f"uuid-{i}", f"STICK{i}", (f"bench-{i}",), 10**9, "")
    config = root / "config.toml"
    config.write_text(
        f'[archive]\ndestination = "{dest}"\nprefix = "bench"\n[agent]\nstate_dir = "{state_dir}"\n'
    )
    return config, agent


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def report(what: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    print(
        f"{what}: median {statistics.median(ms):.0f} ms, "
        f"p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, max {ms[-1]:.0f} ms ({len(ms)} runs)"
    )


def bench_status(root: Path, runs: int) -> None:
    config, agent = fill(root)
    env = {**os.environ, "USBAGENT_SYSTEMD_SCOPE": "system"}
    cmd = [sys.executable, "-m", "usbagent", "--config", str(config), "status", "--json"]
    report(
        "usbagent status --json (process)",
        timed(lambda: subprocess.run(cmd, capture_output=True, env=env, check=False), runs),
    )
    report("metrics.write (1000 events)", timed(lambda: metrics.write(agent), runs))


def bench_notify(root: Path, runs: int) -> None:
    runtime = root / "run"
    (runtime / "0").mkdir(parents=True)
    address = f"unix:path={runtime / '0' / 'bus'}"
    out = subprocess.run(
        ["dbus-daemon", "--session", f"--address={address}", "--fork", "--print-pid"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    bus_pid = int(out.stdout.split()[0])
    server = subprocess.Popen(
        [sys.executable, str(DOUBLES), "notifyd", "root"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": address},
    )  # fmt: skip
    try:
        assert server.stdout is not None and '"ready"' in server.stdout.readline()
        os.environ[notify.RUNTIME_ROOT_ENV] = str(runtime)
        note = Note("stale", "Backup is out of date", "bench", CRITICAL, datetime.now(UTC))

        def deliver() -> None:
            assert asyncio.run(notify.deliver_as(0, note, 5.0))

        report("one notification via the helper", timed(deliver, runs))
    finally:
        server.terminate()
        server.wait(10)
        os.kill(bus_pid, signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ua-bench-status-"))
    try:
        bench_status(root, args.runs)
        bench_notify(root, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
