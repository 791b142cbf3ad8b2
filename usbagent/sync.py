"""Stick sync: audit the copies on a mounted stick, copy + verify what is missing, prune.

`sync_mounted` is the blocking core; the agent runs it in a worker thread after mounting,
and `usbagent sync MOUNTPOINT` runs it on a stick somebody mounted by hand. Either way it
records the outcome (state dir + per-stick ledger) itself, so a recognised stick that did
not end up with verified copies is always recorded as an error, never silent.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from usbagent import ledger, mounts, naming, retention, state
from usbagent.config import Config
from usbagent.copier import (
    CHUNK,
    Cancelled,
    DeviceFailed,
    StickFolder,
    StickRefused,
    VerifyFailed,
)
from usbagent.copier import parse_sidecar as _parse_sidecar
from usbagent.devices import Partition, describe, label_matches, refusal_reason
from usbagent.errors import UsbagentError
from usbagent.events import Outcome
from usbagent.mounts import MountEntry
from usbagent.plan import (
    Audit,
    Foreign,
    LocalArchive,
    Refusal,
    StickFile,
    SyncPlan,
    leftovers,
    plan_sync,
    space_to_free,
)
from usbagent.units import human_bytes

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


# --- the local side -----------------------------------------------------------------------


def local_archives(config: Config) -> list[LocalArchive]:
    """Complete archives in archive.destination (those with a valid sidecar), newest first.

    Read through pyfilesystem2's OSFS: the destination is ours (root-owned, no symlink
    games), so its path-based API fits here, unlike on the stick (see usbagent.copier).
    An archive whose sidecar is missing (the nightly job is still writing it) is skipped.
    A destination that exists but cannot be read raises OSError naming it.
    """
    dest = config.archive.destination
    if not dest.exists():
        return []
    fs_errors, osfs = _import_fs()
    found: list[tuple[naming.ArchiveName, LocalArchive]] = []
    try:
        with osfs.OSFS(str(dest)) as home:
            infos = {i.name: i for i in home.scandir("/", namespaces=["details"]) if i.is_file}
            for name, info in infos.items():
                parsed = naming.parse(name, config.archive_prefix)
                if parsed is None or name + naming.SIDECAR not in infos:
                    continue
                try:
                    digest = _parse_sidecar(home.readtext(name + naming.SIDECAR)[:4096])
                except fs_errors.ResourceNotFound:
                    continue  # retention removed it meanwhile
                if digest is None:
                    log.warning("%s: sidecar is not in sha256sum format, not copied", name)
                    continue
                archive = LocalArchive(name=name, size=int(info.size), sha256=digest)
                found.append((parsed, archive))
    except (fs_errors.FSError, fs_errors.CreateFailed) as exc:
        raise OSError(errno.EACCES, f"cannot list archives: {exc}", str(dest)) from exc
    return [archive for _, archive in sorted(found, reverse=True)]


def _import_fs() -> tuple[Any, Any]:
    """pyfilesystem2, imported on first use with its pkg_resources deprecation hidden."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fs.errors
        import fs.osfs
    return fs.errors, fs.osfs


def sizes_to_copy(config: Config) -> list[int]:
    """Sizes of the archives a sync would copy at most (for `refusal_reason` before mount)."""
    return [a.size for a in local_archives(config)[: config.usb.keep]]


@dataclass(frozen=True)
class CorruptLocal:
    """A local archive whose content does not match its own sidecar: a host problem."""

    path: Path
    sha256: str  # what the file holds
    expected: str  # what its sidecar says, or (by_record) what its run recorded
    by_record: bool = False  # the sidecar matches the file, but the run wrote another


def unrecorded(config: Config, local: list[LocalArchive]) -> tuple[str, ...]:
    """Local archives no completed `usbagent archive` run recorded (where the state dir's
    history reaches): a file the host did not make is never copied as if it were a backup."""
    try:
        history = state.events(config.agent.state_dir)
        journal = {n: r.recorded for n, r in state.archives(config.agent.state_dir).items()}
        record = retention.record_from(history, journal)
    except OSError as exc:
        log.warning("cannot read the history in %s: %s", config.agent.state_dir, exc)
        return ()
    if record is None:
        return ()
    parsed = ((a.name, naming.parse(a.name)) for a in local)
    return tuple(n for n, p in parsed if p is not None and not record.knows(p))


