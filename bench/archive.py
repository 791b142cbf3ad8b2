"""Benchmark: `usbagent archive` against the shell pipelines people would write instead.

    .venv/bin/python -m bench.archive [--size large|small] [--data DIR] [--rounds 3]

On one data set (default "large", >= 1 GB: a copy of this Python installation's stdlib,
tens of thousands of small files, plus a few incompressible random files), in one run:

  A  usbagent archive                                   (tar -> zstd -> age, fsync, sha256)
  B  tar -cf - DATA | zstd -T0 -3 | age -r R -o OUT     (the best shell pipeline)
  C  tar -czf - DATA | pigz -c | age -r R -o OUT        (what people run today, as written:
                                                        gzip inside tar, then pigz again)
  Bs B; sync OUT                                        (B made durable: the 1.1 x target)
  B2 B | tee OUT | sha256sum > OUT.sha256; sync OUT     (B with A's guarantees, for context)
  A0 A run from another source tree (--baseline DIR, e.g. a `git worktree` of an older
     commit): old and new code side by side, in the same rounds

A runs once into an empty destination (its preflight then walks the sources to estimate
the space needed), then A and B run alternately `--rounds` times (noise on a shared
machine hits both alike) with A's previous archive left in place, as every night after
the first; C runs once (it is slow). Medians are compared.

A's peak RSS is measured for the Python process itself (VmHWM from /proc, sampled until it
exits) and, for reference, for its whole tree (wait4's ru_maxrss, which includes the tar
child); A also runs on the "small" set to show its memory does not grow with the data.
The page cache is warm for every run: the data is read once (tar to a pipe) before each
timed command, so all of them start equal. Data is cached under /var/tmp/usbagent-bench
and reused; outputs are deleted after each run.

Targets (issues 2 and 11): A <= 1.1 x Bs, C >= 5 x A, A's peak RSS <= 200 MB and flat.
Note that A does strictly more than B: it fsyncs the archive and its folder and writes a
sha256 sidecar computed on the fly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyrage

CACHE = Path("/var/tmp/usbagent-bench")
MIB = 1024 * 1024
# name -> (MiB of small files copied from the stdlib, number of random files, MiB each)
SIZES = {"small": (320, 2, 96), "large": (1000, 4, 128)}


@dataclass(frozen=True)
class Result:
    name: str
    seconds: float
    output_bytes: int
    rss_python: int = 0  # bytes, VmHWM of the usbagent process
    rss_tree: int = 0  # bytes, ru_maxrss from wait4 (largest of the process and its children)
    cpu_tree: float = 0.0  # s, user + sys of the process and all its children (wait4)
    cpu_main: float = 0.0  # s, of the usbagent process's main thread (pyrage runs there)
    cpu_threads: float = 0.0  # s, of its other threads (zstd's workers)


def _copy_small_files(source: Path, target: Path, budget: int) -> tuple[int, int]:
    """Copy regular files from `source` (again and again) until `budget` bytes are copied."""
    copied = files = 0
    round_no = 0
    while copied < budget:
        round_no += 1
        for folder, dirs, names in os.walk(source):
            dirs.sort()
            rel = Path(folder).relative_to(source)
            for name in sorted(names):
                src = Path(folder, name)
                if src.is_symlink() or not src.is_file():
                    continue
                dst = target / f"copy{round_no}" / rel / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                copied += dst.stat().st_size
                files += 1
                if copied >= budget:
                    return copied, files
    return copied, files


def build_data(size: str, folder: Path | None) -> Path:
    """The data set for `size`, built once and reused (a marker records what it holds)."""
    small_mib, random_count, random_mib = SIZES[size]
    data = folder or CACHE / f"data-{size}"
    marker = data.with_name(data.name + ".json")
    spec = {"small_mib": small_mib, "random": [random_count, random_mib]}
    if marker.exists() and json.loads(marker.read_text()).get("spec") == spec:
        return data
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    print(f"building {data}: {small_mib} MiB of files from {stdlib}, ", end="", flush=True)
    print(f"{random_count} x {random_mib} MiB random ...", flush=True)
    copied, files = _copy_small_files(stdlib, data / "python", small_mib * MIB)
    for i in range(random_count):
        with (data / f"random-{i}.bin").open("wb") as f:
            for _ in range(random_mib):
                f.write(os.urandom(MIB))
    total = copied + random_count * random_mib * MIB
    marker.write_text(json.dumps({"spec": spec, "files": files + random_count, "bytes": total}))
    return data


def describe(data: Path) -> str:
    marker = data.with_name(data.name + ".json")
    info = json.loads(marker.read_text()) if marker.exists() else {}
    files = info.get("files") or sum(len(f) for _, _, f in os.walk(data))
    total = info.get("bytes") or sum(
        (Path(d) / n).stat().st_size for d, _, names in os.walk(data) for n in names
    )
    return f"{data}: {files} files, {total / 1024**3:.2f} GiB"


def warm(data: Path) -> None:
    """Read the whole data set through tar once, so every timed run finds it cached."""
    subprocess.run(
        f"tar -C / -cf - '{str(data).lstrip('/')}' | cat > /dev/null", shell=True, check=True
    )


def _watch_hwm(pid: int, out: list[int], threads: dict[int, float]) -> None:
    """Sample the process's VmHWM (its own peak RSS) and its threads' CPU until it exits."""
    status = Path(f"/proc/{pid}/status")
    tick = os.sysconf("SC_CLK_TCK")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) * 1024)
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    threads[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)


def run_a(config: Path, out_dir: Path, tree: Path | None = None) -> Result:
    """`usbagent archive`; from the source tree `tree` instead of this one when given."""
    argv = [sys.executable, "-m", "usbagent", "--config", str(config), "archive"]
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    samples: list[int] = []
    threads: dict[int, float] = {}
    with tempfile.TemporaryFile() as errors:
        start = time.monotonic()
        proc = subprocess.Popen(  # cwd: `-m` puts it first on sys.path
            argv, stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=tree
        )
        watch = (proc.pid, samples, threads)
        watcher = threading.Thread(target=_watch_hwm, args=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"usbagent archive failed: {errors.read().decode()}")
    size = max(out_dir.glob("*.tar.zst.age")).stat().st_size  # the newest: this run's
    name = "A0" if tree else "A"
    main = threads.pop(proc.pid, 0.0)
    return Result(
        name, seconds, size, max(samples, default=0), usage.ru_maxrss * 1024,
        usage.ru_utime + usage.ru_stime, main, sum(threads.values()),
    )  # fmt: skip


def run_shell(name: str, command: str, output: Path) -> Result:
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", f"set -o pipefail; {command}"])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed: {command}")
    cpu = usage.ru_utime + usage.ru_stime
    return Result(name, seconds, output.stat().st_size, cpu_tree=cpu)


def write_config(work: Path, data: Path, recipients: Path) -> Path:
    config = work / "config.toml"
    config.write_text(
        f'[archive]\nsources = ["{data}"]\nexclude = []\n'
        f'destination = "{work / "A"}"\nrecipients_file = "{recipients}"\n'
        f'prefix = "bench"\ncompression_level = 3\nkeep_days = 1\n'
        f'[agent]\nstate_dir = "{work / "state"}"\n[notify]\nenabled = false\n'
    )
    return config


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        shutil.rmtree(work, ignore_errors=True)
        (work / "A").mkdir(parents=True)
        recipient = str(pyrage.x25519.Identity.generate().to_public())
        self.recipient = recipient
        self.recipients = work / "recipients.txt"
        self.recipients.write_text(recipient + "\n")

    def clean(self, keep_newest_archive: bool = True) -> None:
        """Remove outputs; A's newest archive stays, as last night's would (steady state)."""
        made = sorted((self.work / "A").iterdir())
        newest = max((p for p in made if p.name.endswith(".tar.zst.age")), default=None)
        keep = {newest, newest.with_name(newest.name + ".sha256")} if newest else set()
        for p in [*made, *self.work.glob("out.*")]:
            if p not in keep or not keep_newest_archive:
                p.unlink()

    def a(self, data: Path, tree: Path | None = None) -> Result:
        """A full: a new state dir has no snapshot (with one, A would make an increment)."""
        warm(data)
        shutil.rmtree(self.work / "state", ignore_errors=True)
        result = run_a(write_config(self.work, data, self.recipients), self.work / "A", tree)
        self.clean()
        return result

    def b(self, data: Path, durable: bool = False) -> Result:
        """B; with `durable`, Bs: B followed by `sync OUT` (A fsyncs its archive too)."""
        warm(data)
        out = self.work / "out.B"
        rel = str(data).lstrip("/")
        cmd = f"tar -C / -cf - '{rel}' | zstd -q -T0 -3 | age -r {self.recipient} -o '{out}'"
        if durable:
            cmd += f" && sync '{out}'"
        result = run_shell("Bs" if durable else "B", cmd, out)
        self.clean()
        return result

    def b_same_guarantees(self, data: Path) -> Result:
        """B plus what A also does: a sha256 of the ciphertext (via tee) and an fsync."""
        warm(data)
        out = self.work / "out.B2"
        rel = str(data).lstrip("/")
        cmd = (
            f"tar -C / -cf - '{rel}' | zstd -q -T0 -3 | age -r {self.recipient} "
            f"| tee '{out}' | sha256sum > '{out}.sha256' && sync '{out}'"
        )
        result = run_shell("B2", cmd, out)
        self.clean()
        return result

    def c(self, data: Path) -> Result:
        warm(data)
        out = self.work / "out.C"
        rel = str(data).lstrip("/")
        cmd = f"tar -C / -czf - '{rel}' | pigz -c | age -r {self.recipient} -o '{out}'"
        result = run_shell("C", cmd, out)
        self.clean()
        return result


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def where_the_time_goes(runs: dict[str, list[Result]]) -> None:
    """CPU per part of A (and A0), beside the shell's, for the median run of each."""
    for name in ("A", "A0"):
        if not runs[name]:
            continue
        r = sorted(runs[name], key=lambda r: r.seconds)[len(runs[name]) // 2]
        children = r.cpu_tree - r.cpu_main - r.cpu_threads
        print(
            f"{name} (median run, {r.seconds:.2f} s wall): CPU {r.cpu_tree:.2f} s = main thread "
            f"{r.cpu_main:.2f} s (busy {r.cpu_main / r.seconds:.0%} of the wall time: reads "
            f"tar, counts members, pyrage, writes) + zstd threads {r.cpu_threads:.2f} s "
            f"+ children {children:.2f} s (tar)"
        )
    for name in ("B", "Bs"):
        r = sorted(runs[name], key=lambda r: r.seconds)[len(runs[name]) // 2]
        print(f"{name} (median run, {r.seconds:.2f} s wall): CPU {r.cpu_tree:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--data", type=Path, help="use this folder as the data set instead")
    parser.add_argument("--rounds", type=int, default=3, help="runs of A and of B (default 3)")
    parser.add_argument("--skip-c", action="store_true", help="do not run the slow C")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="also run A from this source tree (A0)"
    )
    args = parser.parse_args()

    data = args.data or build_data(args.size, None)
    small = build_data("small", None)
    bench = Bench(CACHE / "work")
    print(describe(data))
    print(f"load average at start: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")

    first = bench.a(data)  # empty destination: preflight sizes the sources (a walk)
    print(f"A, first run (empty destination): {first.seconds:.2f} s")
    runs: dict[str, list[Result]] = {"A": [], "A0": [], "B": [], "Bs": [], "B2": []}
    for i in range(args.rounds):
        made = [bench.a(data)]  # last run's archive present, as every night
        if args.baseline:
            made.append(bench.a(data, args.baseline))
        made += [bench.b(data), bench.b(data, durable=True), bench.b_same_guarantees(data)]
        for r in made:
            runs[r.name].append(r)
        times = ", ".join(f"{r.name} {r.seconds:.2f} s" for r in made)
        print(f"round {i + 1}: {times} (load {os.getloadavg()[0]:.2f})", flush=True)
    a_runs = runs["A"]
    c = None if args.skip_c else bench.c(data)
    if c:
        print(f"C {c.seconds:.2f} s")
    bench.clean(keep_newest_archive=False)
    a_small = [bench.a(small) for _ in range(2)]
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

    def median(name: str) -> float:
        return statistics.median(r.seconds for r in runs[name])

    a_med = median("A")
    print()
    print("| run | wall time (median, min) | output |")
    print("|---|---|---|")
    rows = (
        ("A usbagent archive", "A"),
        (f"A0 usbagent archive from {args.baseline}", "A0"),
        ("B tar \\| zstd -T0 -3 \\| age", "B"),
        ("Bs = B; sync OUT", "Bs"),
        ("B2 = B \\| tee OUT \\| sha256sum; sync OUT", "B2"),
    )
    for label, name in rows:
        seconds = [r.seconds for r in runs[name]]
        if seconds:
            print(
                f"| {label} | {statistics.median(seconds):.2f} s, {min(seconds):.2f} s "
                f"({len(seconds)} runs) | {mb(runs[name][0].output_bytes)} |"
            )
    if c:
        name = "C tar -czf - \\| pigz -c \\| age"
        print(f"| {name} | {c.seconds:.2f} s (1 run) | {mb(c.output_bytes)} |")
    print()
    print(f"A / Bs = {a_med / median('Bs'):.2f} (target <= 1.10)")
    print(f"A / B = {a_med / median('B'):.2f}")
    print(f"A / B2 = {a_med / median('B2'):.2f} (B with A's checksum and fsync)")
    if args.baseline:
        print(f"A0 / Bs = {median('A0') / median('Bs'):.2f}, A / A0 = {a_med / median('A0'):.2f}")
    if c:
        print(f"C / A = {c.seconds / a_med:.1f} (target >= 5)")
    big_rss = max(r.rss_python for r in a_runs)
    small_rss = max(r.rss_python for r in a_small)
    print(
        f"A peak RSS (Python process): {mb(small_rss)} on {describe(small)}; "
        f"{mb(big_rss)} on {describe(data)} (target <= 200 MB, flat)"
    )
    print(f"A peak RSS incl. the tar child (wait4): {mb(max(r.rss_tree for r in a_runs))}")
    print()
    where_the_time_goes(runs)
    shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
