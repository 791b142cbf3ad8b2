"""Rendering of units and the udev rule, and the checks that keep a broken unit from landing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from usbagent import install
from usbagent.config import load
from usbagent.errors import UsbagentError

USBAGENT = Path(sys.executable).parent / "usbagent"
UNITS = install.UNIT_DIR


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(f"""\
            [archive]
            sources = ["{tmp_path}/src"]
            destination = "{tmp_path}/my archives"
            [usb]
            labels = ["sovereign-backup", "Stick.2"]
            [agent]
            state_dir = "{tmp_path}/state%dir"
            metrics_file = "{tmp_path}/metrics/usbagent.prom"
            """)
    )
    return path


def _usbagent(*args: str, exe: Path = USBAGENT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_render_fills_every_placeholder_with_real_paths(config_file: Path) -> None:
    files = install.render(load(config_file), USBAGENT)
    tmp = config_file.parent
    assert set(files) == {UNITS / n for n in install.UNIT_TEMPLATES} | {
        install.RULE_DIR / "90-usbagent.rules"
    }
    for path, text in files.items():
        assert not install.PLACEHOLDER.search(text), path
    agent = files[UNITS / "usbagent.service"]
    assert f"ExecStart={USBAGENT} --config {config_file} agent\n" in agent
    # '%' is a specifier in unit files, a space needs quotes
    assert f"ReadWritePaths={tmp}/state%%dir " in agent
    assert f" {tmp}/metrics\n" in agent
    archive = files[UNITS / "usbagent-archive.service"]
    assert f'ReadWritePaths="{tmp}/my archives" {tmp}/state%%dir {tmp}/metrics\n' in archive
    hook = files[UNITS / "usbagent-notify-failure@.service"]
    # The alarm runs the interpreter, not the script that may be what went missing.
    python = Path(sys.executable)
    assert f"ExecStart={python} -m usbagent --config {config_file} notify-failure %i\n" in hook


def test_every_execstart_is_absolute_and_executable(config_file: Path) -> None:
    files = install.render(load(config_file), install.find_executable())
    for text in files.values():
        for line in re.findall(r"^Exec\w+=-?(\S+)", text, re.MULTILINE):
            assert Path(line).is_absolute() and os.access(line, os.X_OK), line


def test_rule_matches_each_label_in_any_case(config_file: Path) -> None:
    rule = install.render(load(config_file), USBAGENT)[install.RULE_DIR / "90-usbagent.rules"]
    glob = "[sS][oO][vV][eE][rR][eE][iI][gG][nN]-[bB][aA][cC][kK][uU][pP]"
    assert f'ENV{{ID_FS_LABEL}}=="{glob}", GOTO="usbagent_backup"' in rule
    assert f'ENV{{ID_PART_ENTRY_NAME}}=="{glob}", GOTO="usbagent_backup"' in rule
    assert 'ENV{ID_FS_LABEL}=="[sS][tT][iI][cC][kK].2"' in rule
    assert 'ENV{UDISKS_AUTO}="0", ENV{USBAGENT_BACKUP}="1"' in rule


@pytest.mark.parametrize("label", ["my backup", "a|b", "x*", 'q"'])
def test_labels_udev_would_rewrite_are_refused(label: str) -> None:
    with pytest.raises(UsbagentError, match=r"usb\.labels"):
        install.label_glob(label)


def test_paths_that_cannot_be_written_into_a_unit_are_refused() -> None:
    with pytest.raises(UsbagentError, match="cannot be written"):
        install.unit_path(Path("/opt/$HOME/usbagent"))


def test_missing_executable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsbagentError, match="no such file"):
        install.check_executable(tmp_path / "usbagent")


def test_non_executable_file_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "usbagent"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(UsbagentError, match="not executable"):
        install.check_executable(script)


def test_script_whose_interpreter_is_gone_is_refused(tmp_path: Path) -> None:
    """A console script of a deleted virtualenv: systemd would fail with 203/EXEC."""
    script = tmp_path / "usbagent"
    script.write_text(f"#!{tmp_path}/venv/bin/python\n")
    script.chmod(0o755)
    with pytest.raises(UsbagentError, match="interpreter"):
        install.check_executable(script)


def test_install_prefix_writes_only_under_prefix(config_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "stage"
    stamp_existed = install.UNITS_LOAD_STAMP.exists()
    done = _usbagent("--config", str(config_file), "install", "--prefix", str(root))
    assert done.returncode == 0, done.stderr
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == sorted(
        [f"etc/systemd/system/{n}" for n in install.UNIT_TEMPLATES]
        + ["etc/udev/rules.d/90-usbagent.rules"]
    )
    assert not (tmp_path / "state%dir").exists()  # nothing outside the prefix
    if not stamp_existed:  # what systemd-analyze verify touches is cleaned up
        assert not install.UNITS_LOAD_STAMP.exists()


def test_install_refuses_from_a_non_executable_usbagent(config_file: Path, tmp_path: Path) -> None:
    """Run through a copy of the console script that systemd could not exec: no files."""
    copy = tmp_path / "bin" / "usbagent"
    copy.parent.mkdir()
    copy.write_bytes(USBAGENT.read_bytes())
    copy.chmod(0o644)
    root = tmp_path / "stage"
    done = subprocess.run(
        [sys.executable, str(copy), "--config", str(config_file), "install", "--prefix", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert (
        done.stderr
        == f"usbagent install: {copy}: not executable (chmod +x it, or reinstall the package)\n"
    )
    assert not root.exists()


def test_systemd_analyze_verify_rejects_a_broken_unit(config_file: Path, tmp_path: Path) -> None:
    files = install.render(load(config_file), USBAGENT)
    broken = UNITS / "usbagent-archive.service"
    files[broken] = files[broken].replace("ProtectSystem=", "ProtectSystme=")
    install.write(files, tmp_path)
    with pytest.raises(UsbagentError, match="ProtectSystme"):
        install.verify_units(tmp_path / UNITS)


def test_systemd_analyze_verify_accepts_the_rendered_units(
    config_file: Path, tmp_path: Path
) -> None:
    install.write(install.render(load(config_file), USBAGENT), tmp_path)
    install.verify_units(tmp_path / UNITS)
