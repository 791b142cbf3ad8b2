"""The tier's own hygiene: a killed run leaves neither a QEMU nor its run folder behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm import driver, rundirs

# A real QEMU that needs no guest: no machine, no display, it just waits.
IDLE_QEMU = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]

PARENT = """
import sys, time
from tests.vm import driver
child = driver.spawn(sys.argv[1:])
print(child.pid, flush=True)
time.sleep(600)
"""


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it no longer runs either way)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_qemu_dies_when_the_run_that_started_it_is_killed() -> None:
    if subprocess.run(["which", IDLE_QEMU[0]], capture_output=True).returncode != 0:
        missing = "qemu-system-x86_64 is not installed (sudo make vm-deps)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *IDLE_QEMU], stdout=subprocess.PIPE, cwd=root, text=True
    )
    assert parent.stdout is not None
    qemu = int(parent.stdout.readline())
    try:
        driver.wait_for(lambda: Path(f"/proc/{qemu}/cmdline").read_bytes().startswith(b"qemu"),
                        30, "QEMU to start")  # fmt: skip
        parent.send_signal(signal.SIGKILL)  # pytest killed: no teardown runs
        parent.wait()
        driver.wait_for(lambda: _dead(qemu), 30, f"QEMU (pid {qemu}) to die with its parent")
    finally:
        if not _dead(qemu):
            os.kill(qemu, signal.SIGKILL)


def test_the_next_run_removes_folders_of_runs_that_are_gone_and_only_those(
    tmp_path: Path,
) -> None:
    gone = subprocess.Popen(["sleep", "600"])
    killed = tmp_path / f"{rundirs.PREFIX}killed"
    killed.mkdir()
    (killed / "disk.qcow2").write_bytes(b"overlay")
    (killed / rundirs.OWNER).write_text(f"{gone.pid} {rundirs.start_time(gone.pid)}\n")
    gone.kill()
    gone.wait()
    running = rundirs.make(tmp_path)  # this process: a run that is still going
    kept = tmp_path / f"{rundirs.PREFIX}kept"  # USBAGENT_VM_KEEP=1: disowned on purpose
    kept.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    assert rundirs.remove_abandoned(tmp_path) == [killed]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (running, kept, other)
    )


def test_a_recycled_pid_is_not_mistaken_for_the_owner(tmp_path: Path) -> None:
    folder = rundirs.make(tmp_path)
    pid = (folder / rundirs.OWNER).read_text().split()[0]
    (folder / rundirs.OWNER).write_text(f"{pid} 1\n")  # same pid, another process's start
    assert rundirs.abandoned(folder)
