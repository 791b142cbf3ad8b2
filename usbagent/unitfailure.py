"""`usbagent notify-failure UNIT`: records and reports that a usbagent unit failed.

Two hooks run it, both installed by `usbagent install`:
- OnFailure= of every usbagent unit: a unit of its own, so it works whatever broke the
  failed one (a missing ExecStart, a sandbox that could not be set up). It asks systemd
  why the unit failed. systemd 252 starts it only when the unit finally fails: for the
  agent (Restart=on-failure) that is when the start limit stops the restarts.
- ExecStopPost= of the agent: every run that ends badly (a hang killed by the watchdog,
  a crash) even when systemd restarts it, read from $SERVICE_RESULT/$EXIT_CODE/$EXIT_STATUS.
Either way it records Outcome(kind="unit-failed") for `usbagent status`, then asks the
notifier to tell a person. It uses nothing of the failed program but the config, and
still records (with default paths) when the config itself is what is broken.

Scope: the OnFailure hook asks the manager that started it. Under a user manager systemd
sets $MANAGERPID; $USBAGENT_SYSTEMD_SCOPE=user|system overrides the detection.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from usbagent import journal, state, systemd
from usbagent.config import Config
from usbagent.details import UnitDetails
from usbagent.events import Outcome

log = logging.getLogger(__name__)

PROPERTIES = (
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
    "ActiveState",
    "NRestarts",
    "ExecStart",
    "ExecMainStartTimestampMonotonic",
)
# A manager busy with the failure it just handled may be slow to answer.
QUERY_TIMEOUT_SECONDS = 30
# The unit whose program records why it failed (`usbagent archive` writes last/archive.json).
ARCHIVE_UNIT = "usbagent-archive.service"

# systemd.exec(5) "Process exit codes": set by systemd itself before the program ran.
EXIT_CODES = {
    200: ("CHDIR", "cannot enter its WorkingDirectory"),
    203: ("EXEC", "cannot run {path}: not found or not executable"),
    217: ("USER", "its User= does not exist"),
    218: ("CAPABILITIES", "cannot set its capabilities"),
    226: ("NAMESPACE", "its sandbox could not be set up (a ReadWritePaths= folder missing?)"),
    228: ("SECCOMP", "its system call filter could not be applied"),
    233: ("RUNTIME_DIRECTORY", "cannot create its RuntimeDirectory"),
    238: ("STATE_DIRECTORY", "cannot create its StateDirectory"),
    243: ("CREDENTIALS", "cannot load its credentials"),
}
RESULTS = {
    "watchdog": "stopped answering its watchdog (hung) and was killed",
    "start-limit-hit": "restarted too often; systemd gave up restarting it",
    "timeout": "did not start or stop in time",
    "oom-kill": "was killed for running out of memory",
    "resources": "could not get its resources (sandbox paths, sockets)",
    "core-dump": "crashed (core dump)",
    "protocol": "broke the service protocol (no READY=1?)",
}
# ExecMainCode is a siginfo si_code: CLD_EXITED, CLD_KILLED, CLD_DUMPED.
CLD_EXITED = "1"
EXIT_CODES_BY_NAME = {"exited": CLD_EXITED, "killed": "2", "dumped": "3"}


def _signal_name(value: str) -> str:
    """SIGABRT from "6" (systemctl show) or "ABRT" ($EXIT_STATUS)."""
    try:
        return (
            signal.Signals(int(value)).name
            if value.isdigit()
            else signal.Signals["SIG" + value].name
        )
    except (ValueError, KeyError):
        return f"signal {value}"


def describe(unit: str, props: Mapping[str, str]) -> str:
    """One human line saying why `unit` failed, from its `systemctl show` properties."""
    result = props.get("Result", "")
    code, status = props.get("ExecMainCode", ""), props.get("ExecMainStatus", "")
    match = re.search(r"path=([^;]+?) ;", props.get("ExecStart", ""))
    path = match.group(1) if match else "its ExecStart"
    if code == CLD_EXITED and status.isdigit() and int(status) in EXIT_CODES:
        name, why = EXIT_CODES[int(status)]
        reason = f"{why.format(path=path)} (status {status}/{name})"
    elif result in RESULTS:
        reason = RESULTS[result]
    elif code == CLD_EXITED and status not in ("", "0"):
        reason = f"exited with status {status}"
    elif code and code != CLD_EXITED and status:
        reason = f"killed by {_signal_name(status)}"
    else:
        reason = f"result {result or 'unknown'}"
    return f"{unit} failed: {reason}"


def query(unit: str, user: bool) -> tuple[dict[str, str], str]:
    """The unit's properties from its manager, or ({}, why not) when it cannot be asked."""
    try:
        found = systemd.show([unit], PROPERTIES, user=user, timeout=QUERY_TIMEOUT_SECONDS)
    except systemd.SystemdUnavailable as exc:
        return {}, f"systemctl show failed: {exc}"
    return dict(found[unit].props), ""


