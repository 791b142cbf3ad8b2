"""Why a unit failed, in one line, from what systemd reports (pure parts of the hook)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from usbagent import state
from usbagent.events import Outcome
from usbagent.systemd import user_scope
from usbagent.unitfailure import (
    describe,
    outcome_for,
    props_from_env,
    started_at,
    with_job_reason,
)

UNIT = "usbagent-archive.service"
EXEC_START = (
    "{ path=/x/usbagent ; argv[]=/x/usbagent --config /etc/usbagent/config.toml archive ; "
    "ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; "
    "status=0/0 }"
)


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        (
            {"Result": "exit-code", "ExecMainCode": "1", "ExecMainStatus": "203",
             "ExecStart": EXEC_START},
            "cannot run /x/usbagent: not found or not executable (status 203/EXEC)",
        ),
        (
            {"Result": "exit-code", "ExecMainCode": "1", "ExecMainStatus": "226"},
            "its sandbox could not be set up (a ReadWritePaths= folder missing?) "
            "(status 226/NAMESPACE)",
        ),
        ({"Result": "exit-code", "ExecMainCode": "1", "ExecMainStatus": "1"},
         "exited with status 1"),
        ({"Result": "watchdog", "ExecMainCode": "2", "ExecMainStatus": "6"},
         "stopped answering its watchdog (hung) and was killed"),
        ({"Result": "signal", "ExecMainCode": "2", "ExecMainStatus": "9"}, "killed by SIGKILL"),
        ({"Result": "start-limit-hit"}, "restarted too often; systemd gave up restarting it"),
        ({}, "result unknown"),
    ],
)  # fmt: skip
def test_describe(props: dict[str, str], reason: str) -> None:
    assert describe(UNIT, props) == f"{UNIT} failed: {reason}"


def test_exec_stop_post_environment() -> None:
    env = {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "SEGV"}
    assert describe(UNIT, props_from_env(env)) == f"{UNIT} failed: killed by SIGSEGV"


def test_clean_stop_records_nothing() -> None:
    env = {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}
    assert outcome_for("usbagent.service", env) is None


def test_scope() -> None:
    assert user_scope({"MANAGERPID": "42"})
    assert not user_scope({})
    assert not user_scope({"MANAGERPID": "42", "USBAGENT_SYSTEMD_SCOPE": "system"})
    assert user_scope({"USBAGENT_SYSTEMD_SCOPE": "user"})


def test_hook_records_the_failure_for_status(tmp_path: Path) -> None:
    """The command as ExecStopPost= runs it: an Outcome lands in the state dir."""
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [archive]
            sources = ["{tmp_path}"]
            [agent]
            state_dir = "{tmp_path}/state"
            [notify]
            enabled = false
            """)
    )
    env = {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"}
    done = subprocess.run(
        [sys.executable, "-m", "usbagent", "--config", str(config), "notify-failure",
         "usbagent.service"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    recorded = state.last(tmp_path / "state", "unit-failed")
    assert recorded is not None and not recorded.ok
    assert recorded.summary == (
        "usbagent.service failed: stopped answering its watchdog (hung) and was killed"
    )
    assert recorded.summary in done.stderr  # and in the journal


def _failed_archive_unit(time: datetime) -> Outcome:
    return Outcome(
        "unit-failed",
        ok=False,
        summary="usbagent-archive.service failed: exited with status 1",
        time=time,
        details={"unit": "usbagent-archive.service", "via": "OnFailure"},
    )


def test_an_archive_unit_failure_carries_the_reason_the_job_recorded() -> None:
    """The seed's failure: the notification and status must say *why*, not 'status 1'."""
    start = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    job = Outcome("archive", ok=False, summary="recipients file /x does not exist", time=start)
    out = with_job_reason(_failed_archive_unit(start), job, start - timedelta(seconds=3))
    assert out.summary == (
        "usbagent-archive.service failed: exited with status 1: recipients file /x does not exist"
    )
    assert out.details["reason"] == "recipients file /x does not exist"


def test_an_older_or_successful_job_record_is_not_taken_as_the_reason() -> None:
    start = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    unit = _failed_archive_unit(start)
    yesterday = Outcome("archive", ok=False, summary="old", time=start - timedelta(days=1))
    assert with_job_reason(unit, yesterday, start - timedelta(seconds=3)) == unit
    good = Outcome("archive", ok=True, summary="made x", time=start)
    assert with_job_reason(unit, good, start - timedelta(seconds=3)) == unit
    assert with_job_reason(unit, None, start) == unit
    assert with_job_reason(unit, yesterday, None) == unit


def test_started_at_converts_systemds_monotonic_start() -> None:
    now = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    props = {"ExecMainStartTimestampMonotonic": "100000000"}  # 100 s after boot
    assert started_at(props, now, monotonic=160.0) == now - timedelta(seconds=60)
    assert started_at({"ExecMainStartTimestampMonotonic": "0"}, now, 160.0) is None
    assert started_at({}, now, 160.0) is None
