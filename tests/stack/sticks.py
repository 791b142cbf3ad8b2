"""Loop-device "USB sticks": GPT images with real filesystems, plugged in and pulled out.

Plugging in = `losetup -f --show` + `partx -a` (this kernel does not scan partition tables
by itself), then waiting for the partition nodes and `udevadm settle`, so udev has run its
rules (ID_FS_*) for every partition before `plug()` returns. Pulling out = unmount whatever
is mounted from the stick, `partx -d`, `losetup -d`.

Every image is named `usbagent-stack-<session>-<n>.img` and lives under a `Workspace` (a temp
dir named `usbagent-stack-<session>`), so a leaked loop device can always be traced to the
session that made it, and to a dead session whose leftovers may be cleaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.stack.daemons import StackError, wait_for

PREFIX = "usbagent-stack-"
MIB = 1024 * 1024
NODE_TIMEOUT = 15.0

# parted only accepts fs-type hints it knows; the hint merely sets the GPT type GUID.
_PARTED_HINT = {"ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs", "vfat": "fat32"}
# Smallest filesystem each mkfs accepts (xfsprogs 6: 300 MB; btrfs: 114294784 bytes).
_MIN_MB = {"xfs": 300, "btrfs": 128}


@dataclass(frozen=True)
class PartSpec:
    """One partition of a stick.

    `fstype` "none" leaves the partition unformatted. `size_mb` is raised to the minimum the
    filesystem's mkfs accepts (xfs 300, btrfs 128). vfat labels are stored upper-case.
    """

    fstype: str = "ext4"  # ext4 xfs btrfs vfat exfat, or "none" (no mkfs)
    label: str | None = None  # filesystem label; None = no label
    size_mb: int = 64
    name: str | None = None  # GPT partition name; default "part<N>" (1-based)

    @property
    def effective_size_mb(self) -> int:
        return max(self.size_mb, _MIN_MB.get(self.fstype, 1))


def _run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure raises StackError with the tool's own message."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def settle() -> None:
    """Wait until udev has processed every event the kernel has sent so far."""
    _run("udevadm", "settle", "--timeout=60", timeout=70)


def _mkfs_argv(spec: PartSpec, target: str) -> list[str]:
    label = spec.label
    match spec.fstype:
        case "ext4":
            return ["mkfs.ext4", "-F", "-q", *(["-L", label] if label else []), target]
        case "xfs":
            return ["mkfs.xfs", "-f", "-q", *(["-L", label] if label else []), target]
        case "btrfs":
            return ["mkfs.btrfs", "-f", "-q", *(["-L", label] if label else []), target]
        case "vfat":
            # Stored upper-case as Windows and most tools write FAT labels (mkfs.fat 4.2
            # would keep the case, with a warning), so tests see what real sticks carry.
            label = label.upper() if label else None
            return ["mkfs.vfat", "-F", "32", *(["-n", label] if label else []), target]
        case "exfat":
            return ["mkfs.exfat", *(["-L", label] if label else []), target]
    raise ValueError(f"PartSpec.fstype {spec.fstype!r}: use ext4, xfs, btrfs, vfat, exfat or none")


def build_image(image: Path, parts: tuple[PartSpec, ...]) -> None:
    """Write a sparse GPT image with `parts`, each formatted, without attaching anything.

    Each filesystem is made in a sparse scratch file and copied (holes kept) into place,
    so making a stick causes no udev/UDisks2 events: the first events are the test's plug().
    """
    if not parts:
        raise ValueError("a stick needs at least one PartSpec")
    for spec in parts:
        if spec.fstype != "none":
            _mkfs_argv(spec, "-")  # validates the fstype before any work
    total_mb = 1 + sum(p.effective_size_mb for p in parts) + 1  # GPT header + backup GPT
    with image.open("wb") as f:
        f.truncate(total_mb * MIB)
    argv = ["parted", "-s", str(image), "unit", "MiB", "mklabel", "gpt"]
    start = 1
    layout = []
    for n, spec in enumerate(parts, 1):
        end = start + spec.effective_size_mb
        hint = _PARTED_HINT.get(spec.fstype, "ext4")
        argv += ["mkpart", spec.name or f"part{n}", hint, str(start), str(end)]
        layout.append((spec, start, end))
        start = end
    _run(*argv)
    for spec, start, end in layout:
        if spec.fstype == "none":
            continue
        scratch = image.with_suffix(".part")
        try:
            with scratch.open("wb") as f:
                f.truncate((end - start) * MIB)
            _run(*_mkfs_argv(spec, str(scratch)))
            _run(
                "dd", f"if={scratch}", f"of={image}", "bs=1M", f"seek={start}",
                "conv=sparse,notrunc", "status=none",
            )  # fmt: skip
        finally:
            scratch.unlink(missing_ok=True)


def _dev_numbers(devices: list[str]) -> set[str]:
    """'major:minor' of each existing device node, as /proc/self/mountinfo shows them."""
    numbers = set()
    for dev in devices:
        with contextlib.suppress(FileNotFoundError):
            rdev = Path(dev).stat().st_rdev
            numbers.add(f"{os.major(rdev)}:{os.minor(rdev)}")
    return numbers


def mountpoints_of(devices: list[str]) -> list[Path]:
    """Every mountpoint (in any place: ours, UDisks2's /media/...) of these device nodes.

    Matched by device number or by mount source: btrfs shows an anonymous device number.
    """
    numbers = _dev_numbers(devices)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        source = _unescape(fields[fields.index("-") + 2])
        if fields[2] in numbers or source in devices:
            found.append(Path(_unescape(fields[4])))
    return found


def mounts_under(root: Path) -> list[Path]:
    """Every mountpoint at or below `root`."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = Path(_unescape(line.split()[4]))
        if mp == root or root in mp.parents:
            found.append(mp)
    return found


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def unmount(mountpoint: Path) -> None:
    """Unmount, or raise naming the busy mountpoint.

    Never lazily: a lazily unmounted filesystem with a file still open keeps its loop device
    attached where nobody sees it; a loud error names the file-holding test instead.
    """
    _run("umount", str(mountpoint))


def unmount_devices(devices: list[str]) -> None:
    """Unmount everything mounted from `devices`, deepest mountpoint first."""
    for mp in sorted(mountpoints_of(devices), key=lambda p: len(p.parts), reverse=True):
        unmount(mp)


def remove_tree(path: Path) -> None:
    """rm -rf `path`, unless something is still mounted below it: then the files there are
    a filesystem's contents (a stick's), not our temp files, and stay."""
    if not mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


def backing_file(loop: str) -> str | None:
    """The image behind `loop` as the kernel names it, None when nothing is attached."""
    try:
        return Path(f"/sys/block/{Path(loop).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def detach(loop: str, image: str) -> None:
    """Unmount, remove partitions and detach `loop`; wait until the kernel let it go.

    Only while `image` is still what backs it: loop numbers are reused within milliseconds,
    and the number may already be someone else's stick.
    """
    current = backing_file(loop)
    if current is None or current.removesuffix(" (deleted)") != image.removesuffix(" (deleted)"):
        return
    name = Path(loop).name
    parts = [str(Path("/dev") / p.name) for p in Path(f"/sys/block/{name}").glob(f"{name}p*")]
    unmount_devices([loop, *parts])

    def partitions_gone() -> bool:
        # udev probing after the unmount can hold a partition busy for a moment: retry.
        subprocess.run(["partx", "-d", loop], capture_output=True, check=False)
        return not any(Path(p).exists() for p in parts)

    wait_for(partitions_gone, NODE_TIMEOUT, f"partitions of {loop} to be removed")
    subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
    # losetup -d on a device still open (udev/UDisks2 probing) only sets autoclear.
    backing = Path(f"/sys/block/{name}/loop/backing_file")
    wait_for(lambda: not backing.exists(), NODE_TIMEOUT, f"{loop} to be detached")
    wait_for(lambda: not any(Path(p).exists() for p in parts), NODE_TIMEOUT, f"{loop}p* to go")


def loops() -> list[tuple[str, str]]:
    """(loop device, backing file) of every attached loop device on the machine."""
    r = _run("losetup", "-J", "-l", "-O", "NAME,BACK-FILE")
    if not r.stdout.strip():
        return []
    return [(d["name"], d["back-file"] or "") for d in json.loads(r.stdout)["loopdevices"]]


class Stick:
    """An image file that can be plugged in (attached) and pulled out (detached) repeatedly."""

    def __init__(self, image: Path, parts: tuple[PartSpec, ...], workdir: Path) -> None:
        self.image = image
        self.parts = parts
        self.workdir = workdir  # our mountpoints are made here
        self.loop: str | None = None
        self.partitions: list[str] = []

    def __repr__(self) -> str:
        return f"Stick({self.image.name}, loop={self.loop})"

    def plug(self) -> None:
        """Attach; returns once every partition node exists and udev has processed it."""
        if self.loop is not None:
            raise StackError(f"{self} is already plugged in")
        # No -P (partscan): this kernel has no GPT support, and on a partscan loop device
        # every close-after-write (losetup's own, udev's) re-reads the table and drops the
        # partitions partx added. Without it they stay until `partx -d`.
        loop = _run("losetup", "-f", "--show", str(self.image)).stdout.strip()
        self.loop = loop
        partitions = [f"{loop}p{n}" for n in range(1, len(self.parts) + 1)]
        try:
            # A killed run can leave stale partitions on a detached loop: drop them first.
            subprocess.run(["partx", "-d", loop], capture_output=True, check=False)
            subprocess.run(["partx", "-a", loop], capture_output=True, check=False)
            wait_for(
                lambda: all(Path(p).exists() for p in partitions),
                NODE_TIMEOUT,
                f"partition nodes of {loop}",
            )
            self.partitions = partitions
            settle()
        except BaseException:
            self.unplug()
            raise

    def unplug(self) -> None:
        """Unmount everything mounted from the stick (anywhere), then detach it."""
        if self.loop is None:
            return
        detach(self.loop, str(self.image))
        self.loop = None
        self.partitions = []
        settle()

    def device(self, index: int = 0) -> str:
        """The node of partition `index` (0-based) while plugged in."""
        if self.loop is None:
            raise StackError(f"{self} is not plugged in")
        return self.partitions[index]

    def mount(self, index: int = 0, options: str = "nosuid,nodev,noexec") -> Path:
        """mount(8) partition `index` on a fresh directory; unplug() unmounts it."""
        target = Path(tempfile.mkdtemp(prefix="mnt-", dir=self.workdir))
        _run("mount", "-o", options, self.device(index), str(target))
        return target


@dataclass
class Workspace:
    """A session's temp root: images and mountpoints live here, owned by one live process."""

    root: Path
    count: int = 0
    sticks: list[Stick] = field(default_factory=list)

    @classmethod
    def create(cls, parent: Path | None = None) -> Workspace:
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        (root / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        return cls(root=root)

    @property
    def session(self) -> str:
        return self.root.name.removeprefix(PREFIX)

    def make_stick(
        self, *parts: PartSpec, plug: bool = True, image_dir: Path | None = None
    ) -> Stick:
        """Build an image (in `image_dir`, default a fresh dir here) and optionally plug it."""
        self.count += 1
        workdir = Path(tempfile.mkdtemp(prefix=f"stick{self.count}-", dir=self.root))
        image = (image_dir or workdir) / f"{PREFIX}{self.session}-{self.count}.img"
        try:
            build_image(image, parts or (PartSpec(),))
        except BaseException:
            image.unlink(missing_ok=True)
            remove_tree(workdir)
            raise
        stick = Stick(image, parts or (PartSpec(),), workdir)
        self.sticks.append(stick)
        if plug:
            try:
                stick.plug()
            except BaseException:
                self.remove_sticks([stick])
                raise
        return stick

    def remove_sticks(self, sticks: list[Stick]) -> None:
        """Unplug and delete `sticks` (all attempted; the first error is raised at the end)."""
        error: BaseException | None = None
        for stick in sticks:
            try:
                stick.unplug()
                stick.image.unlink(missing_ok=True)
                remove_tree(stick.workdir)
            except (StackError, OSError, subprocess.SubprocessError) as e:
                error = error or e
            self.sticks.remove(stick)
        if error is not None:
            raise error

    def owns(self, backing_file: str) -> bool:
        """True if a loop's backing file is one of this session's images (wherever it lies)."""
        return Path(backing_file.removesuffix(" (deleted)")).name.startswith(
            f"{PREFIX}{self.session}-"
        )

    def leaks(self) -> list[str]:
        """This session's loop devices and mounts still present (should be none between tests)."""
        found = [f"loop {dev} <- {back}" for dev, back in loops() if self.owns(back)]
        found += [f"mount {mp}" for mp in mounts_under(self.root)]
        return found

    def close(self) -> list[str]:
        """Remove everything this session left; returns what had leaked, and what could not
        be removed, to be reported (everything is attempted)."""
        leaked = self.leaks()
        with contextlib.suppress(StackError, OSError):
            self.remove_sticks(list(self.sticks))
        for dev, back in loops():
            if self.owns(back):
                try:
                    detach(dev, back)
                except StackError as e:
                    leaked.append(f"could not detach {dev}: {e}")
        for mp in sorted(mounts_under(self.root), key=lambda p: len(p.parts), reverse=True):
            try:
                unmount(mp)
            except StackError as e:
                leaked.append(f"could not unmount {mp}: {e}")
        remove_tree(self.root)
        return leaked


def clean_leftovers(parent: Path | None = None) -> list[str]:
    """Detach/unmount what killed sessions left behind; returns what was cleaned.

    Only touches (a) loop devices whose `usbagent-stack-` image no longer exists, and
    (b) workspaces whose owner process is dead, with their loops and mounts. A live
    session's (another developer's concurrent run) things are left alone. Everything is
    attempted; what could not be cleaned is raised at the end as one StackError.
    """
    parent = parent or Path(tempfile.gettempdir())
    cleaned: list[str] = []
    failed: list[str] = []
    dead_roots = [
        root
        for root in parent.glob(f"{PREFIX}*")
        if (root / "owner").is_file() and not _owner_alive(root / "owner")
    ]
    dead_images = tuple(f"{root.name}-" for root in dead_roots)  # wherever image_dir put them
    for dev, back in loops():
        path = Path(back.removesuffix(" (deleted)"))
        if not path.name.startswith(PREFIX):
            continue
        gone = back.endswith(" (deleted)") or not path.exists()
        if gone or path.name.startswith(dead_images):
            try:
                detach(dev, back)
                cleaned.append(f"loop {dev} <- {back}")
            except (StackError, OSError) as e:
                failed.append(f"loop {dev} <- {back}: {e}")
    for root in dead_roots:
        try:
            for mp in sorted(mounts_under(root), key=lambda p: len(p.parts), reverse=True):
                unmount(mp)
                cleaned.append(f"mount {mp}")
        except (StackError, OSError) as e:
            failed.append(f"mounts under {root}: {e}")
            continue
        remove_tree(root)
        cleaned.append(f"dir {root}")
    if failed:
        raise StackError(f"could not clean leftovers of killed runs: {failed}; cleaned: {cleaned}")
    return cleaned


def _owner_alive(owner: Path) -> bool:
    """Is the process that wrote `owner` (pid and start time) still running?"""
    try:
        pid, started = owner.read_text().split()
    except (OSError, ValueError):
        return True  # unreadable: not provably dead, leave it alone
    return _start_time(int(pid)) == started


def _start_time(pid: int) -> str | None:
    """Start time of `pid` in ticks since boot: with the pid, names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
