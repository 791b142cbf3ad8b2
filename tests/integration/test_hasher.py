"""The sidecar hash computed in a child process (usbagent.hasher): real processes, real files.

What a user relies on: the `.sha256` sidecar is the hash of exactly the bytes of the archive
(`sha256sum -c` passes), and when the hashing fails in any way the archive run fails with
nothing under the final name, instead of writing a sidecar that does not match.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.archive_helpers import fill_random, make_setup, wait_for
from usbagent import hasher, naming

MIB = 1024 * 1024


def test_the_child_hashes_exactly_what_it_was_sent(tmp_path: Path) -> None:
    fill_random(tmp_path / "random.bin", 9)
    data = (tmp_path / "random.bin").read_bytes() + b"tail that is not a whole MiB"
    with hasher.sha256_child() as sha:
        view = memoryview(data)
        for start in range(0, len(data), 65552):  # pyrage's piece size
            sha.update(view[start : start + 65552])
        assert sha.hexdigest() == hashlib.sha256(data).hexdigest()
    with hasher.sha256_child() as sha:
        assert sha.hexdigest() == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        # a real sha256 tool that reports no byte count: the count cannot be checked
        (("sha256sum",), "hashed - bytes, but 5 were written"),
        (("false",), "exit status 1"),
        (("true",), "no digest reported|Broken pipe"),
        (("sh", "-c", "echo 'broken hasher' >&2; exit 3"), "broken hasher"),
    ],
)
def test_a_child_that_reports_anything_but_a_checked_digest_is_an_error(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], message: str
) -> None:
    monkeypatch.setattr(hasher, "COMMAND", command)
    with pytest.raises(hasher.HashError, match=message), hasher.sha256_child() as sha:
        sha.update(b"12345")
        sha.hexdigest()


def test_a_child_that_cannot_start_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hasher, "COMMAND", ("/nonexistent/python",))
    with (
        pytest.raises(hasher.HashError, match="cannot start the sha256 child process"),
        hasher.sha256_child(),
    ):
        pass


def test_a_killed_child_fails_the_write_that_follows() -> None:
    with (
        pytest.raises(hasher.HashError, match="killed by SIGKILL"),
        hasher.sha256_child() as sha,
    ):
        sha.update(b"x" * 1024)
        os.kill(sha_pid(), signal.SIGKILL)
        for _ in range(64):  # more than the pipe holds: the write meets the closed pipe
            sha.update(b"x" * MIB)
        sha.hexdigest()


def sha_pid() -> int:
    """The pid of this process's sha256 child."""
    return int(children(os.getpid(), "usbagent.hasher")[0])


def children(parent: int, pattern: str) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", pattern], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def test_the_sidecar_of_a_real_archive_matches_its_bytes(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    fill_random(s.source / "random.bin", 20)
    assert s.cli("archive").returncode == 0
    (archive,) = s.archives()
    check = subprocess.run(
        ["sha256sum", "-c", archive.name + naming.SIDECAR],
        cwd=s.destination,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.stdout == f"{archive.name}: OK\n"
    assert children(os.getpid(), "usbagent.hasher") == []


def test_a_hash_child_killed_mid_archive_fails_the_run_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    s = make_setup(tmp_path)
    fill_random(s.source / "random.bin", 200)
    proc = s.popen("archive")
    wait_for(lambda: any(s.destination.glob("*.partial")), 30, "the partial archive")
    wait_for(lambda: children(proc.pid, "usbagent.hasher") != [], 30, "the sha256 child")
    os.kill(int(children(proc.pid, "usbagent.hasher")[0]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "the sha256 child process failed" in stderr
    assert s.files() == []  # no partial, no archive, no sidecar
    assert s.last()["ok"] is False
    assert "sha256 child" in s.last()["summary"]
