"""`usbagent archive` end to end: real files, real GNU tar, real age/zstd to read it back.

Covers what a user relies on: the archive decrypts with the standard tools, every failure
(bad key line, missing source, full disk, SIGTERM, SIGKILL) leaves no final-named file, and
retention deletes only our old archives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.archive_helpers import (
    PREFIX,
    Setup,
    age_listing,
    fill_random,
    make_setup,
    member,
    wait_for,
)
from usbagent import naming
from usbagent.errors import UsbagentError
from usbagent.selection import Source, tar_command
from usbagent.tarpipe import _check_tar


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test mounts a tmpfs and needs root", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")


# --- the pure parts ---------------------------------------------------------------------


def test_tar_command_stores_relative_names_and_excludes_the_destination() -> None:
    sources = (Source(Path("/data"), Path("/data")), Source(Path("/etc/x"), Path("/etc/x")))
    cmd = tar_command("tar", sources, ("*.tmp",), Path("/data/bk[1]"))
    assert cmd[-3:] == ["--", "data", "etc/x"]
    assert "--directory=/" in cmd
    # the destination: anchored, literal (no glob), before the user's patterns
    i = cmd.index("--exclude=data/bk[1]")
    assert cmd[i - 2 : i] == ["--anchored", "--no-wildcards"]
    assert cmd.index("--exclude=*.tmp") > cmd.index("--wildcards")


def test_tar_status_one_is_a_warning_anything_else_fails() -> None:
    assert _check_tar(1, ["tar: a: file changed as we read it"]) == (
        "tar: a: file changed as we read it",
    )
    with pytest.raises(UsbagentError, match="exit status 2: tar: x: Cannot open"):
        _check_tar(2, ["tar: x: Cannot open: Permission denied"])
    with pytest.raises(UsbagentError, match="killed by SIGTERM"):
        _check_tar(-15, [])


# --- end to end -------------------------------------------------------------------------


def test_archive_is_complete_checksummed_recorded_and_readable_by_age(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    (archive,) = s.archives()
    assert s.files() == [archive.name, archive.name + naming.SIDECAR]
    assert f"archive {archive.name} written" in proc.stdout

    check = subprocess.run(
        ["sha256sum", "-c", archive.name + naming.SIDECAR],
        cwd=s.destination,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0 and check.stdout.strip() == f"{archive.name}: OK"

    names = age_listing(archive, s.identity)
    assert member(s.source / "docs" / "a.txt") in names
    assert member(s.source / "docs" / "b.txt") in names
    assert not any(n.endswith("scratch.tmp") for n in names)  # archive.exclude default

    last = s.last()
    assert last["ok"] is True
    assert last["details"]["archive"] == archive.name
    assert last["details"]["size"] == archive.stat().st_size
    assert last["details"]["sha256"] in (s.destination / (archive.name + ".sha256")).read_text()


def test_destination_inside_a_source_is_not_archived(tmp_path: Path) -> None:
    s = make_setup(tmp_path, destination=tmp_path / "data" / "backups")
    assert s.cli("archive").returncode == 0
    (s.source / "docs" / "a.txt").write_text("changed, so the increment holds it\n")
    second = s.cli("archive")  # the first archive now lies inside the source
    assert second.returncode == 0, second.stderr
    first, newest = s.archives()
    assert first.name != newest.name  # same second: the run waited for a fresh name
    names = age_listing(newest, s.identity)
    assert member(s.source / "docs" / "a.txt") in names
    assert not any("backups" in n for n in names)


def ssh_keypair(tmp_path: Path, kind: str) -> tuple[str, Path]:
    key = tmp_path / f"id_{kind}"
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().strip(), key


def test_every_recipient_can_decrypt(tmp_path: Path) -> None:
    ed_pub, ed_key = ssh_keypair(tmp_path, "ed25519")
    rsa_pub, rsa_key = ssh_keypair(tmp_path, "rsa")
    s = make_setup(tmp_path / "setup", extra_recipients=[ed_pub, rsa_pub])
    assert s.cli("archive").returncode == 0
    (archive,) = s.archives()
    expected = member(s.source / "docs" / "b.txt")
    for identity in (s.identity, ed_key, rsa_key):
        assert expected in age_listing(archive, identity), identity
        proc = s.cli("verify", str(archive), "--identity", str(identity))
        assert proc.returncode == 0, proc.stdout


def test_recipients_file_with_a_bad_line_names_it_and_writes_nothing(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    with s.recipients.open("a") as f:
        f.write("age1this-is-not-a-key\n")  # line 3, after "# test" and the real key
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"usbagent archive: recipients file {s.recipients}, line 3: "
        "not a valid age X25519 recipient (expected an age key (age1…) "
        "or an ssh-ed25519 / ssh-rsa public key)"
    )
    assert s.files() == []
    last = s.last()
    assert last["ok"] is False and "line 3" in last["summary"]


def test_missing_source_fails_before_any_work(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    s = make_setup(tmp_path, sources=[tmp_path / "data", gone])
    proc = s.cli("archive")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"source {gone} does not exist (fix archive.sources)")
    assert s.files() == []


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 MiB of random data: archiving it takes long enough to be interrupted."""
    folder = tmp_path_factory.mktemp("big")
    fill_random(folder / "random.bin", 200)
    return folder


def start_and_wait_for_partial(s: Setup) -> subprocess.Popen[str]:
    proc = s.popen("archive")

    def partial_growing() -> bool:
        return any(p.stat().st_size > 1024**2 for p in s.destination.glob("*.partial"))

    wait_for(partial_growing, 30, "the .partial archive to grow")
    return proc


