"""The chain of an archive file, found beside it in its folder: what `restore` applies and
`verify` reads, and the words for a chain that cannot be restored.

Which archives a restore point needs is decided by usbagent.chains from the names alone;
this module lists the folder and says what is missing, as far as the name is known.
"""

from __future__ import annotations

from pathlib import Path

from usbagent import chains, naming
from usbagent.errors import UsbagentError


def point_of(archive: Path) -> tuple[chains.RestorePoint, list[naming.ArchiveName]] | None:
    """The restore point of `archive` and the archives of its prefix beside it (None: the
    file's name is no archive name, e.g. renamed by hand: it stands on its own)."""
    name = naming.parse(archive.name)
    if name is None:
        return None
    try:
        beside = [p.name for p in archive.parent.iterdir() if p.is_file()]
    except OSError as exc:
        raise UsbagentError(f"cannot list {archive.parent}: {exc.strerror}") from None
    present = [n for n in map(naming.parse, beside) if n is not None and n.prefix == name.prefix]
    return chains.restore_point(name, present), present


def members_of(archive: Path) -> tuple[Path, ...]:
    """The archives restoring `archive` applies, in order (`archive` alone when its name is
    no archive name); UsbagentError when its chain is incomplete."""
    found = point_of(archive)
    if found is None:
        return (archive,)
    point, present = found
    if not point.complete:
        raise UsbagentError(
            f"cannot restore {archive.name}: its chain in {archive.parent} is incomplete: "
            f"{problems(point, present)}; nothing was restored"
        )
    return tuple(archive.parent / f for f in point.filenames)


def problems(point: chains.RestorePoint, present: list[naming.ArchiveName]) -> str:
    """What is wrong with an incomplete point's chain, each level named, and the fix."""
    said = [
        f"level {level} ({chains.expected_name(point, level)}) is missing"
        for level in point.missing
    ]
    for level in point.ambiguous:
        found = sorted(
            a.filename for a in present if a.chain == point.archive.chain and a.level == level
        )
        said.append(f"level {level} is there {len(found)} times ({', '.join(found)})")
    fix = (
        "put the missing archives back beside it (from a stick or another copy)"
        if point.missing
        else "move the archive that is not part of this chain away"
    )
    return f"{'; '.join(said)}; {fix}"
