"""The guest's base image: Debian 12 from the Debian package registry, built by mmdebstrap.

Cached outside the checkout under CACHE_ROOT/<key>, where the key is a hash of everything
that goes into the image (package list, mmdebstrap hooks, the harness's guest files): a
change to any of them builds a new image, an unchanged tree reuses the old one. A build goes
into a temporary name and is renamed into place only when complete, so a killed build never
leaves a half image under the final name. Tests never write to the base image: every boot
runs on a qcow2 overlay (see `driver`).

`python -m tests.vm.image` builds (or finds) the image and prints its directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

CACHE_ROOT = Path(os.environ.get("USBAGENT_VM_CACHE", "/var/cache/usbagent-vm"))
GUEST_DIR = Path(__file__).parent / "guest"
SUITE = "bookworm"
# The guest gets the packages from where this host's apt gets them: mmdebstrap pastes an
# existing sources file into the guest's apt sources (its content is one of the inputs).
HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
ROOT_SIZE = "6G"  # sparse; room for a few hundred MB of archives and a >4 GiB sparse one

# The package list, plus what the cases need: a desktop (Xvfb + dunst, dbus-monitor
# in dbus-bin) for real notifications, procps/psmisc for process checks.
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "udisks2",
    "dbus",
    "dbus-user-session",
    "dbus-bin",
    "libpam-systemd",
    "polkitd",
    "python3",
    "python3-venv",
    "linux-image-amd64",
    "e2fsprogs",
    "dosfstools",
    "exfatprogs",
    "age",
    "zstd",
    "xvfb",
    "dunst",
    "procps",
    "psmisc",
    "util-linux",
    "kmod",
]

# Run inside the new root (mmdebstrap --customize-hook, "$1" is the root directory).
CUSTOMIZE = [
    'echo usbagent-vm > "$1/etc/hostname"',
    'chroot "$1" useradd --create-home --uid 1000 --shell /bin/bash alice',
    'install -m 0755 {guest}/vm-agent.py "$1/usr/local/sbin/vm-agent"',
    'install -m 0644 {guest}/vm-agent.service "$1/etc/systemd/system/vm-agent.service"',
    'install -m 0644 {guest}/vm-desktop.service "$1/etc/systemd/system/vm-desktop.service"',
    'install -m 0644 {guest}/vm-desktop.pam "$1/etc/pam.d/vm-desktop"',
    'install -m 0755 {guest}/vm-desktop "$1/usr/local/bin/vm-desktop"',
    'chroot "$1" systemctl enable vm-agent.service',
    # Nothing runs these in a test, and each costs boot time under TCG.
    'chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer '
    "fstrim.timer man-db.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer",
    'printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\\n" > "$1/etc/fstab"',
    'mkdir -p "$1/mnt/payload"',
]


class ImageError(Exception):
    """The image could not be built; the message says which step failed."""


@dataclass(frozen=True)
class Image:
    root: Path  # raw ext4 root filesystem (never written by tests)
    kernel: Path
    initrd: Path


def mirror() -> Path:
    """This host's apt sources file, which mmdebstrap copies into the guest."""
    for candidate in HOST_SOURCES:
        if candidate.is_file():
            return candidate
    raise RuntimeError(f"no apt sources on this host ({', '.join(map(str, HOST_SOURCES))})")


def key() -> str:
    """Hash of every input of the image: a change to one of them means a new image."""
    h = hashlib.sha256()
    for part in (SUITE, mirror().read_text(), ROOT_SIZE, *PACKAGES, *CUSTOMIZE):
        h.update(part.encode() + b"\0")
    for f in sorted(GUEST_DIR.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def _images(directory: Path) -> Image:
    return Image(directory / "root.img", directory / "vmlinuz", directory / "initrd.img")


def ensure(log: TextIO = sys.stderr) -> Image:
    """The cached image for the current inputs, built first if it is not there."""
    final = CACHE_ROOT / key()
    if (final / "complete").exists():
        return _images(final)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=CACHE_ROOT))
    try:
        _build(work, log)
        (work / "complete").touch()
        if final.exists():  # a stale incomplete directory from an older harness
            shutil.rmtree(final)
        work.rename(final)
        _prune(keep=final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return _images(final)


def _prune(keep: Path) -> None:
    """Remove the complete images of older inputs (each is ~1 GB): only one is ever used."""
    for other in CACHE_ROOT.iterdir():
        if other != keep and (other / "complete").exists():
            shutil.rmtree(other, ignore_errors=True)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _build(work: Path, log: TextIO) -> None:
    tree = work / "tree"
    print(f"vm: building the guest image in {work} (mmdebstrap, ~2 min)", file=log)
    hooks = [f"--customize-hook={h.format(guest=GUEST_DIR)}" for h in CUSTOMIZE]
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            "--components=main",
            f"--include={','.join(PACKAGES)}",
            *hooks,
            SUITE,
            str(tree),
            str(mirror()),
        ],
        "mmdebstrap",
    )
    boot = tree / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise ImageError(f"mmdebstrap left no kernel/initrd in {boot}")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    _run(
        ["mkfs.ext4", "-q", "-L", "vmroot", "-d", str(tree), str(work / "root.img"), ROOT_SIZE],
        "mkfs.ext4 of the root image",
    )
    shutil.rmtree(tree)


if __name__ == "__main__":
    print(ensure().root.parent)
