"""usbagent installed in the guest the way a user installs it, and what the cases ask of it.

The project goes in as wheels built from this checkout (`pip wheel .`, dependencies
included), on a read-only disk the guest sees as /dev/vdb. In the guest: a venv made with
the guest's own python3, `pip install --no-index` from those wheels, a config, an age key,
then `usbagent install` (units and udev rule as shipped, enabled and started).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.vm.driver import Result, Vm

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
        self.ok(f"python3 -m venv {VENV}", timeout=300)
        self.ok(
            f"{VENV}/bin/pip install -q --no-index --find-links /mnt/payload/wheels usbagent",
            timeout=600,
        )
        self.ok("mkdir -p /data/docs /data/photos " + DESTINATION)
        for i in range(20):
            self.vm.write(f"/data/docs/note-{i}.txt", f"note {i}\n" * (50 + i))
        self.ok("head -c 300000 /dev/urandom > /data/photos/cat.jpg")
        self.ok(f"age-keygen -o {IDENTITY} 2>/dev/null && chmod 600 {IDENTITY}")
        self.ok(f"mkdir -p /etc/usbagent && age-keygen -y {IDENTITY} > {RECIPIENTS}")
        self.vm.write(CONFIG, CONFIG_TEXT)
        self.usbagent("install", timeout=300).check("usbagent install")

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
        self.vm.wait_guest(
            f'tail -n +{after + 1} {STATE}/events.jsonl | grep -q \'"kind": "{kind}"\'',
            timeout,
            f"a {kind} outcome",
        )
        return next(e for e in self.events()[after:] if e["kind"] == kind)

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
        """A journal position to look from later (`journal_after`)."""
        out = self.ok("journalctl -n 0 --show-cursor -q --no-pager")
        return out.strip().rsplit("cursor: ", 1)[-1]

    def journal_after(self, cursor: str, unit: str = "") -> str:
        u = f" -u {shlex.quote(unit)}" if unit else ""
        return self.ok(f"journalctl -q -o cat --after-cursor {shlex.quote(cursor)}{u} --no-pager")

    # --- alice's desktop ----------------------------------------------------------------

    def login(self) -> None:
        """alice logs in graphically: a logind x11 session, her session bus, dunst on it."""
        self.ok("systemctl start vm-desktop.service")
        self.vm.wait_guest(
            f"[ -S /run/user/{USER_UID}/bus ] && "
            f"busctl --machine={USER}@.host --user status org.freedesktop.Notifications "
            ">/dev/null 2>&1",
            90,
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

    def wait_notified(self, text: str, timeout: float = 60) -> None:
        self.vm.wait_guest(
            f"grep -qF {shlex.quote(text)} {NOTIFY_LOG}", timeout, f"a notification with {text!r}"
        )
