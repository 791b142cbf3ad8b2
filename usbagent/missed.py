"""Notifications nobody saw: the digest shown at the next login, and emptying the outbox.

What could not be delivered is kept in the state dir (`outbox`, written atomically under a
lock); when someone logs in (or is reachable again), they get each missed note, or one
digest when there are many, and only what was shown leaves the outbox: a helper that failed
halfway loses nothing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from usbagent import outbox
from usbagent.delivery import deliver_as
from usbagent.logind import Session
from usbagent.outbox import Note

# More missed notifications than this become one digest instead of a burst of pop-ups.
MAX_MISSED_SINGLY = 3
DIGEST_LINES = 5
MISSED = "Missed while you were away"


def missed(notes: list[Note]) -> list[Note]:
    """What to show someone who just logged in: each missed note, or one digest of many.

    The digest lists every problem, however many: someone who was away must learn of each
    one. Only routine notes beyond DIGEST_LINES are folded into a count, so a burst of
    "copied" notes can never push a failure or a repaired stick out of sight.
    """
    if len(notes) <= MAX_MISSED_SINGLY:
        return [
            Note(n.kind, f"{MISSED}: {n.summary}", f"{_stamp(n.time)}: {n.body}", n.urgency, n.time)
            for n in notes
        ]
    shown = _digest_lines(notes)
    lines = [f"{_stamp(n.time)}: {n.summary}. {n.body}" for n in reversed(shown)]
    if len(notes) > len(shown):
        lines.append(f"... and {len(notes) - len(shown)} earlier routine notes")
    return [
        Note(
            kind="digest",
            summary=f"{MISSED}: {len(notes)} backup notifications",
            body="\n".join(lines),
            urgency=max(n.urgency for n in notes),
            time=notes[-1].time,
        )
    ]


def _digest_lines(notes: list[Note]) -> list[Note]:
    """The notes a digest shows, oldest first: all problems, then the newest routine ones
    while fewer than DIGEST_LINES lines are used."""
    problems = sum(not n.routine for n in notes)
    room = max(DIGEST_LINES - problems, 0)
    routine = [i for i, n in enumerate(notes) if n.routine]
    keep = set(routine[len(routine) - room :] if room else [])
    return [n for i, n in enumerate(notes) if not n.routine or i in keep]


def _stamp(t: datetime) -> str:
    return t.astimezone().strftime("%a %d %b %H:%M")


async def keep(state_dir: Path, note: Note) -> None:
    """Keep a note nobody saw for the next login (and for `usbagent status` to count)."""
    await asyncio.to_thread(outbox.add, state_dir, note)


async def deliver_missed(session: Session, state_dir: Path, wait: float) -> None:
    """Show a user who just logged in what they missed; keep it if that fails."""
    notes = await asyncio.to_thread(outbox.pending, state_dir)
    if not notes:
        return
    shown = [await deliver_as(session.uid, n, wait) for n in missed(notes)]
    if all(shown):
        await asyncio.to_thread(outbox.discard, state_dir, notes)
