"""Benchmark: a week of nights with incremental archives, against the shell pipelines.

    .venv/bin/python -m bench.incremental [--seed 11] [--nights 6] [--skip-restore]

Data set (built once, seeded, reproducible; /var/tmp/usbagent-bench/inc-base): > 2 GB in
> 50,000 files: small text-like files (compressible) and small random ones, medium and
large random files (incompressible), symlinks, hard links, empty folders, a few modes.
Every run starts from a copy of it (`cp -a`), so every run sees the same nights.

Night 0 is a full. Nights 1..N (default 6) each change ~1 % of the files, seeded: modify,
add, delete, rename, chmod, plus one folder renamed (or moved) and, on some nights, a folder
deleted, a file replaced by a folder and the reverse, a symlink retargeted, a hard link
added. A last night changes nothing. Each night, on the same data, in a rotating order:

  U      usbagent archive (the nightly run: a full, then increments once `archive` makes them)
  F      usbagent archive into a destination whose state is new (so: that night's full)
  chain  tar --listed-incremental=<copy of night N-1's snapshot> --no-check-device
         | zstd -T0 -3 | age; sync OUT                       (level N on level N-1)
  diff   the same with a copy of night 0's snapshot             (each night against the full)

Per run: wall time, CPU time (user + sys of the whole process tree, from wait4), archive
size, peak RSS (the usbagent process's VmHWM, sampled from /proc; the shell's ru_maxrss).
Then night N is restored twice and compared with the data (content, mode, symlink
targets, hard links, mtimes of files, and every path: nothing missing, nothing extra):
`usbagent restore <U's night-N archive>`, and the chain with the standard tools
(`age -d | zstd -d | tar --listed-incremental=/dev/null -x`, member by member in order).

Targets (issue 11): a 1 %-night's U <= 10 % of F's wall time; U's archive <= 1.1 x the shell
increment of the same kind; the unchanged night's U <= 5 % of F; U's peak RSS flat; the
restore of night N matches exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyrage

from usbagent import naming
from usbagent.config import ArchiveConfig

CACHE = Path("/var/tmp/usbagent-bench")
MIB = 1024 * 1024
PREFIX = "bench"
CHANGED = 0.01  # share of the files a night changes


@dataclass(frozen=True)
class Spec:
    """What the data set holds; recorded next to it so a changed spec rebuilds it."""

    seed: int = 11
    projects: int = 40
    subdirs: int = 30
    small_files: int = 60_000
    random_share: float = 0.1  # of the small files: incompressible
    medium: int = 120  # random files of 1..4 MiB
    large: int = 4  # random files of LARGE_MIB
    large_mib: int = 160
    symlinks: int = 600
    hardlinks: int = 200
    empty_dirs: int = 60


TINY = Spec(
    projects=4, subdirs=5, small_files=1000, medium=4, large=1, large_mib=8, symlinks=20,
    hardlinks=10, empty_dirs=5,
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    cpu: float  # user + sys of the tree
    size: int  # bytes of the archive made
    rss: int  # bytes: VmHWM of the usbagent process, or ru_maxrss of the shell's tree
    archive: Path | None = None


# --- the data set ---------------------------------------------------------------------


def _pool(rng: random.Random, size: int) -> bytes:
    """Text-like bytes (words of a seeded vocabulary): compresses like prose/code."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(5000)]
    words = rng.choices(vocab, k=size // 5)
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines).encode()[:size]


def random_bytes(key: str, size: int) -> bytes:
    """Seeded incompressible bytes (shake-128 of the key): ~10x faster than randbytes."""
    return hashlib.shake_128(key.encode()).digest(size)


def _small_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.70:
        return rng.randint(200, 8 * 1024)
    if roll < 0.95:
        return rng.randint(8 * 1024, 64 * 1024)
    return rng.randint(64 * 1024, 512 * 1024)


