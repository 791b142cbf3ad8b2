"""usbagent installed in the guest the way a user installs it, and what the cases ask of it.

The project goes in as wheels built from this checkout (`pip wheel .`, dependencies
included), on a read-only disk the guest sees as /dev/vdb. In the guest: a venv made with
the guest's own python3, `pip install --no-index` from those wheels, a config, an age key,
then `usbagent install` (units and udev rule as shipped, enabled and started).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.vm.driver import Result, Vm, VmError, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENV = "/opt/usbagent"
USBAGENT = f"{VENV}/bin/usbagent"
CONFIG = "/etc/usbagent/config.toml"
RECIPIENTS = "/etc/usbagent/recipients"
IDENTITY = "/root/backup-key.txt"
DESTINATION = "/var/backups/usbagent"
STATE = "/var/lib/usbagent"
PREFIX = "vm"
USER = "alice"
USER_UID = 1000
NOTIFY_LOG = f"/home/{USER}/notifications.log"
AGENT = "usbagent.service"

CONFIG_TEXT = f"""\
[archive]
sources = ["/data"]
destination = "{DESTINATION}"
recipients_file = "{RECIPIENTS}"
prefix = "{PREFIX}"
identity_file = "{IDENTITY}"

[usb]
labels = ["sovereign-backup"]
require_usb = true