def recorded_sha256(config: Config) -> dict[str, str]:
    """Archive name -> the sha256 its run recorded. A sidecar can be rewritten to match a
    damaged file (`sha256sum F > F.sha256`); the state dir's record cannot be, by accident."""
    try:
        history = state.events(config.agent.state_dir)
        known = state.archives(config.agent.state_dir, history)
    except OSError as exc:
        log.warning("cannot read the history in %s: %s", config.agent.state_dir, exc)
        return {}
    return {name: r.sha256 for name, r in known.items()}


def local_sha256(path: Path, cancel: threading.Event) -> str:
    """sha256 of a local archive as it is now, read once (the copy then mostly hits cache)."""
    h = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while block := f.read(CHUNK):
            if cancel.is_set():
                raise Cancelled
            h.update(block)
    return h.hexdigest()


def precheck(config: Config, partition: Partition) -> str | None:
    """The pre-mount refusal reason for a labelled partition, or None: the agent's one call."""
    return refusal_reason(partition, config.usb, sizes_to_copy(config))


# --- the sync -----------------------------------------------------------------------------


@dataclass
class _Run:
    """What a sync has done so far, so a failure summary can say it truthfully."""

    stick: str
    label: str
    uuid: str
    fstype: str = ""
    device: str = ""
    started: float = field(default_factory=time.monotonic)
    copied: list[StickFile] = field(default_factory=list)
    copied_bytes: int = 0
    pruned: list[str] = field(default_factory=list)
    removed_corrupt: list[str] = field(default_factory=list)  # corrupt copies of ours deleted
    audit: Audit | None = None
    planned: int = 0
    free_bytes: int | None = None
    future: tuple[str, ...] = ()  # local archives not copied: dated in the future
    unrecorded: tuple[str, ...] = ()  # local archives not copied: no run recorded making them
    corrupt_local: list[CorruptLocal] = field(default_factory=list)

    def holds(self) -> tuple[StickFile, ...] | None:
        """Our verified copies on the stick now, newest first (None: never looked)."""
        if self.audit is None:
            return None
        gone = set(self.pruned)
        kept = [f for f in self.audit.present if f.name not in gone]
        return tuple(sorted({*kept, *self.copied}, key=lambda f: f.name, reverse=True))

    def details(self) -> dict[str, Any]:
        audit = self.audit
        holds = self.holds()
        return {
            "label": self.label,
            "uuid": self.uuid,
            "fstype": self.fstype,
            "copied": [f.name for f in self.copied],
            "bytes": self.copied_bytes,
            "verified": len(holds or ()),  # the verified copies the stick holds now
            "replaced": list(self.removed_corrupt),
            "corrupt": list(audit.corrupt) if audit else [],
            "foreign": [{"name": f.name, "why": f.why} for f in audit.foreign] if audit else [],
            "future": list(self.future),
            "unrecorded": list(self.unrecorded),
            "corrupt_local": [str(c.path) for c in self.corrupt_local],
            "pruned": list(self.pruned),
            "free_bytes": self.free_bytes,
            "archives": [f.name for f in holds or ()],
            "duration": round(time.monotonic() - self.started, 3),
        }


def human(n: int | None) -> str:
    return "? bytes" if n is None else human_bytes(n)