class Content:
    """Seeded file contents: text slices of one pool, or random bytes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pool = _pool(rng, 32 * MIB)

    def text(self, size: int, tag: str) -> bytes:
        start = self.rng.randrange(0, len(self.pool) - size)
        return f"{tag}\n".encode() + self.pool[start : start + size]

    def make(self, path: Path, size: int, incompressible: bool) -> None:
        tag = f"{path.name} {self.rng.random()}"
        data = random_bytes(tag, size) if incompressible else self.text(size, tag)
        path.write_bytes(data)


def _dirs(spec: Spec) -> list[str]:
    return [f"p{p:02d}/s{s:02d}" for p in range(spec.projects) for s in range(spec.subdirs)]


def build(spec: Spec, base: Path) -> Path:
    """The data set in `base`, built once per spec (a marker file records the spec)."""
    marker = base.with_name(base.name + ".json")
    wanted = dataclasses.asdict(spec)
    if marker.exists() and json.loads(marker.read_text()).get("spec") == wanted:
        return base
    shutil.rmtree(base, ignore_errors=True)
    marker.unlink(missing_ok=True)
    print(f"building {base} (seed {spec.seed}) ...", flush=True)
    rng = random.Random(spec.seed)
    content = Content(rng)
    dirs = _dirs(spec)
    for d in dirs:
        (base / d).mkdir(parents=True)
    files: list[Path] = []
    for i in range(spec.small_files):
        incompressible = rng.random() < spec.random_share
        path = base / rng.choice(dirs) / f"f{i:05d}.{'bin' if incompressible else 'txt'}"
        content.make(path, _small_size(rng), incompressible)
        files.append(path)
    for i in range(spec.medium):
        path = base / rng.choice(dirs) / f"medium{i:03d}.bin"
        path.write_bytes(random_bytes(f"medium{i}-{spec.seed}", rng.randint(1, 4) * MIB))
        files.append(path)
    for i in range(spec.large):
        path = base / f"p{i:02d}" / f"large{i}.bin"
        with path.open("wb") as f:
            for chunk in range(spec.large_mib // 4):
                f.write(random_bytes(f"large{i}-{chunk}-{spec.seed}", 4 * MIB))
        files.append(path)
    for path in rng.sample(files, len(files) // 10):
        path.chmod(rng.choice((0o755, 0o600, 0o640, 0o700)))
    for i in range(spec.symlinks):
        link = base / rng.choice(dirs) / f"link{i:03d}"
        link.symlink_to(os.path.relpath(rng.choice(files), link.parent))
    for i in range(spec.hardlinks):
        target = rng.choice(files)
        os.link(target, target.with_name(f"hard{i:03d}-{target.name}"))
    for i in range(spec.empty_dirs):
        (base / rng.choice(dirs) / f"empty{i:02d}").mkdir()
    facts = census(base)
    marker.write_text(json.dumps({"spec": wanted, **facts}))
    return base


def census(root: Path) -> dict[str, int]:
    """Files, folders, symlinks and file bytes under `root`."""
    kinds: Counter[str] = Counter()
    for folder, dirs, names in os.walk(root):
        kinds["dirs"] += len(dirs)
        for name in names:
            st = Path(folder, name).lstat()
            if stat.S_ISLNK(st.st_mode):
                kinds["symlinks"] += 1
            else:
                kinds["files"] += 1
                kinds["bytes"] += st.st_size
    return dict(kinds)


# --- the nights' changes --------------------------------------------------------------


def _tree(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Regular files, folders (the root left out) and symlinks, in a stable order."""
    files: list[Path] = []
    dirs: list[Path] = []
    links: list[Path] = []
    for folder, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            (links if path.is_symlink() else files).append(path)
        dirs += [Path(folder, d) for d in subdirs if Path(folder, d).relative_to(root).parts]
    return files, dirs, links


