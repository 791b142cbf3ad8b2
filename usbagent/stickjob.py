"""One stick served: what the agent does once `decide` said `Serve`.

Pre-mount check -> filesystem check -> mount (or reuse a mount) -> `sync.sync_stick` in a
worker thread (it records nothing) -> sync(2) -> unmount -> power off -> only then the
outcome says "safe to remove", and is handed to the daemon to record once, as it was told.
A mount somebody else made is used and left as it was. Everything that goes wrong is an
outcome too: a recognised stick never leaves without a record of whether it got a backup.

Blocking calls run off the loop; the sync and os.sync run in daemon threads (`in_thread`),
so a stick that hangs in the kernel can neither stall the loop nor keep a stopped agent alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from usbagent import journal, mounts, state, sync, syncwords
from usbagent.agentstatus import lag_summary
from usbagent.backend import Backend, DeviceError, Mount
from usbagent.config import Config
from usbagent.details import SyncDetails
from usbagent.devices import Partition, describe
from usbagent.events import Outcome, Removal
from usbagent.journal import StickReport
from usbagent.plan import SyncPlan

# The daemon's one logger, whichever of its modules writes: people (and
# bench/plug_latency.py) read these lines as the agent's.
log = logging.getLogger("usbagent.agent")

T = TypeVar("T")

PROGRESS_EVERY = 0.5  # seconds between progress updates forwarded from a sync thread


class Host(Protocol):
    """What a job needs of the daemon: its config and backend, and how to tell people."""

    config: Config
    backend: Backend

    async def report_stick(self, report: StickReport) -> None:
        """Record (with the stick's ledger) and publish, once."""

    def announce(self, outcome: Outcome) -> Awaitable[None]:
        """Record and publish in the background; awaitable to keep outcomes in order."""

    def update_status(self) -> None:
        """A job's status line changed."""


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


def facts(p: Partition) -> dict[str, object]:
    """Which stick an outcome of the agent's own (recognised, check or mount failed) is about."""
    label = p.label or p.part_name
    return SyncDetails(label=label, uuid=p.uuid, fstype=p.fstype, device=p.device).to_json()


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


@dataclass
class StickJob:
    """One stick being served; the daemon keeps it in `Agent.jobs` while it runs."""

    partition: Partition
    host: Host
    cancel: threading.Event = field(default_factory=threading.Event)
    status: str = ""
    pulled: bool = False  # the stick disappeared while being served
    repaired: bool = False  # its FAT filesystem failed the check before mount and was repaired
    done: bool = False  # ended: late progress from its thread changes nothing
    lags: list[float] = field(default_factory=list)  # loop lag samples while it ran
    task: asyncio.Task[None] | None = None
    recognised: Awaitable[None] | None = None  # publishing "stick-recognised"

    @property
    def _config(self) -> Config:
        return self.host.config

    def _say(self, line: str) -> None:
        self.status = line
        self.host.update_status()

    def was_pulled(self) -> None:
        """The stick disappeared: cancel the sync, and say so in the outcome."""
        log.warning("%s was removed while being served", describe(self.partition))
        self.pulled = True
        self.cancel.set()

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            self.done = True

    async def _serve(self) -> None:
        p = self.partition
        reason = await asyncio.to_thread(sync.precheck, self._config, p)
        if reason is not None:
            await self.host.report_stick(syncwords.refusal(p, reason))
            return
        self._say(f"checking {describe(p)}")
        try:
            self.repaired = await self.host.backend.check(p)
        except (DeviceError, TimeoutError, OSError) as exc:
            await self._fail(f"filesystem check failed: {exc}")
            return
        self._say(f"mounting {describe(p)}")
        try:
            mount = await self._mount()
        except (DeviceError, TimeoutError) as exc:
            await self._fail(f"mount failed: {exc}")
            return
        report = await self._sync(mount.path)
        await self._finish(report, mount)

    async def _fail(
        self, what: str, copied: bool = False, synced: StickReport | None = None
    ) -> None:
        """A recognised stick that is not done right: recorded and published, never silent."""
        p = self.partition
        state_ = "copies verified, but" if copied else "plugged in but not backed up:"
        summary = f"{describe(p)} {state_} {what}"
        outcome = Outcome(kind="sync", ok=False, summary=summary, details=facts(p))
        report = StickReport(outcome, p.uuid, p.label or p.part_name, p.fstype)
        if copied and synced is not None:  # the copies are verified: the ledger says so too
            report = dataclasses.replace(synced, outcome=outcome)
        await self.host.report_stick(report)

    async def _mount(self) -> Mount:
        """Mount (or find the mount); a mount an earlier run of ours made is ours again."""
        p = self.partition
        mount = await self.host.backend.mount(p)
        record = mount_record(self._config.agent.state_dir, p.uuid)
        if record is None:
            return mount
        try:
            entry = await asyncio.to_thread(lambda: mounts.mount_at(mount.path, mounts.read()))
            # the mount's id, not only its place: a later mount at the same place (somebody
            # else's, after they unmounted ours) is not ours
            mount_id = entry.mount_id if entry else None
            noted = {"device": p.device, "mountpoint": str(mount.path), "id": mount_id}
            if mount.ours:
                await asyncio.to_thread(journal.note_mount, record, noted)
            elif await asyncio.to_thread(state.read_json, record) == noted:
                log.info("%s was mounted by an earlier usbagent run; unmounting it after", p.device)
                mount = Mount(mount.path, ours=True)
        except OSError as exc:  # the mount itself is fine; only a restart would misjudge it
            log.error("cannot note the mount of %s in %s: %s", p.device, record, exc)
        return mount

    async def _unmount(self, mount: Mount) -> None:
        p = self.partition
        await self.host.backend.unmount(p, mount)
        if (record := mount_record(self._config.agent.state_dir, p.uuid)) is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(journal.forget_mount, record)

    def _recognised(self, copies: int) -> None:
        """The sync accepted the stick: now (not before) tell the person it is being used."""
        what = f"copying {copies} archive(s)" if copies else "checking its copies"
        outcome = Outcome(
            kind="stick-recognised",
            ok=True,
            summary=f"{describe(self.partition)} recognised; {what}",
            details=facts(self.partition),
        )
        self.recognised = self.host.announce(outcome)

    def _progress(self, line: str) -> None:
        if not self.done:
            self._say(line)

    async def _sync(self, mountpoint: Path) -> StickReport | None:
        """Run the blocking sync in a thread; None when it crashed (already reported)."""
        loop = asyncio.get_running_loop()
        p = self.partition
        last_sent = 0.0

        def accepted(plan: SyncPlan) -> None:  # runs in the sync thread
            loop.call_soon_threadsafe(self._recognised, len(plan.copy))

        def progress(pr: sync.Progress) -> None:  # runs in the sync thread
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent >= PROGRESS_EVERY:
                last_sent = now
                line = progress_status(
                    pr.index, pr.total, pr.done_bytes, pr.total_bytes, p.label or p.part_name
                )
                loop.call_soon_threadsafe(self._progress, line)

        self._say(f"syncing {describe(p)}")
        started = time.monotonic()
        try:
            report: StickReport | None = await in_thread(
                lambda: sync.sync_stick(
                    self._config, mountpoint, p, self.cancel, progress, accepted, device_exists(p)
                )
            )
        except Exception as exc:
            log.exception("sync of %s crashed", describe(p))
            await self._fail(f"sync crashed: {exc}")
            report = None
        if self.recognised is not None:  # published before the outcome that follows it
            with contextlib.suppress(Exception):
                await self.recognised
        lag = lag_summary(self.lags)
        log.info(
            "sync of %s took %.1f s; event loop lag meanwhile: max %.1f ms, p99 %.1f ms (%d)",
            describe(p),
            time.monotonic() - started,
            lag["max_ms"],
            lag["p99_ms"],
            len(self.lags),
        )
        return report

    async def _finish(self, report: StickReport | None, mount: Mount) -> None:
        """sync(2) -> unmount -> power off, then tell the person whether to pull the stick:
        the sync's report is worded for how it ended and recorded once, as it was told."""
        p = self.partition
        if not mount.ours:
            await in_thread(os.sync)
            if report is not None:  # somebody else's mount stays; they unmount before pulling
                await self.host.report_stick(syncwords.told(report, "left-mounted", mount.path))
            return
        self._say(f"unmounting {describe(p)}")
        await in_thread(os.sync)  # a daemon thread: a hung stick cannot block our exit
        try:
            await self._unmount(mount)
        except (DeviceError, TimeoutError) as exc:
            if self.pulled:  # nothing left to unmount cleanly; say what the sync said
                if report is not None:
                    await self.host.report_stick(syncwords.told(report))
                return
            copied = report is not None and report.outcome.ok
            await self._fail(f"unmount failed, do not pull it yet: {exc}", copied, report)
            return
        powered = await self._power_off()
        if report is None:
            return
        if report.outcome.ok:
            removal: Removal = "powered-off" if powered else "unmounted"
            report = syncwords.told(report, removal, repaired=self.repaired)
        elif self.pulled and SyncDetails.of(report.outcome).error != syncwords.REMOVED:
            outcome = report.outcome
            outcome = dataclasses.replace(
                outcome, summary=f"{outcome.summary} (the stick was removed during the copy)"
            )
            report = dataclasses.replace(report, outcome=outcome)
        await self.host.report_stick(report)

    async def _power_off(self) -> bool:
        """Power the unmounted stick off if configured; False when not done (it is safe anyway)."""
        if not self._config.usb.power_off or self.pulled:
            return False
        try:
            return await self.host.backend.power_off(self.partition)
        except (DeviceError, TimeoutError) as exc:
            log.warning(
                "power-off of %s failed (it is unmounted, safe to remove): %s",
                describe(self.partition),
                exc,
            )
            return False