def sync_mounted(
    config: Config,
    mountpoint: Path,
    partition: Partition | None,
    cancel: threading.Event,
    progress: ProgressCallback | None = None,
    accepted: AcceptedCallback | None = None,
    present: Callable[[], bool] | None = None,
) -> Outcome:
    """Bring the stick mounted at `mountpoint` up to date; record and return the outcome.

    Blocking (the agent calls it in a worker thread). Returns kind "sync" (ok or not) or
    "refused"; it never raises for stick or I/O problems. When `cancel` is set it stops
    within about a second, leaving no `.partial` behind when the stick still allows it.
    `accepted` is called (in this thread) once every rule passed and copying starts, so a
    stick that ends up refused is never first announced as being backed up.
    `present` says whether the stick's device still exists: an I/O failure of a stick that
    has gone is reported as the stick having been removed.
    """
    partition = partition or _facts_if_known(mountpoint)
    run = _Run(
        stick=describe(partition) if partition else f"the stick at {mountpoint}",
        label=(partition.label or partition.part_name) if partition else "",
        uuid=partition.uuid if partition else "",
        fstype=partition.fstype if partition else "",
        device=partition.device if partition else "",
    )
    try:
        outcome = _sync(config, mountpoint, run, cancel, progress, accepted)
    except StickRefused as exc:
        outcome = _refused(run, str(exc))
    except Cancelled:
        outcome = _failed(
            run, "stopped before it finished (interrupted, or usbagent is shutting down)"
        )
    except DeviceFailed as exc:
        outcome = _pulled(run) if _removed(present) else _failed(run, str(exc))
    except VerifyFailed as exc:
        outcome = _failed(run, f"verification failed, the bad copy was deleted: {exc}")
    except OSError as exc:
        on_stick = not str(exc.filename or "").startswith(str(config.archive.destination))
        if on_stick and exc.errno in STICK_GONE_ERRNOS and _removed(present):
            outcome = _pulled(run)
        else:
            outcome = _failed(run, _cause(exc, config.archive.destination))
    except Exception as exc:  # a bug must still end as a recorded failure, never silence
        log.exception("stick sync failed unexpectedly")
        outcome = _failed(run, f"internal error: {exc!r} (please report it)")
    _record(config, run, outcome)
    return outcome


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
    run: _Run,
    cancel: threading.Event,
    progress: ProgressCallback | None,
    accepted: AcceptedCallback | None,
) -> Outcome:
    if (reason := read_only_reason(mountpoint, run.device)) is not None:
        return _refused(run, reason)
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
            return _refused(run, plan.reason)
        run.planned = len(plan.copy)
        run.future = plan.future
        if accepted is not None:
            accepted(plan)
        _carry_out(config, folder, plan, run, cancel, progress)
        run.free_bytes = folder.free_bytes()
    return _finished(run, config, have_local=bool(local))


def _sizes(files: dict[str, int], names: tuple[str, ...]) -> int:
    return sum(files[n] for n in names)