def mutate(root: Path, night: int, seed: int) -> Counter[str]:
    """Night `night`'s changes to the data in `root` (seeded); returns what it did."""
    rng = random.Random(f"{seed}-night-{night}")
    content = Content(random.Random(f"{seed}-content-{night}"))
    files, dirs, _ = _tree(root)
    done: Counter[str] = Counter()
    gone: set[Path] = set()
    todo = round(len(files) * CHANGED)
    ops = rng.choices(("modify", "add", "delete", "rename", "chmod"), (35, 25, 20, 15, 5), k=todo)
    sub = [d for d in dirs if len(d.relative_to(root).parts) == 2]
    for op in ops:
        path = rng.choice(files)
        if path in gone:
            continue
        if op == "modify":
            _modify(path, rng, content)
        elif op == "add":
            folder = rng.choice(sub)
            incompressible = rng.random() < 0.1
            new = folder / f"n{night}-{done['add']:04d}.{'bin' if incompressible else 'txt'}"
            content.make(new, _small_size(rng), incompressible)
        elif op == "delete":
            path.unlink()
            gone.add(path)
        elif op == "rename":
            target = rng.choice(sub) / f"r{night}-{path.name}"
            if target.exists():
                continue
            path.rename(target)
            gone.add(path)
        else:
            path.chmod(rng.choice((0o644, 0o755, 0o600)))
        done[op] += 1
    _structural(root, night, rng, content, sub, done)
    return done


def _modify(path: Path, rng: random.Random, content: Content) -> None:
    """Text: a line rewritten and one appended; random: one 4 KiB block overwritten."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        if path.suffix == ".txt":
            f.seek(rng.randrange(0, max(1, size - 200)))
            f.write(content.text(120, "changed"))
            f.seek(0, os.SEEK_END)
            f.write(content.text(200, "appended"))
        else:
            f.seek(rng.randrange(0, max(1, size - 4096)))
            f.write(random_bytes(f"{path}-{rng.random()}", 4096))


def _structural(
    root: Path,
    night: int,
    rng: random.Random,
    content: Content,
    sub: list[Path],
    done: Counter[str],
) -> None:
    """The changes incremental dumps get wrong most easily (issue 11's pitfalls)."""
    moved = rng.choice(sub)
    if night % 2:  # renamed in place
        moved.rename(moved.with_name(f"{moved.name}-renamed{night}"))
    else:  # moved under another project
        other = rng.choice([d for d in sub if d.parent != moved.parent])
        moved.rename(other.parent / f"{moved.name}-moved{night}")
    done["folder renamed"] += 1
    sub = [d for d in sub if d != moved]
    if night in (2, 5):
        doomed = rng.choice(sub)
        shutil.rmtree(doomed)
        done["folder deleted"] += 1
        sub = [d for d in sub if d != doomed]
    files, dirs, links = _tree(root)
    if night == 3:  # a file replaced by a folder of the same name
        victim = rng.choice(files)
        victim.unlink()
        victim.mkdir()
        content.make(victim / "inside.txt", 3000, False)
        done["file -> folder"] += 1
    if night == 4:  # a folder replaced by a file of the same name
        victim = rng.choice([d for d in dirs if d.name.startswith("empty")] or sub)
        shutil.rmtree(victim)
        content.make(victim, 5000, False)
        done["folder -> file"] += 1
    for link in rng.sample(links, min(3, len(links))):
        link.unlink()
        link.symlink_to(os.path.relpath(rng.choice(files), link.parent))
        done["symlink retargeted"] += 1
    if night == 2:
        target = rng.choice(files)
        os.link(target, target.with_name(f"hard-n{night}-{target.name}"))
        done["hard link added"] += 1


# --- running and measuring ------------------------------------------------------------


def _watch_hwm(pid: int, out: list[int]) -> None:
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)


