"""Stick sync: audit the copies on a mounted stick, copy + verify what is missing, prune.

`sync_stick` is the blocking core; the agent runs it in a worker thread after mounting,
and `usbagent sync MOUNTPOINT` (`usbagent.synccmd`) runs it on a stick somebody mounted by
hand. It records nothing: it returns a `journal.StickReport`, and whoever ends the stick's
handling words how to take it out (`told`) and records it once, so a recognised stick
that did not end up with verified copies is always recorded as an error, never silent.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from usbagent import ledger, mounts
from usbagent.config import Config
from usbagent.copier import (
    Cancelled,
    DeviceFailed,
    StickFolder,
    StickRefused,
    VerifyFailed,
)
from usbagent.devices import Partition, describe, refusal_reason
from usbagent.events import Outcome
from usbagent.journal import StickReport
from usbagent.mounts import MountEntry
from usbagent.plan import (
    LocalArchive,
    Refusal,
    StickFile,
    SyncPlan,
    leftovers,
    plan_sync,
    space_to_free,
)
from usbagent.synclocal import (
    CorruptLocal,
    local_archives,
    local_sha256,
    recorded_sha256,
    to_copy,
    unrecorded,
)  # fmt: skip
from usbagent.syncwords import Run, cause, failed, finished, human, pulled, refused, report

log = logging.getLogger(__name__)

ProgressCallback = Callable[["Progress"], None]
AcceptedCallback = Callable[["SyncPlan"], None]


@dataclass(frozen=True)
class Progress:
    """Copy progress: archive `index` of `total` (1-based); bytes over the whole sync."""

    index: int
    total: int
    name: str
    done_bytes: int
    total_bytes: int


def precheck(config: Config, partition: Partition) -> str | None:
    """The pre-mount refusal reason for a labelled partition, or None: the agent's one call."""
    most = to_copy(config)
    return refusal_reason(partition, config.usb, dict(most.sizes), most.least)


# --- the sync -----------------------------------------------------------------------------


def sync_stick(
    config: Config,
    mountpoint: Path,
    partition: Partition | None,
    cancel: threading.Event,
    progress: ProgressCallback | None = None,
    accepted: AcceptedCallback | None = None,
    present: Callable[[], bool] | None = None,
) -> StickReport:
    """Bring the stick mounted at `mountpoint` up to date; return what happened, recording
    nothing: whoever ends the stick's handling (unmount, power-off) says how it may be taken
    out (`told`) and hands the report to the journal once.

    Blocking (the agent calls it in a worker thread). The outcome is kind "sync" (ok or not)
    or "refused"; it never raises for stick or I/O problems. When `cancel` is set it stops
    within about a second, leaving no `.partial` behind when the stick still allows it.
    `accepted` is called (in this thread) once every rule passed and copying starts, so a
    stick that ends up refused is never first announced as being backed up.
    `present` says whether the stick's device still exists: an I/O failure of a stick that
    has gone is reported as the stick having been removed.
    """
    partition = partition or _facts_if_known(mountpoint)
    run = Run(
        stick=describe(partition) if partition else f"the stick at {mountpoint}",
        label=(partition.label or partition.part_name) if partition else "",
        uuid=partition.uuid if partition else "",
        fstype=partition.fstype if partition else "",
        device=partition.device if partition else "",
    )
    try:
        outcome = _sync(config, mountpoint, run, cancel, progress, accepted)
    except StickRefused as exc:
        outcome = refused(run, str(exc))
    except Cancelled:
        outcome = failed(
            run, "stopped before it finished (interrupted, or usbagent is shutting down)"
        )
    except DeviceFailed as exc:
        outcome = pulled(run) if _removed(present) else failed(run, str(exc))
    except VerifyFailed as exc:
        outcome = failed(run, f"verification failed, the bad copy was deleted: {exc}")
    except OSError as exc:
        on_stick = not str(exc.filename or "").startswith(str(config.archive.destination))
        if on_stick and exc.errno in STICK_GONE_ERRNOS and _removed(present):
            outcome = pulled(run)
        else:
            outcome = failed(run, cause(exc, config.archive.destination))
    except Exception as exc:  # a bug must still end as a recorded failure, never silence
        log.exception("stick sync failed unexpectedly")
        outcome = failed(run, f"internal error: {exc!r} (please report it)")
    return report(run, outcome)


