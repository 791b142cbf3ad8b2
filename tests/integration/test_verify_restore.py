"""`usbagent verify` and `usbagent restore` on real archives, and on damaged or hostile ones."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.integration.archive_helpers import (
    Setup,
    make_setup,
    member,
    new_identity,
    usbagent,
)
from tests.integration.tar_helpers import write_sidecar
from usbagent import naming


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Setup, Path]:
    s = make_setup(tmp_path)
    (s.source / "docs" / "link-to-a").symlink_to("a.txt")
    (s.source / "docs" / "sub").mkdir()
    (s.source / "docs" / "sub" / "c.bin").write_bytes(secrets.token_bytes(300_000))
    proc = s.cli("archive")
    assert proc.returncode == 0, proc.stderr
    (archive,) = s.archives()
    return s, archive


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- verify -----------------------------------------------------------------------------


def test_verify_checksums_and_full_read(archived: tuple[Setup, Path]) -> None:
    s, archive = archived
    proc = usbagent("verify", str(s.destination))  # no config, no identity: checksums
    assert proc.returncode == 0
    assert f"OK      {archive}: checksum ok" in proc.stdout
    assert "(checksums only)" in proc.stdout
    proc = usbagent("verify", str(archive), "--identity", str(s.identity))
    assert proc.returncode == 0, proc.stdout
    assert "decrypted and read 7 members" in proc.stdout


def test_verify_uses_the_configured_identity(archived: tuple[Setup, Path]) -> None:
    s, archive = archived
    text = s.config.read_text().replace(
        "[archive]\n", f'[archive]\nidentity_file = "{s.identity}"\n', 1
    )
    s.config.write_text(text)
    proc = s.cli("verify", str(archive))
    assert proc.returncode == 0
    assert "decrypted and read" in proc.stdout


def test_one_flipped_byte_is_detected(archived: tuple[Setup, Path]) -> None:
    s, archive = archived
    flip_byte(archive, archive.stat().st_size // 2)
    proc = usbagent("verify", str(s.destination))
    assert proc.returncode == 1
    assert f"FAILED  {archive}: checksum mismatch" in proc.stdout


def test_decryption_catches_damage_the_sidecar_does_not(archived: tuple[Setup, Path]) -> None:
    """A file damaged and then re-checksummed (or a bad sidecar made with it) still fails."""
    s, archive = archived
    flip_byte(archive, archive.stat().st_size - 20)  # inside age's last authenticated chunk
    write_sidecar(archive)
    assert usbagent("verify", str(archive)).returncode == 0  # checksums alone cannot tell
    proc = usbagent("verify", str(archive), "--identity", str(s.identity))
    assert proc.returncode == 1
    assert "checksum ok, but decryption failed, the file is damaged or truncated" in proc.stdout


def test_truncated_archive_is_detected(archived: tuple[Setup, Path]) -> None:
    s, archive = archived
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) - 1000])
    write_sidecar(archive)
    proc = usbagent("verify", str(archive), "--identity", str(s.identity))
    assert proc.returncode == 1
    assert "damaged or truncated" in proc.stdout


def test_missing_sidecar_wrong_key_and_empty_folder(
    archived: tuple[Setup, Path], tmp_path: Path
) -> None:
    _, archive = archived
    stranger = tmp_path / "stranger.txt"
    new_identity(stranger)
    proc = usbagent("verify", str(archive), "--identity", str(stranger))
    assert proc.returncode == 1
    assert "none of the identities can decrypt it (wrong key?)" in proc.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = usbagent("verify", str(empty))
    assert proc.returncode == 1
    assert f"FAILED  {empty}: no archives" in proc.stdout

    archive.with_name(archive.name + naming.SIDECAR).unlink()
    proc = usbagent("verify", str(archive))
    assert proc.returncode == 1
    assert f"sidecar {archive.name}.sha256 is missing" in proc.stdout


# --- restore ----------------------------------------------------------------------------


def test_restore_everything_byte_for_byte(archived: tuple[Setup, Path], tmp_path: Path) -> None:
    s, archive = archived
    target = tmp_path / "restored"
    proc = usbagent("restore", str(archive), "--identity", str(s.identity), "--to", str(target))
    assert proc.returncode == 0, proc.stderr
    copy = target / member(s.source)
    for rel in ("docs/a.txt", "docs/b.txt", "docs/sub/c.bin"):
        assert (copy / rel).read_bytes() == (s.source / rel).read_bytes()
    assert (copy / "docs" / "link-to-a").readlink() == Path("a.txt")
    assert not (copy / "scratch.tmp").exists()


def test_restore_named_members_and_report_missing_ones(
    archived: tuple[Setup, Path], tmp_path: Path
) -> None:
    s, archive = archived
    target = tmp_path / "restored"
    wanted = "/" + member(s.source / "docs" / "sub")  # as the user knows it: absolute
    proc = usbagent(
        "restore", str(archive), "--identity", str(s.identity), "--to", str(target), wanted
    )
    assert proc.returncode == 0, proc.stderr
    copy = target / member(s.source)
    assert (copy / "docs" / "sub" / "c.bin").exists()
    assert not (copy / "docs" / "a.txt").exists()

    proc = usbagent(
        "restore", str(archive), "--identity", str(s.identity), "--to", str(tmp_path / "t2"),
        member(s.source / "docs" / "a.txt"), "no/such/file",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "'no/such/file' is not in the archive" in proc.stderr
    assert (tmp_path / "t2" / member(s.source) / "docs" / "a.txt").read_text() == "alpha\n"


def test_restore_never_overwrites(archived: tuple[Setup, Path], tmp_path: Path) -> None:
    s, archive = archived
    target = tmp_path / "restored"
    mine = target / member(s.source) / "docs" / "a.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("newer work, not in the backup\n")
    proc = usbagent("restore", str(archive), "--identity", str(s.identity), "--to", str(target))
    assert proc.returncode == 1
    assert "already exists in the target folder (not overwritten)" in proc.stderr
    assert mine.read_text() == "newer work, not in the backup\n"
    assert (mine.parent / "b.txt").exists()  # everything else was restored