def timed(argv: list[str], what: str, cwd: Path | None = None) -> tuple[float, float, int, int]:
    """(wall s, user+sys s of the tree, VmHWM of the process, ru_maxrss of the tree)."""
    samples: list[int] = []
    with tempfile.TemporaryFile() as errors:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, cwd=cwd)
        watcher = threading.Thread(target=_watch_hwm, args=(proc.pid, samples), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        watcher.join()
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"{what} failed: {errors.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, max(samples, default=0), usage.ru_maxrss


def _makes_levels(tree: Path | None) -> bool:
    """Whether that usbagent has `archive.full_every_days` (it then makes increments)."""
    if tree is None:
        return "full_every_days" in {f.name for f in dataclasses.fields(ArchiveConfig)}
    code = "import usbagent.config as c; print(hasattr(c.ArchiveConfig, 'full_every_days'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    return out.stdout.strip() == "True"


class Bench:
    def __init__(self, work: Path, data: Path, tree: Path | None) -> None:
        self.work = work
        self.data = data
        self.tree = tree  # where `usbagent archive` runs from (None: this checkout)
        self.levels = _makes_levels(tree)
        self.rel = str(data).lstrip("/")
        identity = pyrage.x25519.Identity.generate()
        self.identity = work / "identity.txt"
        self.identity.write_text(f"{identity}\n")
        self.identity.chmod(0o600)
        self.recipient = str(identity.to_public())
        (work / "recipients.txt").write_text(self.recipient + "\n")
        for d in ("U", "F", "chain", "diff"):
            (work / d).mkdir()

    def config(self, name: str) -> Path:
        levels = "full_every_days = 7\n" if self.levels else ""
        config = self.work / f"{name}.toml"
        config.write_text(
            f'[archive]\nsources = ["{self.data}"]\nexclude = []\n'
            f'destination = "{self.work / name}"\n'
            f'recipients_file = "{self.work / "recipients.txt"}"\n'
            f'prefix = "{PREFIX}"\ncompression_level = 3\nkeep_days = 30\n{levels}'
            f'[agent]\nstate_dir = "{self.work / (name + "-state")}"\n'
            "[notify]\nenabled = false\n"
        )
        return config

    def usbagent(self, name: str) -> Run:
        before = set((self.work / name).iterdir())
        argv = [sys.executable, "-m", "usbagent", "--config", str(self.config(name)), "archive"]
        seconds, cpu, hwm, _ = timed(argv, f"usbagent archive ({name})", self.tree)
        made = [p for p in set((self.work / name).iterdir()) - before if naming.parse(p.name)]
        (archive,) = made
        return Run(name, seconds, cpu, archive.stat().st_size, hwm, archive)

    def u(self, night: int) -> Run:
        return self.usbagent("U")

    def f(self, night: int) -> Run:
        """A full: the state is new (no snapshot), last night's full stays as it would."""
        shutil.rmtree(self.work / "F-state", ignore_errors=True)
        old = sorted((self.work / "F").iterdir())
        run = self.usbagent("F")
        for p in old:
            p.unlink()
        return run

    def shell(self, kind: str, night: int) -> Run:
        """tar --listed-incremental on a copy of the snapshot it builds on; then sync."""
        folder = self.work / kind
        base = folder / f"{night - 1 if kind == 'chain' else 0}.snar"
        snar = folder / f"{night}.snar"
        if night:
            shutil.copyfile(base, snar)
        out = folder / f"{night}.tar.zst.age"
        cmd = (
            f"set -o pipefail; tar --listed-incremental='{snar}' --no-check-device "
            f"--format=gnu -C / -cf - '{self.rel}' | zstd -q -T0 -3 "
            f"| age -r {self.recipient} -o '{out}' && sync '{out}'"
        )
        seconds, cpu, _, maxrss = timed(["bash", "-c", cmd], f"shell {kind}")
        return Run(kind, seconds, cpu, out.stat().st_size, maxrss * 1024, out)

    def restore_usbagent(self, archive: Path, target: Path) -> float:
        argv = [
            sys.executable, "-m", "usbagent", "restore", str(archive),
            "--identity", str(self.identity), "--to", str(target),
        ]  # fmt: skip
        return timed(argv, "usbagent restore")[0]

    def restore_shell(self, members: list[Path], target: Path) -> float:
        start = time.monotonic()
        for member in members:
            subprocess.run(
                f"set -o pipefail; age -d -i '{self.identity}' '{member}' | zstd -q -d "
                f"| tar --listed-incremental=/dev/null -C '{target}' -xf -",
                shell=True,
                executable="/bin/bash",
                check=True,
            )
        return time.monotonic() - start


# --- comparing a restored tree with the data ------------------------------------------


def _entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder, name)
            yield str(path.relative_to(root)), path.lstat()


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def compare(source: Path, restored: Path) -> list[str]:
    """Every difference a user would notice: paths, types, modes, content, links, mtimes."""
    a, b = dict(_entries(source)), dict(_entries(restored))
    diffs = [f"missing: {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [
        f"extra (deleted or renamed away, yet restored): {p}" for p in sorted(b.keys() - a.keys())
    ]
    groups_a: dict[int, set[str]] = {}
    groups_b: dict[int, set[str]] = {}
    for rel in sorted(a.keys() & b.keys()):
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append(f"type differs: {rel}")
            continue
        if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode) and not stat.S_ISLNK(sa.st_mode):
            diffs.append(
                f"mode {oct(stat.S_IMODE(sb.st_mode))} != {oct(stat.S_IMODE(sa.st_mode))}: {rel}"
            )
        if stat.S_ISLNK(sa.st_mode):
            if (source / rel).readlink() != (restored / rel).readlink():
                diffs.append(f"symlink target differs: {rel}")
        elif stat.S_ISREG(sa.st_mode):
            if sa.st_size != sb.st_size or _digest(source / rel) != _digest(restored / rel):
                diffs.append(f"content differs: {rel}")
            if int(sa.st_mtime) != int(sb.st_mtime):
                diffs.append(f"mtime differs: {rel}")
            if sa.st_nlink > 1:
                groups_a.setdefault(sa.st_ino, set()).add(rel)
                groups_b.setdefault(sb.st_ino, set()).add(rel)
    links_a = sorted(sorted(g) for g in groups_a.values() if len(g) > 1)
    links_b = sorted(sorted(g) for g in groups_b.values() if len(g) > 1)
    if links_a != links_b:
        diffs.append(
            f"hard links differ: {len(links_a)} groups in the data, {len(links_b)} restored"
        )
    return diffs


