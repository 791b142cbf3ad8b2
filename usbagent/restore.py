"""`usbagent restore ARCHIVE --identity KEY --to DIR [MEMBER...]`: safe extraction.

An archive is treated as untrusted input: a stolen or tampered file must not be able to
write, link or touch anything outside DIR. Each member is checked on its own
(usbagent.tarsafety: absolute names, `..`, devices and fifos, links that could point outside)
and then created by usbagent.extract, which never follows a symlink, never overwrites what
this restore did not create and creates symlinks last. Python's tarfile only parses the
stream; it extracts nothing.

ARCHIVE is a restore point: its chain (usbagent.chainfind: the full, then the increments of
levels 1..N beside it) is applied in order, each folder's dumpdir removing and renaming what
a later night changed (usbagent.incremental). An incomplete chain is refused before anything
is written; an archive that breaks off mid-way stops the chain there.

Every member that can be restored is; each one that cannot is listed with its reason and the
exit status is 1, so one odd member neither hides the others nor passes unnoticed. Ownership
is not restored (files belong to whoever runs restore) and modes lose setuid/setgid/sticky
and group/other write bits; `age -d -i KEY F | zstd -d | tar -x` restores an archive you
trust verbatim.

MEMBER names are paths as stored (`data/docs/a.txt` for `/data/docs/a.txt`; a leading '/'
is accepted); a folder selects everything under it, as it is at the restore point.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from usbagent import chainfind, dumpdir, incremental
from usbagent.config import Config
from usbagent.decrypt import members, open_tar
from usbagent.errors import UsbagentError
from usbagent.extract import Extractor
from usbagent.folderwalk import Refused
from usbagent.incremental import Scope
from usbagent.recipients import Identity, load_identities
from usbagent.tarsafety import DUMPDIR, Entry, classify, split
from usbagent.units import human_bytes

MAX_LISTED = 50  # failed members printed one by one; the rest are counted


def normalise(wanted: str) -> str:
    """A MEMBER argument as tar stores names: no leading '/' or './', no trailing '/'."""
    name = wanted.strip("/")
    while name.startswith("./"):
        name = name[2:]
    return name


def match(name: str, wanted: tuple[str, ...]) -> str | None:
    """The requested name that selects member `name` (itself or a folder above it)."""
    name = normalise(name)
    for w in wanted:
        if name == w or name.startswith(w + "/") or w == "":
            return w
    return None


@dataclass
class Result:
    """What a restore did: counts, the first failures (name, reason), and a broken stream."""

    selected: int = 0
    restored: int = 0
    size: int = 0
    failed: int = 0
    listed: list[tuple[str, str]] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    stream_error: str | None = None
    chain: tuple[Path, ...] = ()

    def fail(self, name: str, reason: str) -> None:
        self.failed += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append((name, reason))


def _open_target(target: Path) -> int:
    try:
        target.mkdir(parents=True, exist_ok=True)
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsbagentError(
            f"cannot use {target} as the target folder: {exc.strerror}; "
            "give --to a folder you can write to"
        ) from None


def _found(result: Result, name: str, wanted: tuple[str, ...]) -> None:
    hit = match(name, wanted) if wanted else None
    if hit is not None:
        result.found.add(hit)


def _dumpdir(data: IO[bytes] | None) -> dumpdir.Dumpdir | str:
    return dumpdir.parse(data.read() if data is not None else b"")


Scopes = tuple[incremental.Scope, incremental.Scope]  # what is selected before, and now


def _extract(
    result: Result,
    extractor: Extractor,
    archive: Path,
    identities: list[Identity],
    wanted: tuple[str, ...],
    scopes: Scopes,
) -> None:
    """Stream the archive through `extractor`; a per-member problem is recorded, not raised.

    A folder's dumpdir (incremental archives) is applied after the folder is there; with
    MEMBER arguments, also that of a folder above a selected path (not itself restored).
    """
    before, now = scopes
    with open_tar(archive, identities) as tar:
        for member in members(tar):
            parts = split(member.name)
            chosen = now.selects(parts)
            if chosen:
                _found(result, member.name, wanted)
                result.selected += 1
            elif not (member.type == DUMPDIR and before.touches(parts)):
                continue
            entry = classify(member)
            if isinstance(entry, str):
                result.fail(member.name, entry)
                continue
            listed = _dumpdir(tar.extractfile(member)) if entry.dumpdir else None
            if isinstance(listed, str):
                result.fail(member.name, listed)
                continue
            data = tar.extractfile(member) if entry.kind == "file" else None
            try:
                made_now = extractor.add(entry, data) if chosen else False
            except Refused as exc:
                result.fail(member.name, exc.reason)
                continue
            except OSError as exc:
                result.fail(member.name, exc.strerror or str(exc))
                continue
            if made_now:
                result.restored += 1
                result.size += entry.size
            if listed is not None:
                applied = incremental.apply(extractor, entry.parts, listed, before, archive.name)
                for name, reason in applied:
                    result.fail(name, reason)


def _dumpdirs(archive: Path, identities: list[Identity]) -> list[dumpdir.Dumpdir]:
    """The archive's dumpdirs (what restore refuses is left out here and reported later)."""
    found: list[dumpdir.Dumpdir] = []
    with open_tar(archive, identities) as tar:
        for member in members(tar):
            if member.type == DUMPDIR:
                parsed = _dumpdir(tar.extractfile(member))
                if not isinstance(parsed, str):
                    found.append(parsed)
    return found


