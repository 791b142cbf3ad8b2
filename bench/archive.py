"""Benchmark: `usbagent archive` against the shell pipelines people would write instead.

    .venv/bin/python -m bench.archive [--size large|small] [--data DIR] [--rounds 3]

On one data set (default "large", >= 1 GB: a copy of this Python installation's stdlib,
tens of thousands of small files, plus a few incompressible random files), in one run:

  A  usbagent archive                                   (tar -> zstd -> age, fsync, sha256)
  B  tar -cf - DATA | zstd -T0 -3 | age -r R -o OUT     (the best shell pipeline)
  C  tar -czf - DATA | pigz -c | age -r R -o OUT        (what people run today, as written:
                                                        gzip inside tar, then pigz again)
  B2 B | tee OUT | sha256sum > OUT.sha256; sync OUT     (B with A's guarantees, for context)

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

Targets (issue 2): A <= 1.1 x B, C >= 5 x A, A's peak RSS <= 200 MB and flat.
Note that A does strictly more than B: it fsyncs the archive and its folder and writes a
sha256 sidecar computed on the fly.
"""

from __future__ import annotations

import argparse
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


def _watch_hwm(pid: int, out: list[int]) -> None:
    """Sample the process's VmHWM (its own peak RSS) until it exits."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)


def run_a(config: Path, out_dir: Path) -> Result:
    argv = [sys.executable, "-m", "usbagent", "--config", str(config), "archive"]
    samples: list[int] = []
    with tempfile.TemporaryFile() as errors:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
        watcher = threading.Thread(target=_watch_hwm, args=(proc.pid, samples), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"usbagent archive failed: {errors.read().decode()}")
    size = max(out_dir.glob("*.tar.zst.age")).stat().st_size  # the newest: this run's
    return Result("A", seconds, size, max(samples, default=0), usage.ru_maxrss * 1024)


def run_shell(name: str, command: str, output: Path) -> Result:
    start = time.monotonic()
    subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], check=True)
    seconds = time.monotonic() - start
    return Result(name, seconds, output.stat().st_size)


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

    def a(self, data: Path) -> Result:
        warm(data)
        result = run_a(write_config(self.work, data, self.recipients), self.work / "A")
        self.clean()
        return result

    def b(self, data: Path) -> Result:
        warm(data)
        out = self.work / "out.B"
        rel = str(data).lstrip("/")
        cmd = f"tar -C / -cf - '{rel}' | zstd -q -T0 -3 | age -r {self.recipient} -o '{out}'"
        result = run_shell("B", cmd, out)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--data", type=Path, help="use this folder as the data set instead")
    parser.add_argument("--rounds", type=int, default=3, help="runs of A and of B (default 3)")
    parser.add_argument("--skip-c", action="store_true", help="do not run the slow C")
    args = parser.parse_args()

    data = args.data or build_data(args.size, None)
    small = build_data("small", None)
    bench = Bench(CACHE / "work")
    print(describe(data))
    print(f"load average at start: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")

    first = bench.a(data)  # empty destination: preflight sizes the sources (a walk)
    print(f"A, first run (empty destination): {first.seconds:.2f} s")
    a_runs: list[Result] = []
    b_runs: list[Result] = []
    b2_runs: list[Result] = []
    for i in range(args.rounds):
        a_runs.append(bench.a(data))  # last run's archive present, as every night
        b_runs.append(bench.b(data))
        b2_runs.append(bench.b_same_guarantees(data))
        print(
            f"round {i + 1}: A {a_runs[-1].seconds:.2f} s, B {b_runs[-1].seconds:.2f} s, "
            f"B2 {b2_runs[-1].seconds:.2f} s"
        )
    c = None if args.skip_c else bench.c(data)
    if c:
        print(f"C {c.seconds:.2f} s")
    bench.clean(keep_newest_archive=False)
    a_small = [bench.a(small) for _ in range(2)]
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

    a_med = statistics.median(r.seconds for r in a_runs)
    b_med = statistics.median(r.seconds for r in b_runs)
    print()
    print("| run | wall time (median, min) | output |")
    print("|---|---|---|")
    rows = (
        ("A usbagent archive", a_runs),
        ("B tar \\| zstd -T0 -3 \\| age", b_runs),
        ("B2 = B \\| tee OUT \\| sha256sum; sync OUT", b2_runs),
    )
    for name, runs in rows:
        times = [r.seconds for r in runs]
        print(
            f"| {name} | {statistics.median(times):.2f} s, {min(times):.2f} s "
            f"({len(times)} runs) | {mb(runs[0].output_bytes)} |"
        )
    if c:
        name = "C tar -czf - \\| pigz -c \\| age"
        print(f"| {name} | {c.seconds:.2f} s (1 run) | {mb(c.output_bytes)} |")
    print()
    print(f"A / B = {a_med / b_med:.2f} (target <= 1.10)")
    b2_med = statistics.median(r.seconds for r in b2_runs)
    print(f"A / B2 = {a_med / b2_med:.2f} (B with A's checksum and fsync)")
    if c:
        print(f"C / A = {c.seconds / a_med:.1f} (target >= 5)")
    big_rss = max(r.rss_python for r in a_runs)
    small_rss = max(r.rss_python for r in a_small)
    print(
        f"A peak RSS (Python process): {mb(small_rss)} on {describe(small)}; "
        f"{mb(big_rss)} on {describe(data)} (target <= 200 MB, flat)"
    )
    print(f"A peak RSS incl. the tar child (wait4): {mb(max(r.rss_tree for r in a_runs))}")
    shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
