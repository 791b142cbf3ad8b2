"""Checks before the nightly archive does any work, each failing with one line to act on.

The incident usbagent exists for was a job that "ran" every night for months while its
tool, key file and target were gone. So before reading a byte of data the archive proves:
the recipients parse, every source exists, the destination is writable and has room, no
source lies in the destination and no two overlap (usbagent.selection), GNU tar is there,
and encryption actually round-trips (a throwaway key encrypts and decrypts a
probe, and the configured recipients are accepted by the encryptor).

Free space is an estimate (`space_needed`): 1.25 x the newest full archive of ours when
there is one (data grows; any night may have to be a full, see usbagent.levels), else half
the apparent size of the sources (first run; typical data compresses at least 2:1, and
incompressible data fails cleanly at ENOSPC, partial removed).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyrage
import zstandard

from usbagent import naming, selection
from usbagent.config import Config
from usbagent.errors import UsbagentError
from usbagent.fsutil import special_kind, unwritable
from usbagent.recipients import Recipient, load_recipients
from usbagent.units import human_bytes

GROWTH = 1.25  # room for the next archive, relative to the newest full one
FIRST_RUN_FRACTION = 0.5  # room relative to the sources' size when there is no archive yet
MIN_FREE = 1024 * 1024
TAR_MIN_VERSION = (1, 28)  # --sort=name


@dataclass(frozen=True)
class Ready:
    """What preflight established and the archive job uses."""

    recipients: tuple[Recipient, ...]
    sources: tuple[selection.Source, ...]  # resolved tonight
    destination: Path  # resolved
    tar: str  # path of GNU tar
    stale_partials: tuple[Path, ...]  # our leftovers from a killed run, removed under the lock


def space_needed(newest_full: int | None, source_bytes: int) -> int:
    """Bytes the destination must have free for the next archive (pure, see module doc)."""
    if newest_full is not None:
        return max(MIN_FREE, int(newest_full * GROWTH))
    return max(MIN_FREE, int(source_bytes * FIRST_RUN_FRACTION))


def check(config: Config, walk_sources: bool = True) -> Ready:
    """Run every check in order; the first failure raises UsbagentError.

    `status` asks with walk_sources=False: it runs every minute and must not walk every
    source to estimate a first archive's size (it checks the MIN_FREE floor instead).
    """
    recipients = load_recipients(config.archive.recipients_file)
    check_sources(config.archive.sources)
    destination = config.archive.destination
    check_destination(destination)
    sources, real_destination = check_layout(config)
    tar = find_gnu_tar()
    self_test(recipients)
    partials = stale_partials(destination, config.archive_prefix)
    check_space(config, partials, walk_sources)
    return Ready(
        recipients=tuple(recipients),
        sources=sources,
        destination=real_destination,
        tar=tar,
        stale_partials=tuple(partials),
    )


def check_sources(sources: tuple[Path, ...]) -> None:
    for source in sources:
        if source.is_symlink() and not source.exists():
            looping = _loops(source)
            raise UsbagentError(
                f"source {source} is a symlink to {source.readlink()}, which "
                f"{'is a loop of symlinks' if looping else 'does not exist'} (fix the link, "
                "or archive.sources)"
            )
        if not source.exists():
            raise UsbagentError(f"source {source} does not exist (fix archive.sources)")
        if (kind := special_kind(source)) is not None:
            raise UsbagentError(
                f"source {source} is {kind}: tar stores it as a node, not what it holds "
                "(name files or folders in archive.sources; for a partition, the folder it is "
                "mounted on)"
            )
        if not os.access(source, os.R_OK | (os.X_OK if source.is_dir() else 0)):
            raise UsbagentError(f"source {source} is not readable by this user")


def _loops(path: Path) -> bool:
    try:
        path.stat()
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_layout(config: Config) -> tuple[tuple[selection.Source, ...], Path]:
    """The sources and destination resolved, refusing what selection.problems names."""
    sources = selection.resolve(config.archive.sources)
    destination = config.archive.destination.resolve(strict=True)
    found = selection.problems(sources, destination)
    if found:
        raise UsbagentError(f"{found[0].message} ({found[0].fix})")
    return sources, destination


def check_destination(destination: Path) -> None:
    if not destination.is_dir():
        what = "is not a folder" if destination.exists() else "does not exist"
        raise UsbagentError(
            f"destination {destination} {what} (create it, or fix archive.destination)"
        )
    problem = unwritable(destination)
    if problem is not None:
        raise UsbagentError(
            f"destination {destination} {problem.reason}; {problem.fix}, or move "
            "archive.destination"
        )


def find_gnu_tar() -> str:
    """Path of GNU tar >= 1.28; the archive format and options depend on it."""
    tar = shutil.which("tar")
    if tar is None:
        raise UsbagentError("GNU tar is not installed (apt-get install tar)")
    try:
        out = subprocess.run(
            [tar, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsbagentError(f"{tar} --version failed: {exc}") from None
    match = re.search(r"GNU tar\)? (\d+)\.(\d+)", out)
    if not match:
        raise UsbagentError(f"{tar} is not GNU tar (install the Debian package tar)")
    if (int(match[1]), int(match[2])) < TAR_MIN_VERSION:
        raise UsbagentError(f"{tar} is GNU tar {match[1]}.{match[2]}; 1.28 or newer is needed")
    return tar


def self_test(recipients: list[Recipient]) -> None:
    """Encrypt + decrypt a probe with a throwaway key; encrypt to the real recipients."""
    probe = os.urandom(64)
    try:
        throwaway = pyrage.x25519.Identity.generate()
        sealed = pyrage.encrypt(zstandard.compress(probe), [throwaway.to_public()])
        if zstandard.decompress(pyrage.decrypt(sealed, [throwaway])) != probe:
            raise UsbagentError("encryption self-test failed: the probe did not round-trip")
        pyrage.encrypt(probe, recipients)
    except (pyrage.EncryptError, pyrage.DecryptError, zstandard.ZstdError) as exc:
        raise UsbagentError(f"encryption self-test failed: {exc}") from None


def stale_partials(destination: Path, prefix: str) -> list[Path]:
    """`.partial` files of our own archives and sidecars, left by a killed run."""
    out = []
    for entry in os.scandir(destination):
        base = entry.name.removesuffix(naming.PARTIAL).removesuffix(naming.SIDECAR)
        if naming.is_partial(entry.name) and naming.parse(base, prefix) is not None:
            out.append(Path(entry.path))
    return sorted(out)


def newest_full_size(destination: Path, prefix: str) -> int | None:
    """The size of the newest full archive of ours (an increment says nothing of a full)."""
    parsed = (naming.parse(e.name, prefix) for e in destination.iterdir())
    names = [n for n in parsed if n is not None and n.is_full]
    for name in sorted(names, reverse=True):
        try:
            return (destination / name.filename).stat().st_size
        except FileNotFoundError:
            continue
    return None


def apparent_size(sources: tuple[Path, ...]) -> int:
    """Sum of regular file sizes under the sources (symlinks not followed)."""
    total = 0
    pending = [str(s) for s in sources if s.is_dir()]
    total += sum(s.stat().st_size for s in sources if s.is_file())
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:  # unreadable: tar will say so, if it matters
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


def check_space(config: Config, partials: list[Path], walk_sources: bool = True) -> None:
    destination = config.archive.destination
    newest = newest_full_size(destination, config.archive_prefix)
    walk = newest is None and walk_sources
    sources = apparent_size(config.archive.sources) if walk else 0
    need = space_needed(newest, sources)
    st = os.statvfs(destination)
    free = st.f_bavail * st.f_frsize + sum(p.stat().st_size for p in partials)
    if free < need:
        if need == MIN_FREE:  # the rule asked for less (or status did not walk the sources)
            basis = "the least usbagent starts an archive with"
        elif newest is not None:
            basis = "1.25 x the newest full archive"
        else:
            basis = "half the sources' size"
        raise UsbagentError(
            f"destination {destination} has {human_bytes(free)} free, the next archive needs about "
            f"{human_bytes(need)} ({basis}); free some space or move archive.destination"
        )