def scopes(
    chain: tuple[Path, ...], identities: list[Identity], wanted: tuple[str, ...]
) -> list[Scopes]:
    """Per archive of the chain, what MEMBER selects by the names before it and after it.

    Without MEMBER everything is selected. With it, a first pass reads the increments'
    dumpdirs, so that a path a later night renamed into the selection is restored from the
    earlier archives by its earlier name (incremental.earlier).
    """
    last = Scope(tuple(split(w) for w in wanted))
    if not wanted or len(chain) == 1:
        return [(last, last)] * len(chain)
    out: list[Scopes] = []
    after = last
    for archive in reversed(chain[1:]):
        before = incremental.earlier(after, _dumpdirs(archive, identities))
        out.append((before, after))
        after = before
    out.append((after, after))
    return out[::-1]


def _shown(entry: Entry) -> str:
    return "/".join(entry.parts)


def restore(archive: Path, identity: Path, target: Path, wanted: tuple[str, ...]) -> Result:
    """Extract the restore point `archive` (its chain, in order) into `target`; returns what
    was restored and what failed. Raises UsbagentError only when nothing can start (an
    incomplete chain, a bad key file, an unusable target): then nothing is written."""
    chain = chainfind.members_of(archive)
    identities = load_identities(identity)
    selected = scopes(chain, identities, wanted)
    root = _open_target(target)
    result = Result(chain=chain)
    extractor = Extractor(root)
    try:
        for member, (before, now) in zip(chain, selected, strict=True):
            try:
                _extract(result, extractor, member, identities, wanted, (before, now))
            except UsbagentError as exc:
                result.stream_error = f"{member.name}: {exc}"
            _links(result, extractor)
            if wanted:
                incremental.prune(extractor, (), now, before)
            if result.stream_error:
                break  # a later increment would apply to a state that is not there
        for entry, reason in extractor.finish():
            result.fail(_shown(entry), reason)
            result.restored -= 1  # counted when created, but it did not come out right
        result.found = {w for w in result.found if _there(extractor, w)}
    finally:
        os.close(root)
    return result


def _there(extractor: Extractor, wanted: str) -> bool:
    """Is the MEMBER argument `wanted` in the target at the end (not deleted by then)?"""
    try:
        return not wanted or extractor.owned(split(wanted)) is not None
    except (Refused, OSError):
        return False


def _links(result: Result, extractor: Extractor) -> None:
    made, failed = extractor.end_archive()
    result.restored += len(made)
    for entry, reason in failed:
        result.fail(_shown(entry), reason)


def report(result: Result, archive: Path, target: Path, wanted: tuple[str, ...]) -> int:
    """Print the outcome (stdout: what was restored; stderr: each failure) and the exit status."""
    applied = ""
    if len(result.chain) > 1:
        full, increments = result.chain[0].name, len(result.chain) - 1
        applied = f" (its chain: the full {full}, then {increments} increments)"
    print(
        f"restored {result.restored} members ({human_bytes(result.size)}) "
        f"from {archive.name}{applied} into {target}"
    )
    for name, reason in result.listed:
        print(f"usbagent restore: not restored {name!r}: {reason}", file=sys.stderr)
    if result.failed > len(result.listed):
        more = result.failed - len(result.listed)
        print(f"usbagent restore: ... and {more} more members not restored", file=sys.stderr)
    missing = [w for w in wanted if w not in result.found]
    for name in missing:
        where = (
            "the archive" if len(result.chain) < 2 else "the archive's chain, or deleted by then"
        )
        print(f"usbagent restore: {name!r} is not in {where}", file=sys.stderr)
    if result.stream_error:
        print(
            f"usbagent restore: the archive could not be read to its end: {result.stream_error}"
            "; members after that point are missing"
            + ("" if len(result.chain) < 2 else ", and no later archive of the chain was applied"),
            file=sys.stderr,
        )
    if result.failed:
        print(
            f"usbagent restore: {result.failed} of {result.selected} members not restored",
            file=sys.stderr,
        )
    return 1 if result.failed or missing or result.stream_error else 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the file being written is removed (not left behind
    as a temporary); a second signal is ignored so that the cleanup can finish."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(config: Config | None, args: Any) -> int:
    archive, target = Path(args.archive), Path(args.target)
    if not archive.is_file():
        raise UsbagentError(f"archive {archive} does not exist")
    wanted = tuple(dict.fromkeys(normalise(m) for m in args.members))
    with _sigterm_interrupts():
        result = restore(archive, Path(args.identity), target, wanted)
    return report(result, archive, target, wanted)
