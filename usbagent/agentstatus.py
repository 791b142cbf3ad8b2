"""What the agent says about itself: the STATUS= line, watchdog pings, the heartbeat file.

The watchdog is pinged from a task ON the event loop, and only while the backend is alive:
a hung loop or a dead D-Bus/udev connection stops the pings, and systemd restarts us. The
heartbeat (state dir, via the journal) carries the same status line and the loop's lag, so
`usbagent status` can tell a live agent from a stuck one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

from usbagent import journal
from usbagent.backend import Backend
from usbagent.config import Config
from usbagent.watchdog import Watchdog

# The daemon's one logger, whichever of its modules writes (see stickjob).
log = logging.getLogger("usbagent.agent")

TICK_MAX = 10.0  # heartbeat/watchdog period when systemd asks for none (or a longer one)


def idle_status(labels: tuple[str, ...], last_error: str | None) -> str:
    line = "idle, watching for sticks labelled " + ", ".join(labels)
    return f"{line}; last error: {last_error}" if last_error else line


def lag_summary(samples: list[float]) -> dict[str, float]:
    """Max and p99 of loop scheduling delays, in milliseconds."""
    if not samples:
        return {"max_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"max_ms": round(ordered[-1] * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


class AgentStatus:
    """The status line (busy jobs, else idle with the last error), pings and heartbeats."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        watchdog: Watchdog,
        busy: Callable[[], list[str]],
    ) -> None:
        self._config = config
        self._backend = backend
        self.watchdog = watchdog
        self._busy = busy  # the status lines of the jobs in progress
        self.line = ""
        self.last_error: str | None = None
        self.lags: list[float] = []  # loop scheduling delays since the last heartbeat

    def set(self, line: str) -> None:
        if line != self.line:
            self.line = line
            self.watchdog.status(line)

    def update(self) -> None:
        busy = [line for line in self._busy() if line]
        self.set("; ".join(busy) if busy else idle_status(self._config.usb.labels, self.last_error))

    def failed(self, what: str) -> None:
        """The newest error, shown while idle until the next one."""
        self.last_error = what
        self.update()

    async def tick(self) -> None:
        """Heartbeat + watchdog ping, from the loop itself: no ping when the loop is stuck."""
        period = min(self.watchdog.interval or TICK_MAX, TICK_MAX)
        was_alive = True
        while True:
            await asyncio.sleep(period)
            alive = self._backend.alive()
            if alive:
                self.watchdog.ping()
            elif was_alive:
                what = f"the {self._backend.name} event source is gone; no stick events"
                log.error("%s: not pinging the watchdog so systemd restarts us", what)
                self.failed(what)
            was_alive = alive
            await self.write_heartbeat()

    async def write_heartbeat(self) -> None:
        data = {
            "pid": os.getpid(),
            "time": datetime.now(UTC).isoformat(),
            "status": self.line,
            "backend": self._backend.name,
            "backend_alive": self._backend.alive(),
            "loop_lag": lag_summary(self.lags),
        }
        self.lags.clear()
        try:
            await asyncio.to_thread(journal.heartbeat, self._config.agent, data)
        except OSError as exc:
            log.error("cannot write the heartbeat in %s: %s", self._config.agent.state_dir, exc)
