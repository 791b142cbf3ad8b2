"""`usbagent demo`: the README's first command works with no config file at all."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.archive_helpers import usbagent
from usbagent import demo, naming


def test_demo_runs_the_whole_flow_without_a_config(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "USBAGENT_CONFIG": str(tmp_path / "none")}
    proc = usbagent("demo", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for number, step in enumerate(demo.STEPS, start=1):
        assert f"{number:>2}. {step.name}" in proc.stdout
    assert f"All {len(demo.STEPS)} steps passed" in proc.stdout

    (root,) = tmp_path.glob("usbagent-demo-*")
    archives = [p for p in (root / "archives").iterdir() if naming.parse(p.name)]
    assert len(archives) == 1
    assert (root / "state" / "last" / "archive.json").exists()
    assert not (tmp_path / "none").exists()  # nothing of the user's was created

    # the commands it suggests work as printed
    # (in a shell whose PATH lacks the venv, as after `make demo`: `usbagent` is not on it)
    lines = proc.stdout.splitlines()
    verify_line = next(x.strip() for x in lines if " --config " in x and " verify " in x)
    shell_env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    check = subprocess.run(
        verify_line, shell=True, capture_output=True, text=True, env=shell_env, check=False
    )
    assert check.returncode == 0 and "decrypted and read" in check.stdout, check.stderr
    age_line = next(line for line in lines if line.strip().startswith("age -d")).strip()
    listing = subprocess.run(age_line, shell=True, capture_output=True, text=True, check=True)
    assert "holiday.jpg" in listing.stdout
