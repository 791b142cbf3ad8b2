"""`python -m tests.stack up|down|status|clean|run`: the device test stack for a shell.

`up` starts whichever daemons are not answering and remembers what it started in
/run/usbagent-stack/started.json; `down` stops exactly those; `status` says what answers
and which loop devices belong to test stacks; `clean` removes what killed test runs left;
`run -- CMD` starts what is missing, runs CMD and stops only what it started itself, so a
stack someone brought up with `up` (or a real one) stays as it was (`make demo` uses it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.stack.daemons import DEFAULT_LOG_DIR, Stack, StackError
from tests.stack.sticks import PREFIX, clean_leftovers, loops


def up(log_dir: Path) -> int:
    _report_cleaned(clean_leftovers())
    previous = Stack.load(log_dir)
    stack = Stack(log_dir=log_dir).start()
    print(f"stack up; started now: {', '.join(stack.started) or 'nothing (all were answering)'}")
    stack.started = previous.started + stack.started  # a second `up` keeps the first's record
    stack.dbus_pid = stack.dbus_pid or previous.dbus_pid
    stack.udisksd_pid = stack.udisksd_pid or previous.udisksd_pid
    stack.save()
    print(f"system bus: {stack.system_bus_address}; udisksd log: {stack.udisksd_log}")
    return 0


def down(log_dir: Path) -> int:
    stack = Stack.load(log_dir)
    started = list(stack.started)
    stack.stop()
    stack.state_file.unlink(missing_ok=True)
    print(f"stopped: {', '.join(started) or 'nothing (`up` had started no daemon)'}")
    return 0


def status(log_dir: Path) -> int:
    answering = Stack(log_dir=log_dir).status()
    started = Stack.load(log_dir).started
    for name, ok in answering.items():
        mine = " (started by `up`)" if name in started else ""
        print(f"{name:8} {'answering' if ok else 'NOT answering'}{mine}")
    for dev, back in loops():
        if PREFIX in back:
            print(f"loop     {dev} <- {back}")
    return 0 if all(answering.values()) else 1


def clean(log_dir: Path) -> int:
    _report_cleaned(clean_leftovers())
    return 0


def _report_cleaned(cleaned: list[str]) -> None:
    for item in cleaned:
        print(f"removed leftover of a killed run: {item}")


def run(log_dir: Path, argv: Sequence[str]) -> int:
    """CMD's exit status, with the stack answering while it runs."""
    _report_cleaned(clean_leftovers())
    stack = Stack(log_dir=log_dir).start()
    try:
        return subprocess.run(argv, check=False).returncode
    finally:
        stack.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "clean", "run"])
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR)
    parser.add_argument("argv", nargs="*", help="with run: the command to run")
    args = parser.parse_args(argv)
    if (args.command == "run") != bool(args.argv):
        parser.error("a command goes with `run -- CMD`, and only with it")
    try:
        if args.command == "run":
            return run(args.log_dir, args.argv)
        command = {"up": up, "down": down, "status": status, "clean": clean}[args.command]
        return command(args.log_dir)
    except StackError as e:
        print(f"python -m tests.stack {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