def _plan(
    config: Config,
    local: list[LocalArchive],
    run: _Run,
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
    run: _Run,
    cancel: threading.Event,
    progress: ProgressCallback | None,
) -> None:
    """Copy newest first; prune only after all copies verified, unless space forces earlier.

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


def _prune(folder: StickFolder, name: str, run: _Run, waiting: list[tuple[str, int]]) -> None:
    folder.remove(name)
    run.pruned.append(name)
    waiting[:] = [w for w in waiting if w[0] != name]


# --- outcomes -----------------------------------------------------------------------------


_FOREIGN = {
    "future": "dated in the future",
    "unrecorded": "usbagent has no record of writing it",
    "differs": "not the archive usbagent made under that name",
    "unverifiable": "no checksum to verify it against",
    "sidecar": "a checksum file without its archive",
    "partial": "a temporary name for no archive of this host",
}


def _foreign_note(foreign: tuple[Foreign, ...]) -> str:
    shown = ", ".join(f"{f.name} ({_FOREIGN[f.why]})" for f in foreign[:3])
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    return (
        f"left alone {len(foreign)} file(s) named like archives that are not copies usbagent "
        f"wrote: {shown}{more}; they do not count as backups (move them off the stick)"
    )


def _problem(run: _Run, config: Config, have_local: bool) -> str | None:
    """Why a sync that ran to its end still failed, or None."""
    audit = run.audit
    assert audit is not None
    if audit.corrupt:
        return (
            f"copies on the stick are corrupt and no longer exist here to replace them: "
            f"{', '.join(audit.corrupt)} (the stick may be failing: replace it, or delete "
            "those files to accept the loss)"
        )
    if run.corrupt_local:
        bad = run.corrupt_local[0]
        more = f" (and {len(run.corrupt_local) - 1} more)" if len(run.corrupt_local) > 1 else ""
        says = "the run that wrote it recorded" if bad.by_record else "its sidecar says"
        return (
            f"the local archive {bad.path}{more} is corrupt on this host: its sha256 is "
            f"{bad.sha256}, {says} {bad.expected}; nothing was copied for it. The "
            f"stick is not at fault: check the disk holding {config.archive.destination}, "
            "then delete that archive and its .sha256 and run `usbagent archive`"
        )
    if blocking := [f.name for f in audit.foreign if f.why == "differs"]:
        return (
            f"{', '.join(blocking)} on the stick is not the archive usbagent made under that "
            "name (its content differs and usbagent never wrote it), so it was left alone and "
            "the real archive not copied there; move that file off the stick and sync again"
        )
    if not have_local:
        return f"no archives in {config.archive.destination} to copy (has `usbagent archive` run?)"
    if not run.holds():
        skipped = ", ".join(dict.fromkeys((*run.future, *run.unrecorded)))
        return (
            f"the stick holds no verified copy: no archive in {config.archive.destination} "
            f"could be copied ({skipped or 'see the log'}: dated in the future or not made "
            "by a recorded `usbagent archive` run)"
        )
    return None


def _finished(run: _Run, config: Config, have_local: bool) -> Outcome:
    audit = run.audit
    assert audit is not None
    if (problem := _problem(run, config, have_local)) is not None:
        return _failed(run, problem)
    verified = len(run.holds() or ())
    tail = f"{human(run.free_bytes)} free; safe to remove after unmount"
    notes = []
    if run.removed_corrupt:
        notes.append(f"replaced {len(run.removed_corrupt)} corrupt copy(ies)")
    if run.pruned:
        notes.append(f"pruned {len(run.pruned)} old")
    if run.future:
        notes.append(
            f"not copied, dated in the future: {', '.join(run.future)} (is the clock right?)"
        )
    if unrecorded := [n for n in run.unrecorded if n not in run.future]:  # each named once
        notes.append(
            f"not copied, no `usbagent archive` run recorded making them: "
            f"{', '.join(unrecorded)} (delete them from {config.archive.destination} if "
            "they are not yours)"
        )
    if audit.foreign:
        notes.append(_foreign_note(audit.foreign))
    extra = f" ({'; '.join(notes)})" if notes else ""
    if run.copied:
        summary = (
            f"copied {len(run.copied)} archive(s) ({human(run.copied_bytes)}) to {run.stick}, "
            f"verified{extra}; {tail}"
        )
    else:
        summary = f"{run.stick} is up to date, {verified} archive(s) verified{extra}; {tail}"
    return Outcome(kind="sync", ok=True, summary=summary, details=run.details())


def _failed(run: _Run, cause: str) -> Outcome:
    if len(run.copied) < run.planned:
        done = f"; {len(run.copied)} of {run.planned} archive(s) copied before that"
    elif run.copied:
        done = f"; the {len(run.copied)} new archive(s) were copied and verified"
    else:
        done = ""
    return Outcome(
        kind="sync",
        ok=False,
        summary=f"sync to {run.stick} failed: {cause}{done}",
        details={**run.details(), "error": cause},
    )


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


def _pulled(run: _Run) -> Outcome:
    done = f"{len(run.copied)} of {run.planned} archive(s) copied before that"
    return Outcome(
        kind="sync",
        ok=False,
        summary=f"{run.stick} plugged in but not backed up: {REMOVED} ({done}); plug it in "
        'again and wait for "safe to remove"',
        details={**run.details(), "error": REMOVED},
    )


def _refused(run: _Run, reason: str) -> Outcome:
    return Outcome(
        kind="refused",
        ok=False,
        summary=f"{run.stick} refused: {reason}",
        details={**run.details(), "reason": reason},
    )


def refused_outcome(partition: Partition, reason: str) -> Outcome:
    """A pre-mount refusal as an Outcome (for the agent and `usbagent sync`)."""
    label = partition.label or partition.part_name
    run = _Run(describe(partition), label, partition.uuid, partition.fstype)
    return _refused(run, reason)


def record_refusal(config: Config, partition: Partition, reason: str) -> Outcome:
    """Record a pre-mount refusal in the state dir and the stick's ledger; return it."""
    outcome = refused_outcome(partition, reason)
    ledger_update(config, partition.uuid, outcome.details["label"], outcome, None)
    state.record(config.agent, outcome)
    return outcome


