"""Root's side of the privilege boundary: run the `asuser` helper as each user to tell.

The agent never talks to a user's session bus itself (that bus refuses root); it starts the
helper as root with the user's ids, and the helper drops to them after its imports, because
the interpreter may live where only root can read (a venv on a pyenv under /root).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import sys

from usbagent.asuser import user_bus_address
from usbagent.logind import Session
from usbagent.outbox import Note

log = logging.getLogger(__name__)

# The helper may wait this long for a notification server, plus its own start-up. Its
# Python start-up alone took over 20 s on a loaded machine (the vm tier under TCG); a helper
# killed then leaves a logged-in user's note for the next login, and is shown twice if it
# had already called Notify. Waiting costs nothing: the event loop stays free meanwhile.
HELPER_SLACK_SECONDS = 90


async def deliver_as(uid: int, note: Note, wait: float) -> bool:
    """Run the helper as `uid` to show `note` on that user's session bus; True if shown."""
    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        log.warning("notification for uid %d not delivered: no such user", uid)
        return False
    if os.geteuid() not in (0, uid):
        log.warning("cannot notify uid %d: only root can deliver to another user", uid)
        return False
    groups = ",".join(str(g) for g in os.getgrouplist(account.pw_name, account.pw_gid))
    env = {
        "HOME": account.pw_dir,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DBUS_SESSION_BUS_ADDRESS": user_bus_address(uid),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "usbagent.asuser", "deliver", "--wait", str(wait),
            "--uid", str(uid), "--gid", str(account.pw_gid), "--groups", groups,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd="/", env=env,
        )  # fmt: skip
    except OSError as exc:
        log.warning("cannot start the notification helper for %s: %s", account.pw_name, exc)
        return False
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(note.to_json()).encode()),
            timeout=wait + HELPER_SLACK_SECONDS,
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("notification helper for %s timed out", account.pw_name)
        return False
    if proc.returncode != 0:
        log.warning(
            "notification for %s not delivered: %s",
            account.pw_name,
            err.decode(errors="replace").strip() or f"helper exit {proc.returncode}",
        )
        return False
    log.info("notified %s (id %s): %s", account.pw_name, out.decode().strip(), note.summary)
    return True


async def deliver_to_users(sessions: list[Session], note: Note, wait: float) -> bool:
    """Deliver to every user with a graphical session (once per user); True if anyone saw it."""
    uids = sorted({s.uid for s in sessions})
    results = await asyncio.gather(*(deliver_as(uid, note, wait) for uid in uids))
    return any(results)
