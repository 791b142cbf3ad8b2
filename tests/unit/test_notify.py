"""What the desktop is told, and when (pure parts of notify, missed, logind and the outbox)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from usbagent import logind, missed, notify, outbox
from usbagent.events import Kind, Outcome
from usbagent.outbox import CRITICAL, NORMAL, Note

T = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "ok", "summary", "urgency"),
    [
        ("stick-recognised", True, "Backup stick found: copying, do not remove it", NORMAL),
        ("sync", True, "Backup copied: stick safe to remove", NORMAL),  # no removal: older
        ("sync", False, "Backup copy to stick FAILED", CRITICAL),
        ("refused", False, "Backup stick not used", NORMAL),
        ("archive", False, "Nightly backup FAILED", CRITICAL),
        ("unit-failed", False, "Backup service failed: usbagent.service", CRITICAL),
        ("stale", False, "Backup is out of date", CRITICAL),
    ],
)
def test_render(kind: Kind, ok: bool, summary: str, urgency: int) -> None:
    note = notify.render(Outcome(kind, ok, "what happened", T, {"unit": "usbagent.service"}))
    assert note is not None
    assert (note.summary, note.urgency, note.time) == (summary, urgency, T)
    assert note.body.startswith("what happened")


def test_successful_archive_is_not_news() -> None:
    assert notify.render(Outcome("archive", True, "archive made", T)) is None


@pytest.mark.parametrize(
    ("removal", "title"),
    [
        ("powered-off", "Backup copied: stick safe to remove"),
        ("unmounted", "Backup copied: stick safe to remove"),
        ("left-mounted", "Backup copied: unmount the stick before removing it"),
        ("after-unmount", "Backup copied: unmount the stick before removing it"),
    ],
)
def test_sync_success_title_follows_how_the_stick_was_left_not_the_words(
    removal: str, title: str
) -> None:
    """The body is the summary exactly as recorded; the title comes from the removal fact,
    so words in the summary ("safe to remove") can neither add nor hide it."""
    summary = "2 archives copied, safe to remove later perhaps"
    note = notify.render(Outcome("sync", True, summary, T, {"removal": removal}))
    assert note is not None and (note.summary, note.body) == (title, summary)


def note(i: int, urgency: int = NORMAL) -> Note:
    return Note("refused", f"summary {i}", f"body {i}", urgency, T + timedelta(minutes=i))


def test_few_missed_notes_are_shown_singly_with_their_time() -> None:
    shown = missed.missed([note(1), note(2, CRITICAL)])
    assert [n.summary for n in shown] == [
        "Missed while you were away: summary 1",
        "Missed while you were away: summary 2",
    ]
    assert shown[1].urgency == CRITICAL and shown[0].body.endswith(": body 1")


def copied(i: int) -> Note:
    """A routine note: a clean copy, told the way the agent tells it."""
    out = Outcome("sync", True, f"copied {i}", T + timedelta(minutes=i), {"removal": "unmounted"})
    n = notify.render(out)
    assert n is not None
    return n


def test_many_missed_routine_notes_become_one_digest_newest_first() -> None:
    notes = [copied(i) for i in range(8)]
    (digest,) = missed.missed(notes)
    assert digest.summary == "Missed while you were away: 8 backup notifications"
    lines = digest.body.splitlines()
    assert lines[0].endswith("Backup copied: stick safe to remove. copied 7")
    assert lines[-1] == "... and 3 earlier routine notes" and len(lines) == missed.DIGEST_LINES + 1


def test_a_digest_shows_every_problem_however_many_routine_notes_came_after() -> None:
    """alice logs in after a night of syncs: the stick repaired first and the failed copy
    must be in what she sees, not folded away behind newer "copied" notes."""
    repaired = notify.render(
        Outcome("sync", True, "copied 1; its filesystem failed the check and was repaired", T,
                {"removal": "powered-off", "repaired": True})
    )  # fmt: skip
    failed = notify.render(Outcome("sync", False, "plugged in but not backed up: removed", T))
    assert repaired is not None and failed is not None
    (digest,) = missed.missed([repaired, failed, *(copied(i) for i in range(1, 9))])
    assert digest.urgency == CRITICAL  # the worst of them
    body = digest.body
    assert "its filesystem failed the check and was repaired" in body, body
    assert "Backup copy to stick FAILED. plugged in but not backed up: removed" in body, body
    lines = body.splitlines()
    assert len(lines) == missed.DIGEST_LINES + 1, body  # 2 problems + the 3 newest copies
    assert lines[0].endswith("copied 8") and lines[-1] == "... and 5 earlier routine notes"


def test_a_digest_of_only_problems_lists_them_all() -> None:
    notes = [note(i, CRITICAL) for i in range(missed.DIGEST_LINES + 4)]
    (digest,) = missed.missed(notes)
    lines = digest.body.splitlines()
    assert len(lines) == len(notes) and lines[-1].endswith("summary 0. body 0"), lines


@pytest.mark.parametrize(
    ("outcome", "routine"),
    [
        (Outcome("stick-recognised", True, "found", T), True),
        (Outcome("sync", True, "copied", T, {"removal": "powered-off"}), True),
        (Outcome("sync", True, "copied; repaired", T, {"repaired": True}), False),
        (Outcome("sync", False, "failed", T), False),
        (Outcome("refused", False, "not USB", T), False),
        (Outcome("unit-failed", False, "exit 203", T), False),
    ],
)
def test_only_a_clean_copy_or_a_found_stick_is_routine(outcome: Outcome, routine: bool) -> None:
    n = notify.render(outcome)
    assert n is not None and n.routine is routine


def test_a_kept_note_stays_routine_or_not_and_older_kept_notes_count_as_problems(
    tmp_path: Path,
) -> None:
    outbox.add(tmp_path, copied(1))
    outbox.add(tmp_path, note(2))
    assert [n.routine for n in outbox.pending(tmp_path)] == [True, False]
    stored = note(3).to_json()
    del stored["routine"]  # as a version before the field wrote it
    assert Note.from_json(stored).routine is False


@pytest.mark.parametrize(
    ("props", "graphical"),
    [
        ({"Type": "wayland", "Class": "user", "State": "active"}, True),
        ({"Type": "x11", "Class": "user", "State": "online"}, True),
        ({"Type": "x11", "Class": "greeter", "State": "active"}, False),
        ({"Type": "tty", "Class": "user", "State": "active"}, False),
        ({"Type": "wayland", "Class": "user", "State": "closing"}, False),
    ],
)
def test_is_graphical(props: dict[str, str], graphical: bool) -> None:
    assert logind.is_graphical(props) is graphical


def test_outbox_keeps_bounded_and_discards_only_what_was_delivered(tmp_path: Path) -> None:
    for i in range(outbox.MAX_PENDING + 5):
        outbox.add(tmp_path, note(i))
    kept = outbox.pending(tmp_path)
    assert len(kept) == outbox.MAX_PENDING and kept[0].summary == "summary 5"
    outbox.discard(tmp_path, kept[:10])
    assert outbox.pending(tmp_path)[0].summary == "summary 15"
    outbox.add(tmp_path, note(999))
    assert outbox.pending(tmp_path)[-1].summary == "summary 999"