# How a pulled stick fails the copy; with its device gone it is reported as removed.
STICK_GONE_ERRNOS = frozenset(
    {errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ENOTCONN, errno.ENOENT}
)
REMOVED_WAIT_SECONDS = 5.0


def _removed(present: Callable[[], bool] | None) -> bool:
    """Was the stick pulled out? A pull reaches the copy as I/O errors (ext4 even remounts
    read-only) a moment before the device itself is gone, so wait briefly for that."""
    if present is None:
        return False
    deadline = time.monotonic() + REMOVED_WAIT_SECONDS
    while present():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


BLKROGET = 0x125E  # linux/fs.h: is the block device read-only (write-protected)?


def device_read_only(device: str) -> bool:
    """The block device itself refuses writes: a stick's lock switch, a read-only loop."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        flag = fcntl.ioctl(fd, BLKROGET, b"\0" * 4)
    except OSError:
        return False
    finally:
        os.close(fd)
    return int.from_bytes(flag, sys.byteorder) != 0


def read_only_reason(mountpoint: Path, device: str | None) -> str | None:
    """Why nothing may be written to `mountpoint` as it was found, or None.

    Read-only before we came is a decision (a person, a desktop, `mount -o ro`) or the
    hardware (a write-protected stick), not the stick failing: each gets its own fix, and
    neither the fsck advice meant for a filesystem the kernel turned read-only mid-run.
    """
    if not os.path.ismount(mountpoint) or not os.statvfs(mountpoint).f_flag & os.ST_RDONLY:
        return None
    if device and device_read_only(device):
        return (
            f"the stick at {mountpoint} ({device}) is write-protected, so usbagent wrote "
            "nothing to it; slide its lock switch to unlock it, then plug it in again"
        )
    return (
        f"{mountpoint} is mounted read-only, so usbagent wrote nothing to it; remount it "
        f"read-write (mount -o remount,rw {mountpoint}) or unmount it and plug the stick in "
        "again"
    )


def _sync(
    config: Config,
    mountpoint: Path,
    run: Run,
    cancel: threading.Event,
    progress: ProgressCallback | None,
    accepted: AcceptedCallback | None,
) -> Outcome:
    if (reason := read_only_reason(mountpoint, run.device)) is not None:
        return refused(run, reason)
    prefix = config.archive_prefix
    local = local_archives(config)
    run.unrecorded = unrecorded(config, local)
    record = ledger.load(config.agent.state_dir, run.uuid) if run.uuid else None
    now = datetime.now(UTC)
    with StickFolder(mountpoint, config.usb.directory, prefix) as folder:
        files = folder.scan()
        recorded = (record.copies, record.archives) if record else ((), ())
        if folder.remove_partials(leftovers(files, local, recorded[1], prefix)):
            files = folder.scan()
        run.audit = folder.audit(files, local, *recorded, now, cancel)
        run.free_bytes = folder.free_bytes()
        plan = _plan(config, local, run, now, cancel, _sizes(files, run.audit.replace))
        if isinstance(plan, Refusal):
            return refused(run, plan.reason)
        run.planned = len(plan.copy)
        run.future = plan.future
        run.broken, run.uncopied = plan.broken, plan.uncopied
        if accepted is not None:
            accepted(plan)
        _carry_out(config, folder, plan, run, cancel, progress)
        run.free_bytes = folder.free_bytes()
    return finished(run, config, have_local=bool(local))


def _sizes(files: dict[str, int], names: tuple[str, ...]) -> int:
    return sum(files[n] for n in names)


def _plan(
    config: Config,
    local: list[LocalArchive],
    run: Run,
    now: datetime,
    cancel: threading.Event,
    reclaim: int,
) -> SyncPlan | Refusal:
    """The plan, with every archive it copies first checked against its own sidecar.

    A local archive that fails its sidecar is a host problem: it is not copied (the stick
    keeps its older copies in its place), and the sync fails naming it. Checking before
    the copy, not after, is what lets the plan keep those older copies. `reclaim`: bytes
    the corrupt copies of ours free when `_carry_out` removes them.
    """
    assert run.audit is not None and run.free_bytes is not None
    names = {a.name for a in local}
    exclude = {f.name for f in run.audit.foreign if f.why == "differs" and f.name in names}
    exclude.update(run.unrecorded)
    checked: set[str] = set()
    recorded = recorded_sha256(config)
    while True:
        plan = plan_sync(
            local,
            run.audit.present,
            run.free_bytes + reclaim,
            config.usb.keep,
            config.archive_prefix,
            now,
            exclude,
        )
        if isinstance(plan, Refusal):
            return plan
        unchecked = [a for a in plan.copy if a.name not in checked]
        if not unchecked:
            return plan
        for archive in unchecked:
            checked.add(archive.name)
            path = config.archive.destination / archive.name
            digest = local_sha256(path, cancel)
            if digest != archive.sha256:
                log.error("%s does not match its sidecar; not copied", path)
                run.corrupt_local.append(CorruptLocal(path, digest, archive.sha256))
                exclude.add(archive.name)
            elif digest != recorded.get(archive.name, digest):
                log.error("%s is not what its run wrote (sha256 differs); not copied", path)
                bad = CorruptLocal(path, digest, recorded[archive.name], by_record=True)
                run.corrupt_local.append(bad)
                exclude.add(archive.name)


def _carry_out(
    config: Config,
    folder: StickFolder,
    plan: SyncPlan,
    run: Run,
    cancel: threading.Event,
    progress: ProgressCallback | None,
) -> None:
    """Copy in the plan's order (newest chain first, each full before its levels); prune
    only after all copies verified, unless space forces earlier.

    Corrupt copies of ours go first, unless the local archive meant to replace them failed
    its own check: then both are damaged and the stick's copy may still hold readable data.
    """
    assert run.audit is not None
    bad = {c.path.name for c in run.corrupt_local}
    for name in run.audit.replace:
        if name not in bad:
            folder.remove(name)
            run.removed_corrupt.append(name)
    sizes = {f.name: f.size for f in run.audit.present}
    waiting = [(name, sizes[name]) for name in plan.prune]
    for index, archive in enumerate(plan.copy, 1):
        for name in space_to_free(folder.free_bytes(), archive.size, waiting):
            _prune(folder, name, run, waiting)
        log.info("copying %s (%s) to %s", archive.name, human(archive.size), run.stick)
        on_chunk = _reporter(progress, index, plan, archive.name, run.copied_bytes)
        folder.copy_in(config.archive.destination / archive.name, archive, cancel, on_chunk)
        run.copied.append(StickFile(archive.name, archive.size, archive.sha256))
        run.copied_bytes += archive.size
    for name, _ in list(waiting):
        _prune(folder, name, run, waiting)


def _reporter(
    progress: ProgressCallback | None, index: int, plan: SyncPlan, name: str, base: int
) -> Callable[[int], None]:
    """Turn the copier's per-file byte count into whole-sync Progress."""

    def on_chunk(done: int) -> None:
        if progress is None:
            return
        try:
            progress(Progress(index, len(plan.copy), name, base + done, plan.bytes_to_copy))
        except Exception:  # a broken progress display must not break the backup
            log.exception("progress callback failed")

    return on_chunk