[agent]
state_dir = "{STATE}"
"""


def build_payload(workdir: Path) -> Path:
    """An ext4 image holding the wheels of this checkout and of its dependencies."""
    tree = workdir / "payload"
    wheels = tree / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as build:
        subprocess.run(
            [str(ROOT / ".venv/bin/pip"), "wheel", "-q", str(ROOT), "-w", str(wheels)],
            check=True, capture_output=True, cwd=build,
        )  # fmt: skip
    image = workdir / "payload.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "payload", "-d", str(tree), str(image), "64M"],
        check=True,
    )
    return image


class Guest:
    """The booted guest, with the usbagent-specific steps the cases share."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm

    def sh(self, cmd: str, timeout: float = 120) -> Result:
        return self.vm.sh(cmd, timeout)

    def ok(self, cmd: str, timeout: float = 120) -> str:
        return self.vm.ok(cmd, timeout)

    def usbagent(self, args: str, timeout: float = 120) -> Result:
        return self.vm.sh(f"{USBAGENT} --config {CONFIG} {args}", timeout)

    # --- a user's installation ----------------------------------------------------------

    def install(self) -> None:
        self.ok("mountpoint -q /mnt/payload || mount -o ro /dev/vdb /mnt/payload")
        # Generous deadlines: on a busy host TCG runs this venv step in minutes, not seconds.
        self.ok(f"python3 -m venv {VENV}", timeout=900)
        self.ok(
            f"{VENV}/bin/pip install -q --no-index --find-links /mnt/payload/wheels usbagent",
            timeout=1200,
        )
        self.ok("mkdir -p /data/docs /data/photos " + DESTINATION)
        for i in range(20):
            self.vm.write(f"/data/docs/note-{i}.txt", f"note {i}\n" * (50 + i))
        self.ok("head -c 300000 /dev/urandom > /data/photos/cat.jpg")
        self.ok(f"age-keygen -o {IDENTITY} 2>/dev/null && chmod 600 {IDENTITY}")
        self.ok(f"mkdir -p /etc/usbagent && age-keygen -y {IDENTITY} > {RECIPIENTS}")
        self.vm.write(CONFIG, CONFIG_TEXT)
        self.usbagent("install", timeout=600).check("usbagent install")

    # --- what the cases look at ---------------------------------------------------------

    def status(self) -> tuple[int, dict[str, Any]]:
        r = self.usbagent("status --json")
        return r.rc, dict(json.loads(r.out))

    def check(self, name: str) -> dict[str, Any]:
        _, st = self.status()
        for c in st["checks"]:
            if c["name"] == name:
                return dict(c)
        raise AssertionError(f"no status check {name!r} in {st}")

    def events(self) -> list[dict[str, Any]]:
        """The agent's recorded outcomes, oldest first (state dir events.jsonl)."""
        out = self.sh(f"cat {STATE}/events.jsonl").out
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_event(self, kind: str, after: int, timeout: float = 180) -> dict[str, Any]:
        """The first outcome of `kind` recorded after the first `after` events."""
        return self.wait_event_where(
            f"a {kind} outcome", lambda e: e["kind"] == kind, after, timeout
        )

    def wait_event_where(
        self,
        what: str,
        pred: Callable[[dict[str, Any]], bool],
        after: int = 0,
        timeout: float = 300,
    ) -> dict[str, Any]:
        """The first outcome `pred` accepts past the first `after` events, polled each second.
        After a power cut no count holds (the cut may take the file's last lines with it):
        pass after=0 and let `pred` tell the new outcomes by their time."""
        found = wait_for(
            lambda: next((e for e in self.events()[after:] if pred(e)), None),
            timeout,
            what,
            every=1.0,
        )
        return dict(found)

    def wait_copying(self, sticks: int, mib: int, timeout: float = 300) -> None:
        """Wait until `sticks` sticks each hold a `.partial` copy of at least `mib` MiB: a
        copy is under way, its final name not there yet."""
        count = f"find /media -path '*/usbagent/*.partial' -size +{mib}M 2>/dev/null | wc -l"
        self.vm.wait_guest(
            f'[ "$({count})" -ge {sticks} ]', timeout, f"copies under way to {sticks} stick(s)"
        )

    def digests(self) -> dict[str, str]:
        """name -> sha256 of each archive in the destination, from their sidecars."""
        out = self.ok(f"cat {DESTINATION}/*.sha256")
        return {name: digest for digest, name in (line.split() for line in out.splitlines())}

    def unit(self, unit: str, *props: str) -> dict[str, str]:
        out = self.ok(f"systemctl show {shlex.quote(unit)} -p {','.join(props)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def archives(self) -> list[str]:
        out = self.ok(f"ls -1 {DESTINATION}")
        return sorted(n for n in out.split() if n.endswith(".tar.zst.age"))

    def journal(self, unit: str, since: str = "") -> str:
        extra = f" --since {shlex.quote(since)}" if since else ""
        return self.ok(f"journalctl -q -o cat -u {shlex.quote(unit)}{extra} --no-pager")

    def cursor(self) -> str:
        """The agent's journal position now, to look from later (`agent_log_after`).

        It is the cursor of the agent's own last entry: systemd 252's `--after-cursor`
        with a `-u` match skips the first matching entry after a cursor that does not match
        (it steps twice from the seek position), so a cursor taken over the whole journal
        silently hides the first line the agent logs after it.
        """
        out = self.ok(f"journalctl -u {AGENT} -n 0 --show-cursor -q --no-pager")
        cursor = out.strip().rsplit("cursor: ", 1)[-1]
        if not cursor.startswith("s="):
            raise VmError(f"no journal cursor for {AGENT}: {out!r}")
        return cursor

    def _after(self, cursor: str) -> str:
        return f"journalctl -q -o cat -u {AGENT} --after-cursor {shlex.quote(cursor)} --no-pager"

    def agent_log_after(self, cursor: str) -> str:
        """What the agent logged after `cursor`."""
        return self.ok(self._after(cursor))

    def wait_logged(self, cursor: str, text: str, timeout: float, what: str) -> None:
        """Wait until the agent logged a line holding `text` (a fixed string) after `cursor`."""
        self.vm.wait_guest(f"{self._after(cursor)} | grep -qF {shlex.quote(text)}", timeout, what)

    def diagnosis(self, lines: int = 80) -> str:
        """The agent's and the nightly job's recent journal, for a failing case's report.

        Never raises: it is asked after something already went wrong, possibly with the
        machine powered off or its command channel stuck.
        """
        if not self.vm.running:
            return f"(guest not running; console log {self.vm.console_log})"
        cmd = (
            f"journalctl -q -o short-monotonic -n {lines} --no-pager "
            "-u usbagent.service -u usbagent-archive.service"
        )
        try:
            r = self.vm.sh(cmd, timeout=180)
        except (VmError, OSError) as e:
            return f"(no journal: {e})"
        return r.out if r.rc == 0 else f"(journalctl exit {r.rc}: {r.err})\n{r.out}"

    # --- alice's desktop ----------------------------------------------------------------

    def login(self) -> None:
        """alice logs in graphically: a logind x11 session, her session bus, dunst on it."""
        self.ok("systemctl start vm-desktop.service")
        self.vm.wait_guest(
            f"[ -S /run/user/{USER_UID}/bus ] && "
            f"busctl --machine={USER}@.host --user status org.freedesktop.Notifications "
            ">/dev/null 2>&1",
            300,
            "alice's session bus with dunst on it",
        )

    def logout(self) -> None:
        self.ok("systemctl stop vm-desktop.service")
        # Gone, or "closing" (logind keeps it listed until its last process is gone).
        open_sessions = (
            f"loginctl list-sessions --no-legend | awk '$3 == \"{USER}\" {{print $1}}' "
            "| xargs -r -n1 loginctl show-session -p State --value | grep -qv closing"
        )
        self.vm.wait_guest(f"! ( {open_sessions} )", 60, "alice's session to end")

    def clear_notifications(self) -> None:
        """Forget what was recorded so far, so a case sees only its own notifications."""
        self.ok(f"truncate -s 0 {NOTIFY_LOG}")

    def notifications(self) -> str:
        """What dbus-monitor recorded of Notify calls on alice's session bus."""
        return self.sh(f"cat {NOTIFY_LOG}").out

    def notes(self) -> list[tuple[str, str]]:
        """(summary, body) of each Notify call recorded, oldest first."""
        return parse_notify_log(self.notifications())

    def wait_notified(self, text: str, timeout: float = 60) -> None:
        self.vm.wait_guest(
            f"grep -qF {shlex.quote(text)} {NOTIFY_LOG}", timeout, f"a notification with {text!r}"
        )


def parse_notify_log(text: str) -> list[tuple[str, str]]:
    """(summary, body) of each Notify call in dbus-monitor's output.

    A call is a `method call ... member=Notify` line, then its arguments one per line at an
    indent of three spaces (a string's text may run over several lines): app name, replaces
    id, icon, summary, body, actions, hints, timeout.
    """
    calls = []
    for block in text.split("method call ")[1:]:
        args = re.split(r"\n {3}(?=\S)", block.split("\n", 1)[-1].rstrip("\n"))
        args[0] = args[0].lstrip(" ")
        strings = [a[len('string "') : -1] for a in args if a.startswith('string "')]
        if len(strings) >= 4:  # app name, icon, summary, body
            calls.append((strings[2], strings[3]))
    return calls
