"""Benchmark: `usbagent sync` onto a loop-device ext4 stick vs cp + sync + sha256sum -c.

    sudo .venv/bin/python -m bench.sync [--archives 4] [--mib 300] [--rounds 3]

(A) `usbagent sync MOUNT`: copy, fsync, read back from the device and hash, rename,
    sidecars, prune.
(B) the shell way with the same guarantees: `cp` the archives and sidecars, `sync`, drop
    the page cache, `sha256sum -c` the copies.
(C) a second `usbagent sync` on the now up-to-date stick: the re-verification of every copy
    each plug costs, next to (D) `sha256sum -c` of the copies after dropping the cache.

The stick is a sparse 3 GB image attached with `losetup --direct-io=on`, so reads that miss
the stick's page cache go to the disk, as they would go to a real stick, instead of being
served from the host's cache of the image file. Caches are dropped before every run so
both sides read the archives from disk. Target: A <= 1.15 x B. Needs root.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from usbagent import naming

MIB = 1024 * 1024
LABEL = "ua-bench"
PREFIX = "bench"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_archives(dest: Path, count: int, mib: int) -> int:
    """Random (incompressible, like encrypted) archives with sidecars; returns total bytes."""
    dest.mkdir(parents=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(count):
        name = naming.make(PREFIX, start + timedelta(days=n)).filename
        h = hashlib.sha256()
        with (dest / name).open("wb") as f:
            for _ in range(mib // 4):
                block = os.urandom(4 * MIB)
                h.update(block)
                f.write(block)
        (dest / (name + naming.SIDECAR)).write_text(f"{h.hexdigest()}  {name}\n")
    return count * mib * MIB


def timed(action: Callable[[], None]) -> float:
    drop_caches()
    t = time.perf_counter()
    action()
    return time.perf_counter() - t


def usbagent_sync(config: Path, mount: Path) -> Callable[[], None]:
    def run() -> None:
        r = subprocess.run(
            [sys.executable, "-m", "usbagent", "--config", str(config), "sync", str(mount)],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            raise SystemExit(f"usbagent sync failed: {r.stderr.strip()}")

    return run


def shell_copy(dest: Path, target: Path) -> Callable[[], None]:
    def run() -> None:
        target.mkdir()
        files = sorted(str(p) for p in dest.iterdir())
        subprocess.run(["cp", *files, str(target)], check=True)
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        shell_check(target)()

    return run


def shell_check(target: Path) -> Callable[[], None]:
    def run() -> None:
        sidecars = sorted(p.name for p in target.glob("*" + naming.SIDECAR))
        subprocess.run(["sha256sum", "--quiet", "-c", *sidecars], cwd=target, check=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=int, default=4)
    parser.add_argument("--mib", type=int, default=300, help="size of each archive (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.sync needs root (losetup, mount, drop_caches)")

    work = Path(tempfile.mkdtemp(prefix="usbagent-bench-sync-", dir="/var/tmp"))
    loop = ""
    mount = work / "mnt"
    try:
        total = make_archives(work / "backups", args.archives, args.mib)
        image = work / "stick.img"
        with image.open("wb") as f:
            f.truncate(3 * 1024**3)
        sh("mkfs.ext4", "-q", "-F", "-L", LABEL, str(image))
        loop = sh("losetup", "-f", "--show", "--direct-io=on", str(image))
        mount.mkdir()
        sh("mount", "-o", "nosuid,nodev,noexec", loop, str(mount))
        config = work / "config.toml"
        config.write_text(
            f'[archive]\ndestination = "{work / "backups"}"\nprefix = "{PREFIX}"\n'
            f'[usb]\nlabels = ["{LABEL}"]\nrequire_usb = false\nkeep = 14\n'
            f'[agent]\nstate_dir = "{work / "state"}"\n'
        )
        a, b, c, d = [], [], [], []
        for round_ in range(args.rounds):
            for side in "AB" if round_ % 2 == 0 else "BA":
                shutil.rmtree(mount / "usbagent", ignore_errors=True)
                shutil.rmtree(mount / "cp", ignore_errors=True)
                if side == "A":
                    a.append(timed(usbagent_sync(config, mount)))
                    c.append(timed(usbagent_sync(config, mount)))
                else:
                    b.append(timed(shell_copy(work / "backups", mount / "cp")))
                    d.append(timed(shell_check(mount / "cp")))
        report(total, a, b, c, d)
    finally:
        if loop:
            subprocess.run(["umount", str(mount)], check=False)
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)


def report(total: int, a: list[float], b: list[float], c: list[float], d: list[float]) -> None:
    def line(name: str, times: list[float]) -> str:
        med = statistics.median(times)
        runs = " ".join(f"{t:.2f}" for t in times)
        return f"{name:<44} median {med:6.2f} s  {total / med / 1e6:7.0f} MB/s  ({runs})"

    print(f"{total / 1e9:.2f} GB in archives")
    print(line("A usbagent sync (copy+verify)", a))
    print(line("B cp + sync + drop caches + sha256sum -c", b))
    print(line("C usbagent sync again (re-verify all)", c))
    print(line("D drop caches + sha256sum -c", d))
    ratio = statistics.median(a) / statistics.median(b)
    verdict = "OK" if ratio <= 1.15 else "over target"
    print(f"A/B = {ratio:.2f} (target <= 1.15: {verdict})")
    print(f"C/D = {statistics.median(c) / statistics.median(d):.2f}")


if __name__ == "__main__":
    main()
