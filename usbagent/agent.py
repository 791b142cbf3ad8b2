"""`usbagent agent`: the asyncio hotplug daemon.

Flow per stick: backend event -> `label_matches` (else ignored) -> `refusal_reason` from the
facts (refused: recorded, published) -> mount (or reuse a mount) -> `sync.sync_stick` in a
worker thread (it records nothing), which announces "stick-recognised" once the stick
passed every rule (so a refused stick is never first told to be copying) -> unmount -> power
off -> only then the outcome says "safe to remove", and is recorded once, as it was told.
A mount somebody else made is used and left as it was: no unmount, no power-off, and the
outcome says so. Everything that goes wrong is an
Outcome that is recorded and published: a recognised stick never leaves without a record
of whether it got a backup.

Concurrency decisions:
- Several sticks are served concurrently, each in its own thread, so a stick that hangs in
  the kernel (a dying flash drive) never keeps another stick from getting its backup.
- A stick is identified by its filesystem UUID: one job per UUID at a time. Events for a
  stick being served are ignored; a stick re-plugged while its old job winds down is served
  once that job has ended.
- Every blocking call (sync, fsync'ing state files, os.sync) runs off the loop, so the loop
  keeps answering device events and the watchdog during a multi-GB copy. The watchdog is
  pinged from a task ON the loop, and only while the backend is alive: a hung loop or a dead
  D-Bus/udev connection stops the pings and systemd restarts us.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from usbagent import health, journal, mounts, sources, state, sync, syncwords
from usbagent.backend import Backend, DeviceError, DeviceEvent, EventQueue, Mount
from usbagent.config import Config
from usbagent.decide import Core, Decision, Serve, StartGrace, StopGrace, stick_id
from usbagent.details import SyncDetails
from usbagent.devices import Partition, describe
from usbagent.errors import UsbagentError
from usbagent.events import EventBus, Outcome, Removal
from usbagent.journal import StickReport
from usbagent.plan import SyncPlan
from usbagent.watchdog import Watchdog

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_BUDGET = 4.0  # seconds from SIGTERM to exit: syncs wind down, unmount, publish (< 5 s)
TICK_MAX = 10.0  # heartbeat/watchdog period when systemd asks for none (or a longer one)
FRESHNESS_PERIOD = 300.0  # how often to look for a stale newest archive
LAG_PROBE = 0.1  # loop-lag probe period
PROBE_GRACE = 3.0  # seconds a labelled partition may lack filesystem facts before it is judged
PROGRESS_EVERY = 0.5  # seconds between progress updates forwarded from a sync thread


# --- small pure helpers ---------------------------------------------------------------------


def idle_status(labels: tuple[str, ...], last_error: str | None) -> str:
    line = "idle, watching for sticks labelled " + ", ".join(labels)
    return f"{line}; last error: {last_error}" if last_error else line


def progress_status(index: int, total: int, done: int, whole: int, name: str) -> str:
    pct = int(100 * done / whole) if whole else 0
    return f"copying {index} of {total}, {pct}% to {name}"


def mount_record(state_dir: Path, uuid: str) -> Path | None:
    """Where the agent notes a mount it made, so that after a crash and restart it still
    knows that mount as its own (and unmounts it) instead of as somebody else's."""
    plain = uuid.replace("-", "")
    return state_dir / "mounts" / f"{uuid}.json" if plain.isalnum() and plain.isascii() else None


def device_exists(p: Partition) -> Callable[[], bool]:
    """Whether the stick's block device is still there (gone once it is pulled out)."""
    return lambda: bool(p.device) and Path(p.device).exists()


def lag_summary(samples: list[float]) -> dict[str, float]:
    """Max and p99 of loop scheduling delays, in milliseconds."""
    if not samples:
        return {"max_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"max_ms": round(ordered[-1] * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


def in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run `fn` in a daemon thread; the future completes on the loop.

    Not asyncio.to_thread: the default executor's threads are joined at interpreter exit, so
    a sync stuck on a dying stick could keep a SIGTERM'ed agent alive; a daemon thread
    cannot.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="usbagent-sync", daemon=True).start()
    return future


# --- the daemon -----------------------------------------------------------------------------


