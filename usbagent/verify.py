"""`usbagent verify PATH... [--identity FILE]`: is each archive intact, and can it be read?

Without an identity: the archive's sha256 must match its `.sha256` sidecar (a missing or
malformed sidecar is a failure: an archive nobody can check is not a verified backup).
With an identity (`--identity`, else the configured one or its systemd credential), the
archive is also decrypted, decompressed and its tar stream read to the very end, which is
what a restore would need. A folder means every archive in it; a folder without archives
fails, so a wrong path never verifies "successfully" nothing.

Incremental archives are checked as restore points: each archive's chain (its full, then
levels 1..N, found beside it) must be complete, or the archive fails, naming the missing
level and its file name. Every member of the chains of the archives named is checked too
(sidecar; with an identity, read through), so `verify ARCHIVE` answers "can ARCHIVE be
restored?" and not only "is this one file intact?".
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usbagent import chainfind, credentials, dumpdir, naming
from usbagent.config import Config
from usbagent.decrypt import members, open_tar
from usbagent.errors import UsbagentError
from usbagent.fsutil import sha256_of
from usbagent.recipients import Identity, load_identities
from usbagent.tarsafety import DUMPDIR, classify
from usbagent.units import human_bytes

MAX_NAMED = 5  # refused members named in one verify line


@dataclass(frozen=True)
class Checked:
    path: Path
    problem: str | None  # None: intact
    detail: str = ""


def expand(paths: list[str]) -> tuple[list[Path], list[Checked]]:
    """Archives named by the arguments (folders expanded) and failures for bad arguments."""
    found: list[Path] = []
    bad: list[Checked] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if naming.parse(p.name) and p.is_file())
            if not inside:
                bad.append(Checked(path, "no archives (*.tar.zst.age) in this folder"))
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            bad.append(Checked(path, "no such file or folder"))
    return found, bad


def check_checksum(archive: Path) -> str | None:
    """None when the archive matches its sidecar, else the problem."""
    sidecar = archive.with_name(archive.name + naming.SIDECAR)
    try:
        expected = naming.parse_sidecar(sidecar.read_text(errors="replace"), archive.name)
    except FileNotFoundError:
        return f"sidecar {sidecar.name} is missing"
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return f"sidecar {sidecar.name} cannot be read: {exc.strerror}"
    try:
        actual = sha256_of(archive)
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if actual != expected:
        return f"checksum mismatch: sidecar says {expected[:16]}…, file has {actual[:16]}…"
    return None


def _refusal(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    """Why restore would refuse the member (its dumpdir included), or None."""
    entry = classify(member)
    if isinstance(entry, str):
        return entry
    if member.type != DUMPDIR:
        return None
    data = tar.extractfile(member)
    parsed = dumpdir.parse(data.read() if data is not None else b"")
    return parsed if isinstance(parsed, str) else None


def read_through(archive: Path, identities: list[Identity]) -> str:
    """Decrypt and read the whole tar stream; returns a summary, raises UsbagentError.

    Each member is also put through restore's own checks (usbagent.tarsafety): an archive
    that `usbagent restore` would not restore whole is not a verified backup.
    """
    count = size = refused = 0
    named: list[str] = []
    with open_tar(archive, identities) as tar:
        for member in members(tar):
            count += 1
            size += member.size if member.isreg() else 0
            reason = _refusal(tar, member)
            if reason is not None:
                refused += 1
                if len(named) < MAX_NAMED:
                    named.append(f"{member.name!r} ({reason})")
    if refused:
        more = ", ..." if refused > len(named) else ""
        raise UsbagentError(
            f"restore would refuse {refused} of its {count} members: {', '.join(named)}{more}"
        )
    return f"decrypted and read {count} members, {human_bytes(size)}"


def with_chains(archives: list[Path]) -> tuple[list[Path], list[Checked]]:
    """The archives and every member of their chains (each once, the named ones first), and
    a failure for each archive whose chain is incomplete."""
    found: dict[Path, None] = dict.fromkeys(archives)
    broken: list[Checked] = []
    for archive in archives:
        try:
            point = chainfind.point_of(archive)
        except UsbagentError as exc:
            broken.append(Checked(archive, str(exc)))
            continue
        if point is None:
            continue
        restore_point, present = point
        if not restore_point.complete:
            why = chainfind.problems(restore_point, present)
            broken.append(Checked(archive, f"cannot be restored, its chain is incomplete: {why}"))
        found.update(dict.fromkeys(archive.parent / f for f in restore_point.filenames))
    return list(found), broken


def check(archive: Path, identities: list[Identity] | None) -> Checked:
    problem = check_checksum(archive)
    if problem or identities is None:
        return Checked(archive, problem, "checksum ok" if not problem else "")
    try:
        detail = read_through(archive, identities)
    except UsbagentError as exc:
        return Checked(archive, f"checksum ok, but {exc}")
    return Checked(archive, None, f"checksum ok, {detail}")


def identity_file(config: Config | None, option: str | None) -> Path | None:
    """--identity wins; else the configured identity (or its systemd credential)."""
    if option:
        return Path(option)
    return credentials.identity_path(config) if config is not None else None


def run(config: Config | None, args: Any) -> int:
    key = identity_file(config, args.identity)
    identities = load_identities(key) if key is not None else None
    named, results = expand(args.paths)
    archives, broken = with_chains(named)
    results += broken + [check(a, identities) for a in archives]
    for r in results:
        if r.problem:
            print(f"FAILED  {r.path}: {r.problem}")
        else:
            print(f"OK      {r.path}: {r.detail}")
    failed = sum(1 for r in results if r.problem)
    print(f"{len(results)} checked, {failed} failed" + ("" if key else " (checksums only)"))
    return 1 if failed else 0
