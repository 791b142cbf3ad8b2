"""What `usbagent status` and `doctor` say as a monitoring system sees them (real CLI, real
files): a broken config still gives the UNKNOWN line, only archives a recorded run made count
as fresh, and a nightly run that preflight would refuse is CRITICAL now, naming the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_status_doctor import (  # noqa: F401  (fixtures)
    Deployment,
    agent_process,
    by_name,
    deployment,
)


def usbagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usbagent", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# --- a broken config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "no such file"),
        ("[archive\n", "not valid TOML"),
        ("[agent]\nstale_after_hours = -1\n", "agent.stale_after_hours: must be a positive"),
    ],
    ids=["missing", "not-toml", "bad-key"],
)
def test_broken_config_gives_the_unknown_line_and_a_json_document(
    tmp_path: Path, text: str | None, says: str
) -> None:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    plain = usbagent("--config", str(path), "status")
    assert plain.returncode == 3
    first = plain.stdout.splitlines()[0]
    assert first.startswith(f"usbagent UNKNOWN: config: {path}: "), plain.stdout
    assert says in first
    as_json = usbagent("--config", str(path), "status", "--json")
    assert as_json.returncode == 3
    doc = json.loads(as_json.stdout)
    assert doc["state"] == "UNKNOWN"
    assert [c["name"] for c in doc["checks"]] == ["config"]
    assert says in doc["checks"][0]["message"]
    assert says in as_json.stderr  # the one-line error for a person stays too


def test_help_does_not_list_the_hidden_hook_command() -> None:
    r = usbagent("--help")
    assert r.returncode == 0
    assert "SUPPRESS" not in r.stdout and "notify-failure" not in r.stdout, r.stdout
    assert "status" in r.stdout  # the listing itself is still there
    hook = usbagent("notify-failure", "--help")  # still callable by systemd
    assert hook.returncode == 0 and "unit" in hook.stdout
