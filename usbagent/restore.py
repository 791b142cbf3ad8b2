"""`usbagent restore ARCHIVE --identity KEY --to DIR [MEMBER...]`: safe extraction.

An archive is treated as untrusted input: a stolen or tampered file must not be able to
write, link or touch anything outside DIR. Each member is checked on its own
(usbagent.tarsafety: absolute names, `..`, devices and fifos, links that could point outside)
and then created by usbagent.extract, which never follows a symlink, never overwrites and
creates symlinks last. Python's tarfile only parses the stream; it extracts nothing.

Every member that can be restored is; each one that cannot is listed with its reason and the
exit status is 1, so one odd member neither hides the others nor passes unnoticed. Ownership
is not restored (files belong to whoever runs restore) and modes lose setuid/setgid/sticky
and group/other write bits; `age -d -i KEY F | zstd -d | tar -x` restores an archive you
trust verbatim.

MEMBER names are paths as stored (`data/docs/a.txt` for `/data/docs/a.txt`; a leading '/'
is accepted); a folder selects everything under it.
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
from typing import Any

from usbagent.config import Config
from usbagent.decrypt import members, open_tar
from usbagent.errors import UsbagentError
from usbagent.extract import Extractor, Refused
from usbagent.recipients import Identity, load_identities
from usbagent.tarsafety import Entry, classify
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


def _extract(
    result: Result,
    extractor: Extractor,
    archive: Path,
    identities: list[Identity],
    wanted: tuple[str, ...],
) -> None:
    """Stream the archive through `extractor`; a per-member problem is recorded, not raised."""
    with open_tar(archive, identities) as tar:
        for member in members(tar):
            if wanted:
                hit = match(member.name, wanted)
                if hit is None:
                    continue
                result.found.add(hit)
            result.selected += 1
            entry = classify(member)
            if isinstance(entry, str):
                result.fail(member.name, entry)
                continue
            data = tar.extractfile(member) if entry.kind == "file" else None
            try:
                made_now = extractor.add(entry, data)
            except Refused as exc:
                result.fail(member.name, exc.reason)
            except OSError as exc:
                result.fail(member.name, exc.strerror or str(exc))
            else:
                if made_now:
                    result.restored += 1
                    result.size += entry.size


def _shown(entry: Entry) -> str:
    return "/".join(entry.parts)


def restore(archive: Path, identity: Path, target: Path, wanted: tuple[str, ...]) -> Result:
    """Extract into `target`; returns what was restored and what failed. Raises UsbagentError
    only when nothing can start (bad key file, unusable target)."""
    identities = load_identities(identity)
    root = _open_target(target)
    result = Result()
    extractor = Extractor(root)
    try:
        try:
            _extract(result, extractor, archive, identities, wanted)
        except UsbagentError as exc:
            result.stream_error = str(exc)
        made, failed = extractor.finish()
    finally:
        os.close(root)
    result.restored += len(made)
    for entry, reason in failed:
        result.fail(_shown(entry), reason)
        if entry.kind == "dir":
            result.restored -= 1  # counted when created, but it did not come out right
    return result


def report(result: Result, archive: Path, target: Path, wanted: tuple[str, ...]) -> int:
    """Print the outcome (stdout: what was restored; stderr: each failure) and the exit status."""
    print(
        f"restored {result.restored} members ({human_bytes(result.size)}) "
        f"from {archive.name} into {target}"
    )
    for name, reason in result.listed:
        print(f"usbagent restore: not restored {name!r}: {reason}", file=sys.stderr)
    if result.failed > len(result.listed):
        more = result.failed - len(result.listed)
        print(f"usbagent restore: ... and {more} more members not restored", file=sys.stderr)
    missing = [w for w in wanted if w not in result.found]
    for name in missing:
        print(f"usbagent restore: {name!r} is not in the archive", file=sys.stderr)
    if result.stream_error:
        print(
            f"usbagent restore: the archive could not be read to its end: {result.stream_error}"
            "; members after that point are missing",
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