def tar_running_on(source: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", member(source)], capture_output=True, check=False)
    return found.returncode == 0


def test_kill_9_leaves_only_a_partial_and_the_next_run_removes_it(
    tmp_path: Path, big_source: Path
) -> None:
    s = make_setup(tmp_path, sources=[big_source])
    proc = start_and_wait_for_partial(s)
    proc.kill()
    proc.wait(timeout=30)
    assert s.archives() == []
    (partial,) = s.files()
    assert naming.is_partial(partial)

    again = s.cli("archive")
    assert again.returncode == 0, again.stderr
    assert f"removing {s.destination / partial}, left by an interrupted run" in again.stderr
    (archive,) = s.archives()
    assert s.files() == [archive.name, archive.name + naming.SIDECAR]
    assert s.cli("verify", str(archive), "--identity", str(s.identity)).returncode == 0


def test_sigterm_removes_the_partial_and_fails(tmp_path: Path, big_source: Path) -> None:
    s = make_setup(tmp_path, sources=[big_source])
    proc = start_and_wait_for_partial(s)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "stopped by SIGTERM; the partial archive was removed" in stderr
    assert s.files() == []  # no partial, no final name
    assert not tar_running_on(big_source)  # the tar child was killed and reaped
    last = s.last()
    assert last["ok"] is False and "SIGTERM" in last["summary"]


def test_full_disk_fails_cleanly_and_keeps_older_archives(tmp_path: Path) -> None:
    need_root()
    dest = tmp_path / "small"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(dest)], check=True)
    try:
        s = make_setup(tmp_path, destination=dest)
        fill_random(s.source / "big.bin", 20)
        # a small older archive makes preflight expect a small one again: the disk fills up
        old = naming.make(PREFIX, datetime.now(UTC) - timedelta(days=1))
        (dest / old.filename).write_bytes(b"x" * 1024)
        (dest / old.sidecar).write_text(f"{'0' * 64}  {old.filename}\n")
        proc = s.cli("archive")
        assert proc.returncode == 1
        assert ".partial failed: No space left on device" in proc.stderr
        assert s.files() == [old.filename, old.sidecar]
        assert s.last()["ok"] is False
    finally:
        subprocess.run(["umount", str(dest)], check=True)


def test_retention_deletes_only_our_old_archives(tmp_path: Path) -> None:
    s = make_setup(tmp_path, keep_days=7)
    now = datetime.now(UTC)
    ours_old = [naming.make(PREFIX, now - timedelta(days=d)) for d in (30, 8)]
    ours_recent = naming.make(PREFIX, now - timedelta(days=2))
    theirs_old = naming.make("otherhost", now - timedelta(days=30))
    for name in [*ours_old, ours_recent, theirs_old]:
        (s.destination / name.filename).write_bytes(b"old")
        (s.destination / name.sidecar).write_text(f"{'0' * 64}  {name.filename}\n")
    (s.destination / "notes.txt").write_text("mine, not usbagent's")

    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    assert "2 old archive(s) pruned" in proc.stdout
    made_by_test = {n.filename for n in [*ours_old, ours_recent, theirs_old]}
    (new,) = [a for a in s.archives() if a.name not in made_by_test]
    expected = {
        new.name,
        new.name + ".sha256",
        ours_recent.filename,
        ours_recent.sidecar,
        theirs_old.filename,
        theirs_old.sidecar,
        "notes.txt",
    }
    assert set(s.files()) == expected
    assert set(s.last()["details"]["pruned"]) == {
        f for n in ours_old for f in (n.filename, n.sidecar)
    }


@pytest.fixture
def growing_file(tmp_path: Path) -> Iterator[Path]:
    """A 30 MiB file that keeps growing until the test ends (a log being written)."""
    path = tmp_path / "data" / "growing.log"
    fill_random(path, 30)
    stop = threading.Event()

    def append() -> None:
        with path.open("ab") as f:
            while not stop.is_set():
                f.write(b"log line\n")
                f.flush()
                stop.wait(0.001)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        yield path
    finally:
        stop.set()
        writer.join()


def test_file_changing_while_read_keeps_the_archive_and_says_so(
    tmp_path: Path, growing_file: Path
) -> None:
    s = make_setup(tmp_path)
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    assert f"{member(growing_file)}: file changed as we read it" in proc.stderr
    assert "tar warned" in proc.stdout
    last = s.last()
    assert last["ok"] is True
    assert any("file changed as we read it" in w for w in last["details"]["warnings"])
    (archive,) = s.archives()
    assert s.cli("verify", str(archive), "--identity", str(s.identity)).returncode == 0


def test_an_unwritable_state_dir_does_not_hide_the_result(tmp_path: Path) -> None:
    s = make_setup(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = s.config.read_text().replace(str(s.state_dir), str(blocker / "state"))
    s.config.write_text(config)
    proc = s.cli("archive")
    assert proc.returncode == 0
    assert "could NOT record this result" in proc.stderr
    assert "written" in proc.stderr  # the result itself is still reported
    assert len(s.archives()) == 1


def test_a_future_dated_file_in_the_destination_is_reported_and_left_alone(tmp_path: Path) -> None:
    s = make_setup(tmp_path, keep_days=7)
    assert s.cli("archive").returncode == 0  # a recorded run: the history starts here
    fake = naming.make(PREFIX, datetime(2099, 1, 1, tzinfo=UTC))
    (s.destination / fake.filename).write_bytes(b"junk\n")
    (s.destination / fake.sidecar).write_text(f"{'0' * 64}  {fake.filename}\n")

    proc = s.cli("archive")

    assert proc.returncode == 0, proc.stderr
    assert str(s.destination / fake.filename) in proc.stderr
    assert "dated in the future or not made by a recorded run" in proc.stderr
    assert (s.destination / fake.filename).read_bytes() == b"junk\n"
    assert len([a for a in s.archives() if a.name != fake.filename]) == 2  # both real ones
