"""Reading `systemctl show` as systemd 252 (Debian 12) really prints it."""

from __future__ import annotations

from datetime import UTC, datetime

from usbagent import statuschecks, systemd

# Captured in the Debian 12 guest (systemd 252.39-1~deb12u2) with
# `TZ=UTC LC_ALL=C systemctl show --timestamp=unix TIMER SERVICE -p ...`: the timer's
# NextElapseUSecRealtime and LastTriggerUSec ignore --timestamp=unix, *Timestamp obeys it.
SHOW_252 = """\
NextElapseUSecRealtime=Wed 2026-12-02 02:00:25 UTC
LastTriggerUSec=Tue 2026-12-01 22:03:25 UTC
LoadState=loaded
ActiveState=active
UnitFileState=enabled

ExecMainStartTimestamp=@1796162605
Result=success
"""


def test_timer_times_in_systemd_252_default_style_are_read() -> None:
    timer, service = systemd.parse_show(SHOW_252, [systemd.ARCHIVE_TIMER, systemd.ARCHIVE_SERVICE])
    assert timer.time("NextElapseUSecRealtime") == datetime(2026, 12, 2, 2, 0, 25, tzinfo=UTC)
    assert timer.time("LastTriggerUSec") == datetime(2026, 12, 1, 22, 3, 25, tzinfo=UTC)
    assert service.time("ExecMainStartTimestamp") == datetime.fromtimestamp(1796162605, UTC)


def test_status_shows_the_timer_runs_systemd_252_reports() -> None:
    units = dict(
        zip(
            systemd.UNITS,
            systemd.parse_show(
                "LoadState=loaded\n\nLoadState=loaded\n\n" + SHOW_252.split("\n\n")[0],
                systemd.UNITS,
            ),
            strict=True,
        )
    )
    check = statuschecks.check_timer(units, None)
    assert check.message == ("active; last run 2026-12-01 22:03 UTC, next 2026-12-02 02:00 UTC"), (
        check.message
    )


def test_unset_and_unreadable_timestamps_are_none() -> None:
    for value in ("", "@0", "@x", "Wed 2026-12-02 02:00:25 CET", "0"):
        assert systemd.parse_timestamp(value) is None, value