def _prune(folder: StickFolder, name: str, run: Run, waiting: list[tuple[str, int]]) -> None:
    folder.remove(name)
    run.pruned.append(name)
    waiting[:] = [w for w in waiting if w[0] != name]


# --- which stick is mounted where --------------------------------------------------------


def facts_for_mount(mountpoint: Path, entry: MountEntry) -> Partition:
    """Label, GPT name, UUID, type and bus of the device mounted at `mountpoint`."""
    major, minor = entry.devnum
    extra = {"ID_FS_TYPE": entry.fstype, "MAJOR": str(major), "MINOR": str(minor)}
    from usbagent import udev  # deferred: pyudev is only needed here and in the agent

    return udev.facts_for_device(entry.source, extra, {entry.devnum: (str(mountpoint),)})


def _facts_if_known(mountpoint: Path) -> Partition | None:
    """Facts for naming the stick in messages; a failure to find them must not stop a sync."""
    try:
        return facts_at(mountpoint)
    except (OSError, ValueError) as exc:
        log.warning("cannot identify the device mounted at %s: %s", mountpoint, exc)
        return None


def facts_at(mountpoint: Path) -> Partition | None:
    """Facts of the filesystem mounted exactly at `mountpoint`, or None if nothing is."""
    entry = mounts.mount_at(mountpoint, mounts.read())
    return facts_for_mount(mountpoint, entry) if entry else None