def props_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The `systemctl show` properties that an ExecStopPost= command gets as $SERVICE_RESULT,
    $EXIT_CODE and $EXIT_STATUS (systemd.exec(5))."""
    return {
        "Result": env.get("SERVICE_RESULT", ""),
        "ExecMainCode": EXIT_CODES_BY_NAME.get(env.get("EXIT_CODE", ""), ""),
        "ExecMainStatus": env.get("EXIT_STATUS", ""),
    }


def outcome_for(unit: str, env: Mapping[str, str]) -> Outcome | None:
    """What to record for `unit`, or None for a clean stop.

    As the unit's own ExecStopPost= the hook gets the result in its environment (the unit
    is still stopping, so `systemctl show` would not have it yet); as an OnFailure= unit
    it asks the manager.
    """
    if "SERVICE_RESULT" in env:
        if env["SERVICE_RESULT"] == "success":
            return None
        props = props_from_env(env)
        details = UnitDetails(unit, "ExecStopPost", systemd=props)
        summary = describe(unit, props)
        return Outcome("unit-failed", ok=False, summary=summary, details=details.to_json())
    user = systemd.user_scope(env)
    props, problem = query(unit, user)
    summary = describe(unit, props) + (f" ({problem})" if problem else "")
    restarts = props.get("NRestarts", "0")
    if restarts not in ("", "0"):  # the ExecStopPost hook reported each run; this is final
        summary += f"; systemd stopped restarting it after {restarts} restarts"
    details = UnitDetails(
        unit,
        "OnFailure",
        scope="user" if user else "system",
        journal=f"journalctl {'--user ' if user else ''}-u {unit}",
        systemd=props,
    )
    return Outcome("unit-failed", ok=False, summary=summary, details=details.to_json())


def started_at(props: Mapping[str, str], now: datetime, monotonic: float) -> datetime | None:
    """When the unit's main process started (from its monotonic µs), None if it never did."""
    value = props.get("ExecMainStartTimestampMonotonic", "")
    if not value.isdigit() or int(value) == 0:
        return None
    return now - timedelta(seconds=monotonic - int(value) / 1e6)


def with_job_reason(outcome: Outcome, job: Outcome | None, started: datetime | None) -> Outcome:
    """The archive unit's failure with the reason its program recorded ("exited with status
    1" alone sends a person to the journal), when that record is from the failed run."""
    failed = UnitDetails.of(outcome)
    if (
        failed is None
        or failed.unit != ARCHIVE_UNIT
        or job is None
        or job.ok
        or started is None
        or job.time < started
    ):
        return outcome
    details = replace(failed, reason=job.summary).to_json()
    return replace(outcome, summary=f"{outcome.summary}: {job.summary}", details=details)


def run(config: Config | None, args: argparse.Namespace) -> int:
    if config is None:  # the config is broken (the CLI said why): record with the defaults
        config = Config()
    outcome = outcome_for(args.unit, os.environ)
    if outcome is None:
        return 0
    with contextlib.suppress(OSError, ValueError):  # without the record: the bare failure
        failed = UnitDetails.of(outcome)
        props = failed.systemd if failed is not None else {}
        started = started_at(props, datetime.now(UTC), time.monotonic())
        outcome = with_job_reason(outcome, state.last(config.agent.state_dir, "archive"), started)
    log.error("%s", outcome.summary)
    try:
        journal.record(config.agent, outcome)
        recorded = True
    except OSError as exc:
        log.error("cannot record the failure in %s: %s", config.agent.state_dir, exc)
        recorded = False
    try:
        from usbagent import notify  # deferred: only a failure pays for the D-Bus stack

        notify.send_once(config, outcome)
    except Exception:  # the record is what matters; a notifier bug must not hide it
        log.exception("could not deliver the failure notification")
    return 0 if recorded else 1