# --- the run --------------------------------------------------------------------------


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def row(night: int, change: str, runs: dict[str, Run], loadavg: str) -> str:
    cells = [str(night), change]
    for name in ("U", "F", "chain", "diff"):
        r = runs.get(name)
        cells.append(
            f"{r.seconds:.2f} s / {r.cpu:.2f} s / {mb(r.size)}"
            + (f" / {r.rss / 1e6:.0f} MB" if name in ("U", "F") else "")
            if r
            else "-"
        )
    cells.append(loadavg)
    return "| " + " | ".join(cells) + " |"


def night_runs(bench: Bench, night: int) -> dict[str, Run]:
    """The night's four runs, in an order that rotates with the night (shared machine)."""
    jobs: list[tuple[str, Callable[[], Run]]] = [
        ("U", lambda: bench.u(night)),
        ("F", lambda: bench.f(night)),
        ("chain", lambda: bench.shell("chain", night)),
    ]
    if night:
        jobs.append(("diff", lambda: bench.shell("diff", night)))
    shift = night % len(jobs)
    runs = {name: job() for name, job in jobs[shift:] + jobs[:shift]}
    if not night:  # night 0's level 0 is the base of both the chain and the differential
        shutil.copyfile(bench.work / "chain" / "0.snar", bench.work / "diff" / "0.snar")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=Spec.seed)
    parser.add_argument("--nights", type=int, default=6, help="nights with changes (default 6)")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a ~40 MB data set, to try it out")
    parser.add_argument(
        "--tree", type=Path, metavar="DIR", help="run `usbagent archive` from this source tree"
    )
    args = parser.parse_args()

    spec = dataclasses.replace(TINY if args.tiny else Spec(), seed=args.seed)
    base = build(spec, CACHE / ("inc-base-tiny" if args.tiny else "inc-base"))
    facts = json.loads(base.with_name(base.name + ".json").read_text())
    work = CACHE / "inc-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = work / "data"
    subprocess.run(["cp", "-a", str(base), str(data)], check=True)
    os.sync()  # the copy's writeback would otherwise slow night 0's runs down
    bench = Bench(work, data, args.tree)
    print(
        f"data: {facts['files']} files, {facts['dirs']} folders, {facts['symlinks']} symlinks, "
        f"{facts['bytes'] / 1e9:.2f} GB (seed {spec.seed}); usbagent makes increments: "
        f"{bench.levels}{f' (from {args.tree})' if args.tree else ''}; "
        f"{os.cpu_count()} CPUs, {load()}"
    )
    print()
    print("Each cell: wall / CPU (user+sys) / archive size [/ peak RSS of the usbagent process]")
    print()
    print(
        "| night | change | U usbagent nightly | F usbagent full | chain (shell) | diff (shell) "
        "| load |"
    )
    print("|---|---|---|---|---|---|---|")
    nights: list[tuple[str, dict[str, Run]]] = []
    plan = [*range(args.nights + 1), -1]  # -1: the unchanged night
    for number, night in enumerate(plan):
        if night > 0:
            change = ", ".join(
                f"{n} {k}" for k, n in sorted(mutate(data, night, spec.seed).items())
            )
        else:
            change = "full" if night == 0 else "nothing changed"
        runs = night_runs(bench, number)
        nights.append((change, runs))
        print(row(number, change, runs, load()), flush=True)

    summarise(nights, args.nights)
    if not args.skip_restore:
        restore_and_compare(bench, nights, args.nights)
    print(f"\n{load()} at the end")
    return 0


