"""Command line: parse arguments, load the config once, dispatch to one action module.

Action modules are imported lazily so that `usbagent status` (run every minute by monitoring)
does not pay for importing the encryption or D-Bus stacks it does not use.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from usbagent import __version__
from usbagent.config import ConfigError, load, resolve_path
from usbagent.errors import UsbagentError

# command -> module whose `run(config, args) -> int` implements it
COMMANDS = {
    "archive": "usbagent.archive",
    "agent": "usbagent.agent",
    "sync": "usbagent.synccmd",
    "status": "usbagent.status",
    "doctor": "usbagent.doctor",
    "verify": "usbagent.verify",
    "restore": "usbagent.restore",
    "install": "usbagent.install",
    "demo": "usbagent.demo",
    "notify-failure": "usbagent.unitfailure",
}
# Commands that must work without a config file (they make or inspect their own).
NO_CONFIG_NEEDED = {"demo", "verify", "restore"}
# Commands that still run (with config=None) when the config is broken: the unit-failure
# hook must record and report a failure even when a bad config is what caused it.
RUN_WITH_BROKEN_CONFIG = {"notify-failure"}


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a subcommand's absent option from overwriting the top-level one.
    p.add_argument("--config", default=argparse.SUPPRESS, help="config file (TOML)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usbagent",
        description="Encrypted nightly archives, copied to a labeled USB stick when plugged in.",
    )
    parser.add_argument("--version", action="version", version=f"usbagent {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        _common(p)
        return p

    add("archive", "make one encrypted archive now, then prune by retention")
    add("agent", "run the hotplug daemon")
    p = add("sync", "copy, verify and prune onto an already-mounted stick")
    p.add_argument("mountpoint")
    p = add("status", "truthful health of the whole system (exit 0/1/2/3)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add("doctor", "check the deployment and say what to fix")
    p = add("verify", "check archives against their .sha256 sidecars")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--identity", help="age identity: also decrypt and read the whole tar")
    p = add("restore", "decrypt and extract an archive")
    p.add_argument("archive")
    p.add_argument("--identity", required=True, help="age identity file")
    p.add_argument("--to", required=True, dest="target", help="folder to extract into")
    p.add_argument("members", nargs="*", metavar="MEMBER")
    p = add("install", "install systemd units and udev rules")
    p.add_argument("--prefix", help="write files under this root and touch nothing else")
    add("demo", "the whole flow on this machine with a throwaway key and data")
    # Hidden (systemd's OnFailure= hook): a subparser given no help is left out of --help;
    # help=SUPPRESS would still be listed, as "notify-failure ==SUPPRESS==".
    p = sub.add_parser("notify-failure")
    _common(p)
    p.add_argument("unit", help="the failed unit (systemd's %%i)")
    return parser


# argparse binds an nargs="*" positional before it sees later options, so names after the
# options (`restore A --identity K --to D MEMBER...`) come back unrecognised: give them to it.
TRAILING_POSITIONALS = {"restore": "members", "verify": "paths"}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    dest = TRAILING_POSITIONALS.get(args.command)
    if extra and dest and not any(e.startswith("-") for e in extra):
        setattr(args, dest, [*getattr(args, dest), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    path = resolve_path(getattr(args, "config", None))
    try:
        config = None if args.command in NO_CONFIG_NEEDED and not path.exists() else load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"usbagent: config {exc.path}: {problem}", file=sys.stderr)
        if args.command == "status":  # monitoring must still get its line (or JSON) and 3
            from usbagent import status

            return status.report_broken_config(exc, getattr(args, "json", False))
        if args.command not in RUN_WITH_BROKEN_CONFIG:
            return 1
        config = None
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(config, args))
    except UsbagentError as exc:
        print(f"usbagent {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"usbagent {args.command}: interrupted", file=sys.stderr)
        return 1