def _record(config: Config, run: _Run, outcome: Outcome) -> None:
    ledger_update(config, run.uuid, run.label, outcome, run.holds())
    state.record(config.agent, outcome)


def ledger_update(
    config: Config,
    uuid: str,
    label: str,
    outcome: Outcome,
    holds: tuple[StickFile, ...] | None,
) -> None:
    """Write the outcome into the stick's ledger (sticks without a UUID have none).

    `holds`: our verified copies on the stick now (None: not looked at, keep the record's).
    Only these are named in the ledger: a file usbagent did not write and verify never is.
    """
    if not uuid:
        return
    d = outcome.details
    names = tuple(f.name for f in holds) if holds is not None else None
    fstype = d.get("fstype", "")
    state_dir = config.agent.state_dir
    if outcome.ok:
        newest = names[0] if names else ""
        ledger.record_ok(
            state_dir, uuid, label, names or (), d["free_bytes"], newest, fstype, holds or ()
        )
    else:
        ledger.record_error(
            state_dir, uuid, label, outcome.summary, names, d.get("free_bytes"), fstype, holds
        )


# How a pulled stick fails the copy; with its device gone it is reported as removed.
STICK_GONE_ERRNOS = frozenset(
    {errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ENOTCONN, errno.ENOENT}
)
REMOVED = "the stick was removed during the copy"
REMOVED_WAIT_SECONDS = 5.0

_CAUSES = {
    errno.ENOSPC: "the stick is full (no space left on device)",
    errno.EDQUOT: "the stick is full (disk quota exceeded)",
    # A mount found read-only is refused before anything is written (read_only_reason), so
    # EROFS here means it turned read-only during the run.
    errno.EROFS: "the stick's filesystem turned read-only during the sync (the kernel does "
    "that after an error on the stick; check the stick with fsck, or replace it)",
    errno.EIO: "I/O error on the stick (it is failing or was pulled out)",
    errno.ENODEV: "the stick disappeared (pulled out?)",
    errno.ENXIO: "the stick disappeared (pulled out?)",
    errno.ESTALE: "the stick disappeared (pulled out?)",
    errno.ENOTCONN: "the stick disappeared (pulled out?)",
}


def _cause(exc: OSError, destination: Path) -> str:
    """One line for a person: what broke, in their terms, and where."""
    where = str(exc.filename or "")
    if where.startswith(str(destination)):
        return f"cannot read the local archives at {where}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return "the stick disappeared or its folder was removed during the copy"
    base = _CAUSES.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{base} [{where}]" if where and exc.errno not in _CAUSES else base


# --- `usbagent sync MOUNTPOINT` -----------------------------------------------------------


def _find_mount(raw: str) -> tuple[Path, MountEntry]:
    path = Path(os.path.realpath(raw))
    entry = mounts.mount_at(path, mounts.read())
    if not path.is_dir():
        raise UsbagentError(f"{raw} is not a folder; pass the mount point of the stick")
    if not os.path.ismount(path) or entry is None:
        raise UsbagentError(
            f"{raw} is not a mount point; mount the stick there first (copying to a plain "
            "folder would fill this disk instead of the stick)"
        )
    return path, entry