def summarise(nights: list[tuple[str, dict[str, Run]]], changed: int) -> None:
    print()
    kind = "chain"  # the shell increment of the kind usbagent makes (chained, issue 11)
    for number in range(1, changed + 1):
        runs = nights[number][1]
        u, f, shell = runs["U"], runs["F"], runs[kind]
        print(
            f"night {number}: U/F wall {u.seconds / f.seconds:.1%} (target <= 10 %), "
            f"U/F CPU {u.cpu / f.cpu:.1%}, U size / shell {kind} size "
            f"{u.size / shell.size:.3f} (target <= 1.1), "
            f"diff/chain size {runs['diff'].size / runs['chain'].size:.2f}"
        )
    u, f = nights[-1][1]["U"], nights[-1][1]["F"]
    print(
        f"unchanged night: U/F wall {u.seconds / f.seconds:.1%} (target <= 5 %), "
        f"U {u.seconds:.2f} s"
    )
    rss = [runs["U"].rss for _, runs in nights]
    print(f"U peak RSS per night: {', '.join(f'{r / 1e6:.0f}' for r in rss)} MB (target: flat)")
    total = {k: sum(runs[k].size for _, runs in nights[1 : changed + 1]) for k in ("chain", "diff")}
    print(
        f"nights 1..{changed} stored: chained {mb(total['chain'])}, "
        f"differential {mb(total['diff'])}"
    )


def restore_and_compare(bench: Bench, nights: list[tuple[str, dict[str, Run]]], night: int) -> None:
    """Night `night` restored by usbagent and by the standard tools, compared with the data."""
    print()
    archive = nights[night][1]["U"].archive
    assert archive is not None
    target = bench.work / "restored-usbagent"
    target.mkdir()
    try:
        seconds = bench.restore_usbagent(archive, target)
        diffs = compare(bench.data, target / bench.rel)
        verdict = "matches exactly" if not diffs else f"{len(diffs)} differences: {diffs[:8]}"
        print(f"usbagent restore {archive.name}: {seconds:.2f} s ({load()}); {verdict}")
    except SystemExit as exc:
        print(f"usbagent restore {archive.name}: FAILED: {exc}")
    shutil.rmtree(target, ignore_errors=True)
    for kind, members in (
        ("chain", [nights[n][1]["chain"].archive for n in range(night + 1)]),
        ("diff", [nights[0][1]["chain"].archive, nights[night][1]["diff"].archive]),
    ):
        target = bench.work / f"restored-{kind}"
        target.mkdir()
        seconds = bench.restore_shell([m for m in members if m], target)
        diffs = compare(bench.data, target / bench.rel)
        verdict = "matches exactly" if not diffs else f"{len(diffs)} differences: {diffs[:8]}"
        print(
            f"standard tools, {kind} ({len(members)} members): {seconds:.2f} s "
            f"({load()}); {verdict}"
        )
        shutil.rmtree(target, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