@dataclass
class Job:
    partition: Partition
    cancel: threading.Event = field(default_factory=threading.Event)
    status: str = ""
    pulled: bool = False  # the stick disappeared while being served
    repaired: bool = False  # its FAT filesystem failed the check before mount and was repaired
    lags: list[float] = field(default_factory=list)  # loop lag samples while it ran
    task: asyncio.Task[None] | None = None
    recognised: asyncio.Task[None] | None = None  # publishing "stick-recognised"


class Agent:
    def __init__(self, config: Config, backend: Backend, watchdog: Watchdog) -> None:
        self.config = config
        self.backend = backend
        self.watchdog = watchdog
        self.bus = EventBus()
        self.queue: EventQueue = asyncio.Queue()
        self.core = Core(config.usb)  # the decisions; this class carries them out
        self.jobs: dict[str, Job] = {}  # stick id -> job in progress
        self._unprobed: dict[str, asyncio.TimerHandle] = {}  # device key -> grace timer
        self.last_error: str | None = None
        self.lags: list[float] = []  # loop scheduling delays since the last heartbeat
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status = ""
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
            self._update_status()
            await self._write_heartbeat()
            self.watchdog.ready()
            log.info("ready: %s (%s backend)", self._status, self.backend.name)
            self._spawn(self._dispatch())
            self._spawn(self._tick())
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
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
        self.watchdog.stopping()
        self.watchdog.extend_timeout(STOP_BUDGET + 5)
        self._set_status("stopping")
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

    async def _start_notifier(self) -> Any:
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

    async def _close_notifier(self, notifier: Any) -> None:
        if notifier is None:
            return
        try:
            async with asyncio.timeout(0.5):
                await notifier.close()
        except Exception:
            log.exception("closing desktop notifications failed")

    # --- periodic -------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Heartbeat + watchdog ping, from the loop itself: no ping when the loop is stuck."""
        period = min(self.watchdog.interval or TICK_MAX, TICK_MAX)
        was_alive = True
        while True:
            await asyncio.sleep(period)
            alive = self.backend.alive()
            if alive:
                self.watchdog.ping()
            elif was_alive:
                self.last_error = f"the {self.backend.name} event source is gone; no stick events"
                log.error("%s: not pinging the watchdog so systemd restarts us", self.last_error)
                self._update_status()
            was_alive = alive
            await self._write_heartbeat()

    async def _probe_lag(self) -> None:
        """Scheduling delay of a 100 ms sleep: how long the loop was busy elsewhere."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(LAG_PROBE)
            lag = time.monotonic() - start - LAG_PROBE
            self.lags.append(lag)
            for job in self.jobs.values():
                job.lags.append(lag)

    async def _watch_freshness(self) -> None:
        """Publish a "stale" outcome when the newest archive turns too old (on the transition)."""
        while True:
            stale = await asyncio.to_thread(
                health.archive_freshness, self.config, datetime.now(UTC)
            )
            if stale is not None and self._stale is None:
                await self._report(stale)
            self._stale = stale
            await asyncio.sleep(FRESHNESS_PERIOD)

    async def _write_heartbeat(self) -> None:
        data = {
            "pid": os.getpid(),
            "time": datetime.now(UTC).isoformat(),
            "status": self._status,
            "backend": self.backend.name,
            "backend_alive": self.backend.alive(),
            "loop_lag": lag_summary(self.lags),
        }
        self.lags.clear()
        try:
            await asyncio.to_thread(journal.heartbeat, self.config.agent, data)
        except OSError as exc:
            log.error("cannot write the heartbeat in %s: %s", self.config.agent.state_dir, exc)

    # --- status ---------------------------------------------------------------------------

    def _set_status(self, line: str) -> None:
        if line != self._status:
            self._status = line
            self.watchdog.status(line)

    def _update_status(self) -> None:
        busy = [j.status for j in self.jobs.values() if j.status]
        self._set_status(
            "; ".join(busy) if busy else idle_status(self.config.usb.labels, self.last_error)
        )

    async def _report(self, outcome: Outcome) -> None:
        """Record and publish exactly what the person is told; note failures in STATUS."""
        await self._report_stick(None, outcome)

    async def _report_stick(
        self, report: StickReport | None, outcome: Outcome | None = None
    ) -> None:
        """Record (with the stick's ledger) and publish; the journal is written once."""
        outcome = report.outcome if report is not None else outcome
        assert outcome is not None
        try:
            if report is not None:
                await asyncio.to_thread(journal.record_stick, self.config.agent, report)
            else:
                await asyncio.to_thread(journal.record, self.config.agent, outcome)
        except OSError as exc:
            log.error("cannot record %s outcome in the state dir: %s", outcome.kind, exc)
        (log.info if outcome.ok else log.error)("%s: %s", outcome.kind, outcome.summary)
        if not outcome.ok:
            self.last_error = outcome.summary
        self.bus.publish(outcome)
        self._update_status()

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
                new = Job(partition=d.partition)
                self.jobs[stick_id(d.partition)] = new
                new.task = self._spawn(self._serve(new))
            elif isinstance(d, StartGrace):
                log.debug("%s: no filesystem facts yet; waiting %.0f s", d.key, PROBE_GRACE)
                loop = asyncio.get_running_loop()
                self._unprobed[d.key] = loop.call_later(PROBE_GRACE, self._grace_over, d.key)
            elif isinstance(d, StopGrace):
                if (timer := self._unprobed.pop(d.key, None)) is not None:
                    timer.cancel()
            elif (job := self.jobs.get(d.stick)) is not None:  # Pulled
                log.warning("%s was removed while being served", describe(job.partition))
                job.pulled = True
                job.cancel.set()

    def _grace_over(self, key: str) -> None:
        self._unprobed.pop(key, None)
        self._carry_out(self.core.grace_over(key))

    def _job_ended(self, job: Job) -> None:
        self.jobs.pop(stick_id(job.partition), None)
        self._update_status()
        self._carry_out(self.core.job_ended(stick_id(job.partition)))

    # --- one stick ------------------------------------------------------------------------

    async def _serve(self, job: Job) -> None:
        try:
            await self._serve_stick(job)
        finally:
            self._job_ended(job)

    def _facts(self, p: Partition) -> dict[str, Any]:
        return {
            "label": p.label or p.part_name,
            "uuid": p.uuid,
            "device": p.device,
            "fstype": p.fstype,
        }

    async def _fail(
        self, p: Partition, what: str, copied: bool = False, synced: StickReport | None = None
    ) -> None:
        """A recognised stick that is not done right: recorded and published, never silent."""
        name = describe(p)
        state_ = "copies verified, but" if copied else "plugged in but not backed up:"
        summary = f"{name} {state_} {what}"
        outcome = Outcome(kind="sync", ok=False, summary=summary, details=self._facts(p))
        report = StickReport(outcome, p.uuid, p.label or p.part_name, p.fstype)
        if copied and synced is not None:  # the copies are verified: the ledger says so too
            report = dataclasses.replace(synced, outcome=outcome)
        await self._report_stick(report)

    async def _serve_stick(self, job: Job) -> None:
        p = job.partition
        reason = await asyncio.to_thread(sync.precheck, self.config, p)
        if reason is not None:
            await self._report_stick(syncwords.refusal(p, reason))
            return
        job.status = f"checking {describe(p)}"
        self._update_status()
        try:
            job.repaired = await self.backend.check(p)
        except (DeviceError, TimeoutError, OSError) as exc:
            await self._fail(p, f"filesystem check failed: {exc}")
            return
        job.status = f"mounting {describe(p)}"
        self._update_status()
        try:
            mount = await self._mount(p)
        except (DeviceError, TimeoutError) as exc:
            await self._fail(p, f"mount failed: {exc}")
            return
        outcome = await self._sync(job, mount.path)
        await self._finish(job, outcome, mount)

    async def _mount(self, p: Partition) -> Mount:
        """Mount (or find the mount); a mount an earlier run of ours made is ours again."""
        mount = await self.backend.mount(p)
        record = mount_record(self.config.agent.state_dir, p.uuid)
        if record is None:
            return mount
        try:
            entry = await asyncio.to_thread(lambda: mounts.mount_at(mount.path, mounts.read()))
            # the mount's id, not only its place: a later mount at the same place (somebody
            # else's, after they unmounted ours) is not ours
            mount_id = entry.mount_id if entry else None
            facts = {"device": p.device, "mountpoint": str(mount.path), "id": mount_id}
            if mount.ours:
                await asyncio.to_thread(journal.note_mount, record, facts)
            elif await asyncio.to_thread(state.read_json, record) == facts:
                log.info("%s was mounted by an earlier usbagent run; unmounting it after", p.device)
                mount = Mount(mount.path, ours=True)
        except OSError as exc:  # the mount itself is fine; only a restart would misjudge it
            log.error("cannot note the mount of %s in %s: %s", p.device, record, exc)
        return mount

    async def _unmount(self, p: Partition, mount: Mount) -> None:
        await self.backend.unmount(p, mount)
        if (record := mount_record(self.config.agent.state_dir, p.uuid)) is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(journal.forget_mount, record)

    def _recognised(self, job: Job, copies: int) -> None:
        """The sync accepted the stick: now (not before) tell the person it is being used."""
        what = f"copying {copies} archive(s)" if copies else "checking its copies"
        outcome = Outcome(
            kind="stick-recognised",
            ok=True,
            summary=f"{describe(job.partition)} recognised; {what}",
            details=self._facts(job.partition),
        )
        job.recognised = self._spawn(self._report(outcome))

    async def _sync(self, job: Job, mountpoint: Path) -> StickReport | None:
        """Run the blocking sync in a thread; None when it crashed (already reported)."""
        loop = asyncio.get_running_loop()
        p = job.partition
        last_sent = 0.0

        def accepted(plan: SyncPlan) -> None:  # runs in the sync thread
            loop.call_soon_threadsafe(self._recognised, job, len(plan.copy))

        def progress(pr: Any) -> None:  # runs in the sync thread
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent >= PROGRESS_EVERY:
                last_sent = now
                line = progress_status(
                    pr.index, pr.total, pr.done_bytes, pr.total_bytes, p.label or p.part_name
                )
                loop.call_soon_threadsafe(self._job_progress, job, line)

        job.status = f"syncing {describe(p)}"
        self._update_status()
        started = time.monotonic()
        try:
            report: StickReport | None = await in_thread(
                lambda: sync.sync_stick(
                    self.config, mountpoint, p, job.cancel, progress, accepted, device_exists(p)
                )
            )
        except Exception as exc:
            log.exception("sync of %s crashed", describe(p))
            await self._fail(p, f"sync crashed: {exc}")
            report = None
        if job.recognised is not None:  # published before the outcome that follows it
            with contextlib.suppress(Exception):
                await job.recognised
        lag = lag_summary(job.lags)
        log.info(
            "sync of %s took %.1f s; event loop lag meanwhile: max %.1f ms, p99 %.1f ms (%d)",
            describe(p),
            time.monotonic() - started,
            lag["max_ms"],
            lag["p99_ms"],
            len(job.lags),
        )
        return report

    def _job_progress(self, job: Job, line: str) -> None:
        if self.jobs.get(stick_id(job.partition)) is job:
            job.status = line
            self._update_status()

    async def _finish(self, job: Job, report: StickReport | None, mount: Mount) -> None:
        """sync(2) -> unmount -> power off, then tell the person whether to pull the stick:
        the sync's report is worded for how it ended and recorded once, as it was told."""
        p = job.partition
        if not mount.ours:
            await in_thread(os.sync)
            if report is not None:  # somebody else's mount stays; they unmount before pulling
                await self._report_stick(syncwords.told(report, "left-mounted", mount.path))
            return
        job.status = f"unmounting {describe(p)}"
        self._update_status()
        await in_thread(os.sync)  # a daemon thread: a hung stick cannot block our exit
        try:
            await self._unmount(p, mount)
        except (DeviceError, TimeoutError) as exc:
            if job.pulled:  # nothing left to unmount cleanly; say what the sync said
                if report is not None:
                    await self._report_stick(syncwords.told(report))
                return
            copied = report is not None and report.outcome.ok
            await self._fail(p, f"unmount failed, do not pull it yet: {exc}", copied, report)
            return
        powered = False
        if self.config.usb.power_off and not job.pulled:
            try:
                powered = await self.backend.power_off(p)
            except (DeviceError, TimeoutError) as exc:
                log.warning(
                    "power-off of %s failed (it is unmounted, safe to remove): %s", describe(p), exc
                )
        if report is None:
            return
        if report.outcome.ok:
            removal: Removal = "powered-off" if powered else "unmounted"
            report = syncwords.told(report, removal, repaired=job.repaired)
        elif job.pulled and SyncDetails.of(report.outcome).error != syncwords.REMOVED:
            outcome = report.outcome
            outcome = dataclasses.replace(
                outcome, summary=f"{outcome.summary} (the stick was removed during the copy)"
            )
            report = dataclasses.replace(report, outcome=outcome)
        await self._report_stick(report)


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
