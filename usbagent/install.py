"""`usbagent install [--prefix DIR]`: units and udev rule with this installation's real paths.

ExecStart= is rendered with the absolute path of the `usbagent` executable that is running,
checked to exist and be runnable (including its #! interpreter), and every unit is checked by
`systemd-analyze verify` before anything is enabled: a unit pointing at a missing script
would otherwise fail only at 02:00, silently. With --prefix the files are written under DIR
(same relative paths) and nothing else on the system is touched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from usbagent.config import Config
from usbagent.configcheck import label_problem, unit_path_problem
from usbagent.errors import UsbagentError
from usbagent.fsutil import write_atomic

# Templates live in systemd/ and udev/ at the project root; a built wheel installs the same
# files as data under <prefix>/share/usbagent/ (pyproject.toml [tool.setuptools.data-files]).
TEMPLATE_ROOTS = (Path(__file__).resolve().parent.parent, Path(sys.prefix) / "share" / "usbagent")
UNIT_TEMPLATES = (
    "usbagent.service",
    "usbagent-archive.service",
    "usbagent-archive.timer",
    "usbagent-notify-failure@.service",
)
RULE_TEMPLATE = "90-usbagent.rules"
UNIT_DIR = Path("etc/systemd/system")
RULE_DIR = Path("etc/udev/rules.d")
PLACEHOLDER = re.compile(r"@([a-z_]+)@")
# `systemd-analyze verify` touches this even on a machine without systemd as PID 1.
UNITS_LOAD_STAMP = Path("/run/systemd/systemd-units-load")
ENABLE = ("usbagent-archive.timer", "usbagent.service")


def template(folder: str, name: str) -> Path:
    """A unit or rule template, from the source tree or from the installed data files."""
    for root in TEMPLATE_ROOTS:
        path = root / folder / name
        if path.is_file():
            return path
    raise UsbagentError(
        f"template {folder}/{name} not found under {', '.join(map(str, TEMPLATE_ROOTS))}: "
        "reinstall the package"
    )


def find_executable() -> Path:
    """The `usbagent` being run: argv[0] if it is the console script, else the one beside
    this Python (python -m usbagent in a venv), else the one on $PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "usbagent":
        return check_executable(argv0.absolute())
    beside = Path(sys.executable).parent / "usbagent"
    if beside.exists():
        return check_executable(beside)
    found = shutil.which("usbagent")
    if found is None:
        raise UsbagentError(
            "cannot find the installed `usbagent` executable (not argv[0], not beside "
            f"{sys.executable}, not on $PATH): install the package first (pip install .)"
        )
    return check_executable(Path(found).absolute())


def check_executable(path: Path) -> Path:
    """`path` if systemd could exec it: a file, executable, whose #! interpreter exists."""
    if not path.is_file():
        raise UsbagentError(f"{path}: no such file; ExecStart= must name an installed usbagent")
    if not os.access(path, os.X_OK):
        raise UsbagentError(f"{path}: not executable (chmod +x it, or reinstall the package)")
    with path.open("rb") as f:
        first = f.readline(4096)
    if first.startswith(b"#!"):
        words = first[2:].split()
        interpreter = Path(os.fsdecode(words[0])) if words else Path()
        if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
            raise UsbagentError(
                f"{path}: its interpreter {interpreter} does not exist or is not executable "
                "(recreate the virtualenv / reinstall the package)"
            )
    return path


