"""Chains of archives (a full, then increments) made by GNU tar itself, and the state of a
folder tree as a user would compare it (what is there, content, modes, times, links).

Each night is `tar --listed-incremental=SNAR --no-check-device --create | zstd | age -r`
run from the shell, level N made with a copy of the snapshot level N-1 left, exactly as
README's "Incremental archives" describes, and named with naming.make.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.integration.archive_helpers import PREFIX, new_identity
from tests.integration.tar_helpers import write_sidecar
from usbagent import naming

START = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
TAR = ["tar", "--format=gnu", "--sort=name", "--no-check-device"]

Tree = dict[str, tuple[object, ...]]


def tree(root: Path) -> Tree:
    """Every path under `root` (links not followed): type, mode, mtime (seconds, as tar
    keeps them), content hash or link target, and which paths share an inode."""
    out: Tree = {}
    inodes: dict[int, str] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = here / name
            st = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                detail: object = hashlib.sha256(path.read_bytes()).hexdigest()
                detail = (detail, inodes.setdefault(st.st_ino, key))  # first name of the inode
            elif stat.S_ISLNK(st.st_mode):
                detail = str(path.readlink())
            else:
                detail = None
            out[key] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), int(st.st_mtime), detail)
    return out


def differences(expected: Tree, actual: Tree) -> dict[str, tuple[object, object]]:
    return {
        k: (expected.get(k), actual.get(k))
        for k in sorted(expected.keys() | actual.keys())
        if expected.get(k) != actual.get(k)
    }


@dataclass
class Chains:
    """Archives of `root/src/data` in `folder`, one per night; `states[i]`: the tree then."""

    root: Path
    identity: Path = field(init=False)
    recipient: str = field(init=False)
    folder: Path = field(init=False)
    source: Path = field(init=False)
    archives: list[Path] = field(default_factory=list)
    states: list[Tree] = field(default_factory=list)
    snapshots: list[Path] = field(default_factory=list)
    full: datetime | None = None
    level: int = 0

    def __post_init__(self) -> None:
        self.identity = self.root / "id.txt"
        self.recipient = new_identity(self.identity)
        self.folder = self.root / "backups"
        self.folder.mkdir()
        self.source = self.root / "src" / "data"
        self.source.mkdir(parents=True)

    def night(self, full: bool = False, transform: str | None = None) -> Path:
        """Archive the source as it is now: a full, or the next level of the chain."""
        when = START + timedelta(days=len(self.archives))
        snar = self.root / f"night{len(self.archives)}.snar"
        if full or self.full is None:
            self.full, self.level = when, 0
            name = naming.make(PREFIX, when)
        else:
            self.level += 1
            shutil.copyfile(self.snapshots[-1], snar)
            name = naming.make(PREFIX, when, self.level, self.full)
        path = self.folder / name.filename
        extra = [f"--transform={transform}"] if transform else []
        cmd = [*TAR, f"--listed-incremental={snar}", *extra, "-C", str(self.source.parent)]
        pipeline = (
            f"{' '.join(cmd)} --create --file=- data | zstd -q -3 | "
            f"age -r {self.recipient} > {path}"
        )
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True)
        write_sidecar(path)
        self.archives.append(path)
        self.snapshots.append(snar)
        self.states.append(tree(self.source))
        return path


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_command() -> str:
    """README's standard-tools line for one member of a chain, as written there."""
    (line,) = [
        line.strip()
        for line in README.read_text().splitlines()
        if "| tar --listed-incremental=/dev/null -x" in line and "inc1" in line
    ]
    return line


def standard_restore(archives: list[Path], identity: Path, target: Path) -> None:
    """README's standard-tools restore of a chain: its line, for each member in order, run
    in the target folder (tar 1.34's `-C` breaks the swap of two folders)."""
    template = readme_command()
    example = template.split()[4]  # age -d -i key.txt /backups/NAME | ...
    target.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        command = template.replace("key.txt", str(identity)).replace(example, str(archive))
        subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, cwd=target)
