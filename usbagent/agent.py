"""`usbagent agent`: the asyncio hotplug daemon, wired together.

Backends put device events on a queue -> `decide.Core` turns each into decisions -> this
daemon carries them out: a `stickjob.StickJob` per stick to serve, probe-grace timers, a
pulled stick's job cancelled. Outcomes are recorded once (the journal) and published on the
`EventBus` (desktop notifications subscribe); `agentstatus` keeps systemd's STATUS= line,
the watchdog and the heartbeat.

Concurrency decisions:
- Several sticks are served concurrently, each in its own thread, so a stick that hangs in
  the kernel (a dying flash drive) never keeps another stick from getting its backup.
- A stick is identified by its filesystem UUID: one job per UUID at a time. Events for a
  stick being served are ignored; a stick re-plugged while its old job winds down is served
  once that job has ended.
- Every blocking call (sync, fsync'ing state files, os.sync) runs off the loop, so the loop
  keeps answering device events and the watchdog during a multi-GB copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from usbagent import health, journal, sources
from usbagent.agentstatus import AgentStatus
from usbagent.backend import Backend, DeviceError, DeviceEvent, EventQueue
from usbagent.config import Config
from usbagent.decide import Core, Decision, Serve, StartGrace, StopGrace, stick_id
from usbagent.errors import UsbagentError
from usbagent.events import EventBus, Outcome
from usbagent.journal import StickReport
from usbagent.stickjob import StickJob
from usbagent.watchdog import Watchdog

if TYPE_CHECKING:  # imported when notifications are on: the D-Bus stack is paid for then
    from usbagent.notify import Notifier

log = logging.getLogger(__name__)

STOP_BUDGET = 4.0  # seconds from SIGTERM to exit: syncs wind down, unmount, publish (< 5 s)
FRESHNESS_PERIOD = 300.0  # how often to look for a stale newest archive
LAG_PROBE = 0.1  # loop-lag probe period
PROBE_GRACE = 3.0  # seconds a labelled partition may lack filesystem facts before it is judged


class Agent:
    def __init__(self, config: Config, backend: Backend, watchdog: Watchdog) -> None:
        self.config = config
        self.backend = backend
        self.bus = EventBus()
        self.queue: EventQueue = asyncio.Queue()
        self.core = Core(config.usb)  # the decisions; this class carries them out
        self.jobs: dict[str, StickJob] = {}  # stick id -> job in progress
        self.status = AgentStatus(
            config, backend, watchdog, lambda: [j.status for j in self.jobs.values()]
        )
        self._unprobed: dict[str, asyncio.TimerHandle] = {}  # device key -> grace timer
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stale: Outcome | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        notifier = await self._start_notifier()
        try:
            await self.backend.start(self.queue)
            while not self.queue.empty():  # the snapshot: sticks plugged in before we started
                self._on_event(self.queue.get_nowait())
            self.status.update()
            await self.status.write_heartbeat()
            self.status.watchdog.ready()
            log.info("ready: %s (%s backend)", self.status.line, self.backend.name)
            self._spawn(self._dispatch())
            self._spawn(self.status.tick())
            self._spawn(self._probe_lag())
            self._spawn(self._watch_freshness())
            await self._stop.wait()
            log.info("stopping")
            await self._shutdown()
        finally:
            await self.backend.close()
            await self._close_notifier(notifier)
        return 0

    def stop(self) -> None:
        """Ask `run` to shut down as on SIGTERM (for in-process use: the demo, tests)."""
        self.core.stopping = True
        self._stop.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task failed", exc_info=task.exception())

    async def _shutdown(self) -> None:
        """Cancel syncs, let them remove their partials and unmount, within the stop budget."""
        deadline = time.monotonic() + STOP_BUDGET
        self.status.watchdog.stopping()
        self.status.watchdog.extend_timeout(STOP_BUDGET + 5)
        self.status.set("stopping")
        jobs = [j.task for j in self.jobs.values() if j.task is not None]
        for job in self.jobs.values():
            job.cancel.set()
        if jobs:
            log.info("cancelling %d sync(s) in progress", len(jobs))
            # keep one second for publishing and closing after the jobs
            _, late = await asyncio.wait(jobs, timeout=max(0.1, deadline - 1 - time.monotonic()))
            for task in late:
                log.error("a sync did not stop in time; leaving it (its stick may stay mounted)")
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=0.3)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - 0.5 - time.monotonic())):
                await self.bus.drain()

    async def _start_notifier(self) -> Notifier | None:
        """Desktop notifications are a subscriber; their failure never stops the agent."""
        if not self.config.notify.enabled:
            return None
        try:
            from usbagent.notify import Notifier

            notifier = Notifier(self.config)
            await notifier.start()
        except Exception:
            log.exception("desktop notifications unavailable; outcomes are still recorded")
            return None
        self.bus.subscribe(notifier.handle)
        return notifier

    async def _close_notifier(self, notifier: Notifier | None) -> None:
        if notifier is None:
            return
        try:
            async with asyncio.timeout(0.5):
                await notifier.close()
        except Exception:
            log.exception("closing desktop notifications failed")

    # --- periodic -------------------------------------------------------------------------

    async def _probe_lag(self) -> None:
        """Scheduling delay of a 100 ms sleep: how long the loop was busy elsewhere."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(LAG_PROBE)
            lag = time.monotonic() - start - LAG_PROBE
            self.status.lags.append(lag)
            for job in self.jobs.values():
                job.lags.append(lag)

    async def _watch_freshness(self) -> None:
        """Publish a "stale" outcome when the newest archive turns too old (on the transition)."""
        while True:
            stale = await asyncio.to_thread(
                health.archive_freshness, self.config, datetime.now(UTC)
            )
            if stale is not None and self._stale is None:
                await self.report(stale)
            self._stale = stale
            await asyncio.sleep(FRESHNESS_PERIOD)

    # --- telling people (stickjob.Host) ---------------------------------------------------

    async def report(self, outcome: Outcome) -> None:
        """Record and publish exactly what the person is told; note failures in STATUS."""
        await self._record(outcome, None)

    async def report_stick(self, report: StickReport) -> None:
        """Record (with the stick's ledger) and publish; the journal is written once."""
        await self._record(report.outcome, report)

    def announce(self, outcome: Outcome) -> asyncio.Task[None]:
        return self._spawn(self.report(outcome))

    def update_status(self) -> None:
        self.status.update()

    async def _record(self, outcome: Outcome, report: StickReport | None) -> None:
        try:
            if report is not None:
                await asyncio.to_thread(journal.record_stick, self.config.agent, report)
            else:
                await asyncio.to_thread(journal.record, self.config.agent, outcome)
        except OSError as exc:
            log.error("cannot record %s outcome in the state dir: %s", outcome.kind, exc)
        (log.info if outcome.ok else log.error)("%s: %s", outcome.kind, outcome.summary)
        if not outcome.ok:
            self.status.last_error = outcome.summary
        self.bus.publish(outcome)
        self.status.update()

    # --- device events --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            self._on_event(await self.queue.get())

    def _on_event(self, event: DeviceEvent) -> None:
        action, p = event
        log.debug("%s %s %s", action, p.device, p)
        self._carry_out(self.core.on_event(action, p))

    def _carry_out(self, decisions: list[Decision]) -> None:
        """Do what the decision core decided (usbagent.decide): the daemon's only part."""
        for d in decisions:
            if isinstance(d, Serve):
                job = StickJob(d.partition, self)
                self.jobs[stick_id(d.partition)] = job
                job.task = self._spawn(self._serve(job))
            elif isinstance(d, StartGrace):
                log.debug("%s: no filesystem facts yet; waiting %.0f s", d.key, PROBE_GRACE)
                loop = asyncio.get_running_loop()
                self._unprobed[d.key] = loop.call_later(PROBE_GRACE, self._grace_over, d.key)
            elif isinstance(d, StopGrace):
                if (timer := self._unprobed.pop(d.key, None)) is not None:
                    timer.cancel()
            elif (pulled := self.jobs.get(d.stick)) is not None:  # Pulled
                pulled.was_pulled()

    def _grace_over(self, key: str) -> None:
        self._unprobed.pop(key, None)
        self._carry_out(self.core.grace_over(key))

    async def _serve(self, job: StickJob) -> None:
        try:
            await job.run()
        finally:
            stick = stick_id(job.partition)
            self.jobs.pop(stick, None)
            self.status.update()
            self._carry_out(self.core.job_ended(stick))


# --- command --------------------------------------------------------------------------------


async def main(config: Config) -> int:
    backend = await sources.select(config)
    agent = Agent(config, backend, Watchdog())
    try:
        return await agent.run()
    except DeviceError as exc:
        raise UsbagentError(f"cannot watch for sticks: {exc}") from exc


def run(config: Config | None, args: argparse.Namespace) -> int:
    if config is None:
        raise UsbagentError("no config file; pass --config (see /etc/usbagent/config.toml)")
    return asyncio.run(main(config))