def unit_path(path: Path) -> str:
    """A path as a unit file word: % escaped, quoted when it holds spaces."""
    text = str(path)
    problem = unit_path_problem(text)  # config applies it to the configured paths too
    if problem:
        raise UsbagentError(problem)
    text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def label_glob(label: str) -> str:
    """A udev glob matching `label` in any letter case (FAT stores labels upper-case)."""
    problem = label_problem(label)  # the rule config.load applies to usb.labels
    if problem:
        raise UsbagentError(f"usb.labels: {problem}")
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in label)


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace @name@ placeholders; one without a value is a bug in the template."""
    missing = set(PLACEHOLDER.findall(template)) - set(values)
    if missing:
        raise UsbagentError(f"internal error: template placeholders without value: {missing}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render(config: Config, usbagent: Path, python: Path = Path(sys.executable)) -> dict[Path, str]:
    """Every file to install, by path relative to the root. Pure: reads only the templates.

    `python` (the interpreter usbagent runs on) starts the OnFailure hook, so that the hook
    does not depend on the `usbagent` script whose absence it may have to report.
    """
    if config.path is None:
        raise UsbagentError("install needs a config file (pass --config PATH)")
    extra = [config.agent.metrics_file.parent] if config.agent.metrics_file else []
    values = {
        "usbagent": unit_path(usbagent),
        "python": unit_path(python),
        "config": unit_path(config.path.resolve()),
        "state_dir": unit_path(config.agent.state_dir),
        "destination": unit_path(config.archive.destination),
        "extra_rw": "".join(" " + unit_path(p) for p in extra),
    }
    files = {
        UNIT_DIR / name: fill(template("systemd", name).read_text(), values)
        for name in UNIT_TEMPLATES
    }
    matches = "\n".join(
        f'ENV{{{prop}}}=="{label_glob(label)}", GOTO="usbagent_backup"'
        for label in config.usb.labels
        for prop in ("ID_FS_LABEL", "ID_PART_ENTRY_NAME")
    )
    rule = template("udev", RULE_TEMPLATE).read_text()
    files[RULE_DIR / RULE_TEMPLATE] = fill(
        rule, {"matches": matches, "config": str(config.path.resolve())}
    )
    return files


def write(files: Mapping[Path, str], root: Path) -> None:
    for rel, text in files.items():
        target = root / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, text.encode())
        except OSError as exc:
            raise UsbagentError(f"cannot write {target}: {exc.strerror}") from None


def verify_units(unit_dir: Path) -> None:
    """`systemd-analyze verify` the rendered units; any complaint fails the install.

    verify exits 0 on unknown keys (it only warns), but a misspelt hardening key is a
    sandbox silently not applied, so any output on stderr counts as failure.
    """
    # A template is verified through an instance of it (verify finds the template beside it).
    names = [n.replace("@.", "@usbagent.service.") for n in UNIT_TEMPLATES]
    units = [str(unit_dir / n) for n in names]
    stamp_existed = UNITS_LOAD_STAMP.exists()
    try:
        result = _call(["systemd-analyze", "verify", "--man=no", *units])
    finally:
        if not stamp_existed:  # made by verify's test manager: ours to remove
            UNITS_LOAD_STAMP.unlink(missing_ok=True)
    complaints = result.stderr.strip()
    if result.returncode != 0 or complaints:
        first = complaints.splitlines()[0] if complaints else f"exit {result.returncode}"
        raise UsbagentError(f"systemd-analyze verify rejected the rendered units: {first}")


def _call(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise UsbagentError(f"{cmd[0]} not found: install systemd (and udev)") from None


def _step(cmd: list[str]) -> None:
    result = _call(cmd)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise UsbagentError(f"`{' '.join(cmd)}` failed: {why}")


def activate(config: Config) -> None:
    """Make the installed files live: state dir, reloads, enable and (re)start.

    Restart, not `enable --now`: after an upgrade the running agent would otherwise keep the
    old code and the old unit's sandbox until the next boot.
    """
    config.agent.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _step(["systemctl", "daemon-reload"])
    _step(["udevadm", "control", "--reload"])
    _step(["systemctl", "enable", *ENABLE])
    _step(["systemctl", "restart", *ENABLE])


def run(config: Config | None, args: argparse.Namespace) -> int:
    assert config is not None  # install is not in cli.NO_CONFIG_NEEDED
    files = render(config, find_executable())
    if args.prefix:
        root = Path(args.prefix)
        write(files, root)
        verify_units(root / UNIT_DIR)
        print(f"usbagent install: wrote {len(files)} files under {root}")
        return 0
    if not Path("/run/systemd/system").is_dir():  # sd_booted(3)
        raise UsbagentError(
            "systemd is not running as the init system here; nothing was installed "
            "(use --prefix DIR to write the files for another root)"
        )
    with tempfile.TemporaryDirectory(prefix="usbagent-install-") as stage:
        write(files, Path(stage))
        verify_units(Path(stage) / UNIT_DIR)
    write(files, Path("/"))
    activate(config)
    print(f"usbagent install: installed, enabled and (re)started {', '.join(ENABLE)}")
    return 0
