"""What a stick sync says: its run record, its outcome's wording, errno in words.

The one place the words about a stick are made: `sync` calls `finished`/`failed`/`refused`
with what happened (a `Run`), and whoever ends the stick's handling adds how it may be taken
out (`told`), with the same fact as data (`SyncDetails.removal`) for every reader.
"""

from __future__ import annotations

import dataclasses
import errno
import time
from dataclasses import dataclass, field
from pathlib import Path

from usbagent import chains, naming
from usbagent.chains import RestorePoint
from usbagent.config import Config
from usbagent.details import ForeignDetails, PointDetails, SyncDetails
from usbagent.devices import Partition, describe
from usbagent.events import Outcome, Removal
from usbagent.journal import StickReport
from usbagent.plan import (
    Audit,
    Foreign,
    StickFile,
)
from usbagent.synclocal import CorruptLocal
from usbagent.units import human_bytes


@dataclass
class Run:
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
    # restore points no one can complete: copies on the stick (kept, not counted), or only
    # here (not copied); see `plan.SyncPlan`
    broken: tuple[RestorePoint, ...] = ()
    uncopied: tuple[RestorePoint, ...] = ()

    def holds(self) -> tuple[StickFile, ...] | None:
        """Our verified copies on the stick now, newest first (None: never looked)."""
        if self.audit is None:
            return None
        gone = set(self.pruned)
        kept = [f for f in self.audit.present if f.name not in gone]
        return tuple(sorted({*kept, *self.copied}, key=lambda f: f.name, reverse=True))

    def restorable(self) -> list[RestorePoint]:
        """The restore points the stick can restore completely now, oldest first."""
        return [p for p in chains.points_of(f.name for f in self.holds() or ()) if p.complete]

    def details(self) -> SyncDetails:
        """What the run did so far, as the outcome's details (`.to_json()` to store them)."""
        audit = self.audit
        holds = self.holds()
        restorable = self.restorable()
        return SyncDetails(
            label=self.label,
            uuid=self.uuid,
            fstype=self.fstype,
            copied=tuple(f.name for f in self.copied),
            bytes=self.copied_bytes,
            verified=len(holds or ()),  # the verified copies the stick holds now
            replaced=tuple(self.removed_corrupt),
            corrupt=tuple(audit.corrupt) if audit else (),
            foreign=tuple(ForeignDetails(f.name, f.why) for f in audit.foreign) if audit else (),
            future=self.future,
            unrecorded=self.unrecorded,
            corrupt_local=tuple(str(c.path) for c in self.corrupt_local),
            pruned=tuple(self.pruned),
            free_bytes=self.free_bytes,
            archives=tuple(f.name for f in holds or ()),
            restore_points=len(restorable),
            restore_point=restorable[-1].archive.filename if restorable else "",
            broken=tuple(_point_details(p) for p in self.broken),
            uncopied=tuple(_point_details(p) for p in self.uncopied),
            duration=round(time.monotonic() - self.started, 3),
        )


def _point_details(point: RestorePoint) -> PointDetails:
    return PointDetails(point.archive.filename, point.missing, point.ambiguous)


def lacks(point: RestorePoint) -> str:
    """What a broken restore point lacks, in words: the level(s) of which chain."""
    full = naming.make(point.archive.prefix, point.archive.full).filename
    gaps = [f"lacks {'the full' if n == 0 else f'level {n}'}" for n in point.missing]
    gaps += [f"has two archives for level {n}" for n in point.ambiguous]
    return f"{point.archive.filename} (chain of {full}: {', '.join(gaps)})"


def _lacking(points: tuple[RestorePoint, ...]) -> str:
    more = f" and {len(points) - 3} more" if len(points) > 3 else ""
    return "; ".join(lacks(p) for p in points[:3]) + more


def human(n: int | None) -> str:
    return "? bytes" if n is None else human_bytes(n)


