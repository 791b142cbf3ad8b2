"""The one `systemctl show` client: reading it as systemd 252 (Debian 12) really prints it."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from usbagent import statuschecks, systemd, unitfailure

PACKAGE = Path(systemd.__file__).parent

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


def test_one_unit_with_values_holding_equals_signs() -> None:
    """What the OnFailure hook asks for: one unit, ExecStart full of `=` and `;`."""
    text = "Result=exit-code\nExecStart={ path=/a ; argv[]=/a x=y ; status=0/0 }\nNRestarts=n/a\n\n"
    (unit,) = systemd.parse_show(text, ["u.service"])
    assert unit.get("Result") == "exit-code"
    assert unit.get("ExecStart") == "{ path=/a ; argv[]=/a x=y ; status=0/0 }"
    assert unit.get("NRestarts") == "" and unit.number("NRestarts") is None


def test_a_systemctl_that_cannot_be_run_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status, doctor and the failure hook get one line, never a traceback."""
    (tmp_path / "systemctl").write_text("#!/bin/sh\n")  # not executable
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(systemd.SystemdUnavailable, match="cannot run systemctl: Permission denied"):
        systemd.show([systemd.AGENT_SERVICE], ["Result"])
    props, why = unitfailure.query(systemd.AGENT_SERVICE, user=False)
    assert props == {} and why == "systemctl show failed: cannot run systemctl: Permission denied"


def test_the_scope_is_the_callers_or_the_environments() -> None:
    assert systemd.scope_args(user=True) == ["--user"]
    assert systemd.scope_args(user=False) == []


def test_systemd_is_the_only_systemctl_show_client() -> None:
    """One client, one parser: no other module builds a `systemctl ... show` command."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List) and node.elts:
                words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if words[:1] == ["systemctl"] and "show" in words:
                    found.append(path.stem)
    assert found == ["systemd"]