def facts_for_mount(mountpoint: Path, entry: MountEntry) -> Partition:
    """Label, GPT name, UUID, type and bus of the device mounted at `mountpoint`."""
    major, minor = entry.devnum
    extra = {"ID_FS_TYPE": entry.fstype, "MAJOR": str(major), "MINOR": str(minor)}
    return facts_for_device(entry.source, extra, {entry.devnum: (str(mountpoint),)})


def facts_for_device(
    device: str,
    defaults: dict[str, str] | None = None,
    mounts: dict[tuple[int, int], tuple[str, ...]] | None = None,
) -> Partition:
    """A partition's facts from the udev database (what the agent's udev backend sees),
    completed by blkid when udev has no filesystem facts (udevd not running)."""
    from usbagent import udev  # deferred: pyudev is only needed here and in the agent

    props, size, sys_path, drive = _udev_props(device)
    if not props.get("ID_FS_TYPE"):
        props.update(_blkid(device))
    for key, value in {"DEVNAME": device, **(defaults or {})}.items():
        props.setdefault(key, value)
    return udev.facts_from_udev(sys_path or device, props, size, drive, mounts or {})


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


def _udev_props(device: str) -> tuple[dict[str, str], int, str, str]:
    import pyudev

    try:
        dev = pyudev.Devices.from_device_file(pyudev.Context(), device)
    except (pyudev.DeviceNotFoundError, ValueError, OSError):
        return {}, 0, "", ""
    props = {k: str(dev.properties[k]) for k in dev.properties}
    try:
        size = int(dev.attributes.asint("size")) * 512
    except (KeyError, ValueError):
        size = 0
    parent = dev.find_parent("block", "disk")
    if any(a.subsystem == "usb" for a in dev.ancestors) and not props.get("ID_BUS"):
        props["ID_BUS"] = "usb"
    return props, size, str(dev.sys_path), str(parent.sys_path) if parent is not None else ""


def _blkid(device: str) -> dict[str, str]:
    try:
        out = subprocess.run(
            ["blkid", "-p", "-o", "export", device],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    keys = {"LABEL": "ID_FS_LABEL", "UUID": "ID_FS_UUID", "TYPE": "ID_FS_TYPE",
            "PART_ENTRY_NAME": "ID_PART_ENTRY_NAME"}  # fmt: skip
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {keys[k]: v for k, v in pairs if k in keys}


def run(config: Config, args: argparse.Namespace) -> int:
    """`usbagent sync MOUNTPOINT`: the agent's sync, on a stick mounted by someone else."""
    mountpoint, entry = _find_mount(args.mountpoint)
    partition = facts_for_mount(mountpoint, entry)
    if not label_matches(partition, config.usb):
        shown = " / ".join(x for x in (partition.label, partition.part_name) if x) or "no label"
        raise UsbagentError(
            f"{mountpoint} ({partition.device}, {shown}) is not a backup stick: its label or "
            f"GPT partition name must be one of usb.labels ({', '.join(config.usb.labels)})"
        )
    reason = precheck(config, partition)
    if reason is not None:
        outcome = record_refusal(config, partition, reason)
        print(f"usbagent sync: {outcome.summary}", file=sys.stderr)
        return 1
    cancel = threading.Event()
    with _cancel_on_signals(cancel):
        outcome = sync_mounted(config, mountpoint, partition, cancel, _print_progress())
    if outcome.ok:
        print(outcome.summary)
        return 0
    print(f"usbagent sync: {outcome.summary}", file=sys.stderr)
    return 1


@contextmanager
def _cancel_on_signals(cancel: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT stop the copy cleanly (partials removed) instead of killing mid-write."""

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _print_progress() -> ProgressCallback | None:
    """A one-line progress display on a terminal; nothing when run by a script or a unit."""
    if not sys.stderr.isatty():
        return None

    def show(p: Progress) -> None:
        pct = 100 * p.done_bytes // max(p.total_bytes, 1)
        print(f"\r[{p.index}/{p.total}] {p.name} {pct}%", end="", file=sys.stderr, flush=True)
        if p.done_bytes == p.total_bytes:
            print(file=sys.stderr)

    return show