def told(
    report: StickReport,
    removal: Removal = "after-unmount",
    where: Path | None = None,
    repaired: bool = False,
) -> StickReport:
    """The report with what the person is told about taking the stick out (a successful
    sync only): the one place that wording is made, with the same fact as data."""
    outcome = report.outcome
    if outcome.kind != "sync" or not outcome.ok:
        return report
    tail = {
        "after-unmount": "safe to remove after unmount",
        "unmounted": "unmounted, safe to remove",
        "powered-off": "unmounted and powered off, safe to remove",
        "left-mounted": f"left mounted at {where} as it was found (usbagent did not mount "
        "it): unmount it before removing the stick",
    }[removal]
    details = dataclasses.replace(
        SyncDetails.of(outcome),
        removal=removal,
        unmounted=removal in ("unmounted", "powered-off"),
        powered_off=removal == "powered-off",
        repaired=repaired,
    )
    summary = f"{outcome.summary}; {REPAIRED}" if repaired else outcome.summary
    said = dataclasses.replace(outcome, summary=f"{summary}; {tail}", details=details.to_json())
    return dataclasses.replace(report, outcome=said)


def report(run: Run, outcome: Outcome) -> StickReport:
    return StickReport(
        outcome=outcome,
        uuid=run.uuid,
        label=run.label,
        fstype=run.fstype,
        free_bytes=run.free_bytes,
        holds=run.holds(),
        copies_ok=outcome.ok,
    )


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


def _problem(run: Run, config: Config, have_local: bool) -> str | None:
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
    if run.broken:
        return (
            f"the stick holds {len(run.broken)} restore point(s) that cannot be restored, and "
            f"this host no longer has what they lack: {_lacking(run.broken)}; their copies "
            "stay on the stick but do not count as backups (delete them from the stick to "
            f"accept the loss; they also go once {config.usb.keep} newer restore point(s) "
            "are there)"
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


def finished(run: Run, config: Config, have_local: bool) -> Outcome:
    audit = run.audit
    assert audit is not None
    if (problem := _problem(run, config, have_local)) is not None:
        return failed(run, problem)
    verified = len(run.holds() or ())
    tail = f"{human(run.free_bytes)} free"  # how to take it out: see `told`
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
    if run.uncopied:
        notes.append(
            f"not copied, their chain is incomplete here and on the stick: "
            f"{_lacking(run.uncopied)} (see `usbagent status`)"
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
        points = len(run.restorable())
        summary = (
            f"{run.stick} is up to date, {verified} archive(s) verified "
            f"({points} restore point(s)){extra}; {tail}"
        )
    return Outcome(kind="sync", ok=True, summary=summary, details=run.details().to_json())


def failed(run: Run, cause: str) -> Outcome:
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
        details=dataclasses.replace(run.details(), error=cause).to_json(),
    )


REMOVED = "the stick was removed during the copy"
# A FAT stick whose check failed before mount and was repaired (the agent's backend check).
REPAIRED = (
    "it was not removed safely last time: its filesystem failed the check and was repaired "
    "before use"
)


def pulled(run: Run) -> Outcome:
    done = f"{len(run.copied)} of {run.planned} archive(s) copied before that"
    return Outcome(
        kind="sync",
        ok=False,
        summary=f"{run.stick} plugged in but not backed up: {REMOVED} ({done}); plug it in "
        'again and wait for "safe to remove"',
        details=dataclasses.replace(run.details(), error=REMOVED).to_json(),
    )


def refused(run: Run, reason: str) -> Outcome:
    return Outcome(
        kind="refused",
        ok=False,
        summary=f"{run.stick} refused: {reason}",
        details=dataclasses.replace(run.details(), reason=reason).to_json(),
    )


def refused_outcome(partition: Partition, reason: str) -> Outcome:
    """A pre-mount refusal as an Outcome (for the agent and `usbagent sync`)."""
    label = partition.label or partition.part_name
    run = Run(describe(partition), label, partition.uuid, partition.fstype)
    return refused(run, reason)


def refusal(partition: Partition, reason: str) -> StickReport:
    """A pre-mount refusal, for the journal (the stick's ledger records it too)."""
    outcome = refused_outcome(partition, reason)
    label = partition.label or partition.part_name
    return StickReport(outcome, partition.uuid, label, partition.fstype)


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


def cause(exc: OSError, destination: Path) -> str:
    """One line for a person: what broke, in their terms, and where."""
    where = str(exc.filename or "")
    if where.startswith(str(destination)):
        return f"cannot read the local archives at {where}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return "the stick disappeared or its folder was removed during the copy"
    base = _CAUSES.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{base} [{where}]" if where and exc.errno not in _CAUSES else base
