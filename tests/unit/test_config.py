"""Config loading: defaults, every key checked, every problem reported at once by name."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from usbagent import config, configcheck, install, naming
from usbagent.config import ConfigError
from usbagent.errors import UsbagentError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    return info.value.problems


def test_empty_file_gives_every_default(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, ""))
    assert cfg.archive == config.ArchiveConfig()
    assert cfg.archive.keep_days == 14 and cfg.archive.compression_level == 3
    assert cfg.archive.full_every_days == 7
    assert cfg.usb.labels == ("sovereign-backup",) and cfg.usb.backend == "auto"
    assert cfg.agent.state_dir == Path("/var/lib/usbagent")
    assert cfg.notify.enabled is True
    assert cfg.path == tmp_path / "config.toml"


def test_values_are_typed(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            '[archive]\nsources = ["/a", "/b"]\nexclude = []\nkeep_days = 3\nprefix = "h1"\n'
            "full_every_days = 2\n"
            '[usb]\nuuids = ["ABCD-1234"]\nrequire_usb = false\n'
            "[agent]\nstale_after_hours = 1.5\n",
        )
    )
    assert cfg.archive.sources == (Path("/a"), Path("/b"))
    assert cfg.archive.exclude == ()
    assert cfg.archive_prefix == "h1"
    assert cfg.archive.full_every_days == 2
    assert cfg.usb.uuids == ("abcd-1234",)  # compared case-insensitively later
    assert cfg.usb.require_usb is False
    assert cfg.agent.stale_after_hours == 1.5


def test_prefix_defaults_to_the_host_name(tmp_path: Path) -> None:
    prefix = config.load(write(tmp_path, "")).archive_prefix
    assert prefix and all(c.isalnum() or c in "-_" for c in prefix)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, '[archive]\nsorces = ["/data"]\n')
    assert problem.startswith("archive.sorces: unknown key")
    assert "sources" in problem  # the known keys are listed, so the typo is obvious


def test_unknown_section_is_named(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "[archiv]\nkeep_days = 3\n")
    assert "[archiv]" in problem


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[archive]\nkeep_days = 0", "archive.keep_days: must be between 1 and 36500"),
        ("[archive]\nkeep_days = true", "archive.keep_days: must be an integer"),
        ("[archive]\nfull_every_days = 0", "archive.full_every_days: must be between 1 and 36500"),
        ('[archive]\nfull_every_days = "7"', "archive.full_every_days: must be an integer"),
        (
            "[archive]\ncompression_level = 25",
            "archive.compression_level: must be between 1 and 19",
        ),
        ('[archive]\nsources = ["data"]', "archive.sources: must be an absolute path"),
        ("[archive]\nsources = []", "archive.sources: must not be empty"),
        (
            '[archive]\nsources = ["/srv/x/../data"]',
            "archive.sources: '/srv/x/../data' has a '..' component; write the path it means",
        ),
        ('[archive]\nprefix = "a b"', "archive.prefix: may contain only"),
        ('[usb]\nbackend = "hal"', "usb.backend: must be one of auto, udisks2, udev"),
        ('[usb]\ndirectory = "a/b"', "usb.directory: must be a single folder name"),
        ('[usb]\nrequire_usb = "yes"', "usb.require_usb: must be true or false"),
        ("[agent]\nstale_after_hours = -1", "agent.stale_after_hours: must be a positive number"),
        ("archive = 3", "archive: must be a table"),
    ],
)
def test_bad_value_names_key_and_what_is_allowed(tmp_path: Path, line: str, expected: str) -> None:
    (problem,) = problems_of(tmp_path, line + "\n")
    assert problem.startswith(expected), problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[archive]\nkeep_days = 0\nbogus = 1\ndestination = "rel"\n[usb]\nkeep = "x"\n',
    )
    assert len(problems) == 4
    joined = "\n".join(problems)
    for key in ("archive.keep_days", "archive.bogus", "archive.destination", "usb.keep"):
        assert key in joined


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[archive\n"))


def test_resolve_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_VAR, "/env/config.toml")
    assert config.resolve_path("/cli.toml") == Path("/cli.toml")
    assert config.resolve_path(None) == Path("/env/config.toml")
    monkeypatch.delenv(config.ENV_VAR)
    assert config.resolve_path(None) == config.DEFAULT_PATH


def test_cli_prints_one_line_per_problem_and_fails(tmp_path: Path) -> None:
    path = write(tmp_path, '[archive]\nkeep_days = 0\nsorces = ["/x"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "usbagent", "--config", str(path), "archive"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"usbagent: config {path}: archive.") for line in lines)


# --- the whole schema: values that load but make nothing (or a crash) happen later ----------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[agent]\nstale_after_hours = nan", "agent.stale_after_hours: must be a positive number"),
        ("[agent]\nstale_after_hours = inf", "agent.stale_after_hours: must be a positive number"),
        ("[agent]\nstale_after_hours = -inf", "agent.stale_after_hours: must be a positive"),
        ("[agent]\nstale_after_hours = 1e300", "agent.stale_after_hours: must be a positive"),
        ("[agent]\nusb_stale_after_days = nan", "agent.usb_stale_after_days: must be a positive"),
        ("[agent]\nusb_stale_after_days = 1e12", "agent.usb_stale_after_days: must be a positive"),
        ("[archive]\nkeep_days = 9999999999", "archive.keep_days: must be between 1 and 36500"),
        ('[usb]\ndirectory = "a\\u0000b"', "usb.directory: must be a single folder name"),
        ('[usb]\ndirectory = "a:b"', "usb.directory: must be a single folder name a FAT"),
        ('[usb]\ndirectory = "backups."', "usb.directory: must be a single folder name"),
        ('[usb]\ndirectory = " backups"', "usb.directory: must be a single folder name"),
        ('[usb]\ndirectory = "..."', "usb.directory: must be a single folder name"),
        ('[usb]\ndirectory = "a\\tb"', "usb.directory: must be a single folder name"),
        ('[usb]\ndirectory = "' + "x" * 256 + '"', "usb.directory: must be a single folder"),
        ('[usb]\nlabels = ["my backup"]', "usb.labels: 'my backup' contains ' ', which udev"),
        ('[usb]\nlabels = ["ok", "b\\u0000"]', "usb.labels: must not contain a NUL"),
        ('[usb]\nuuids = ["1234-ABCD "]', "usb.uuids: '1234-abcd ' is not a filesystem UUID"),
        ('[usb]\nuuids = ["my-stick"]', "usb.uuids: 'my-stick' is not a filesystem UUID"),
        ('[archive]\ndestination = "/data/a\\u0000b"', "archive.destination: must not"),
        ('[archive]\ndestination = "/data/$backups"', "archive.destination: '/data/$ba"),
        ('[agent]\nstate_dir = "/var/lib/us\\"ba"', "agent.state_dir: '/var/lib/us\"ba': quotes"),
        ('[archive]\nsources = ["/data\\u0000"]', "archive.sources: must not contain a NUL"),
        ('[archive]\nrecipients_file = "/k\\u0000"', "archive.recipients_file: must not"),
        ('[archive]\nexclude = ["*.tmp\\u0000"]', "archive.exclude: must not contain a NUL"),
        ('[agent]\nmetrics_file = "/var/lib/node/usbagent.txt"', "agent.metrics_file: must end in"),
    ],
)  # fmt: skip
def test_values_that_would_fail_later_are_refused_at_load(
    tmp_path: Path, line: str, expected: str
) -> None:
    (problem,) = problems_of(tmp_path, line + "\n")
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(
    "line",
    [
        "[agent]\nstale_after_hours = 0.5",
        "[agent]\nusb_stale_after_days = 3650",
        "[archive]\nkeep_days = 36500",
        '[usb]\ndirectory = "usbagent backups"',
        '[usb]\ndirectory = ".hidden"',
        '[usb]\nlabels = ["SOVB", "sovereign-backup", "a.b:c=d@e#f+g_h"]',
        '[usb]\nuuids = ["1234-ABCD", "0f3e5d1c-7d2e-4c4f-9a3b-1e2d3c4b5a69"]',
        '[agent]\nmetrics_file = "/var/lib/node_exporter/textfile/usbagent.prom"',
        '[archive]\ndestination = "/srv/my backups"',
    ],
)
def test_sensible_values_still_load(tmp_path: Path, line: str) -> None:
    config.load(write(tmp_path, line + "\n"))


@pytest.mark.parametrize("label", ["my backup", "a|b", "x*", 'q"', "bäckup", "ok-label", "A.B"])
def test_config_accepts_a_label_exactly_when_install_can_render_it(
    tmp_path: Path, label: str
) -> None:
    """One rule in one place: config and install never disagree about a label."""
    accepted_by_config = configcheck.label_problem(label) is None
    try:
        install.label_glob(label)
        rendered = True
    except UsbagentError:
        rendered = False
    assert accepted_by_config == rendered
    problems = [] if accepted_by_config else [f"usb.labels: {configcheck.label_problem(label)}"]
    try:
        config.load(write(tmp_path, f"[usb]\nlabels = {json.dumps([label])}\n"))
        assert not problems
    except ConfigError as exc:
        assert exc.problems == problems


def test_cli_with_a_nan_threshold_names_the_key_instead_of_crashing(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nstale_after_hours = nan\n")
    proc = subprocess.run(
        [sys.executable, "-m", "usbagent", "--config", str(path), "status"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "ValueError" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"usbagent UNKNOWN: config: {path}: agent.stale_after_hours:")


def test_a_label_install_would_refuse_stops_doctor_and_install_at_the_config(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[usb]\nlabels = ["my backup"]\n')
    for command in (["doctor"], ["install", "--prefix", str(tmp_path / "root")]):
        proc = subprocess.run(
            [sys.executable, "-m", "usbagent", "--config", str(path), *command],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"usbagent: config {path}: usb.labels: 'my backup' contains ' ', which udev "
            "rewrites in device properties; use only letters, digits and - _ . : = @ # +"
        )
        assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("prefix", ["-x", "--", ".x", ".."])
def test_a_prefix_must_start_with_a_letter_or_digit(tmp_path: Path, prefix: str) -> None:
    """'--20261201T000000Z.tar.zst.age' reads as an option to `age -d` and `sha256sum -c`
    (the commands README gives for the stick); '..-2026….tar.zst.age' is hidden from `ls`."""
    (problem,) = problems_of(tmp_path, f'[archive]\nprefix = "{prefix}"\n')
    assert problem.startswith("archive.prefix: must start with a letter or digit"), problem


def test_the_host_name_default_starts_with_a_letter_or_digit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config.socket, "gethostname", lambda: "\u00fcber.example")
    prefix = config.load(write(tmp_path, "")).archive_prefix
    assert prefix == "ber", prefix


def test_the_prefix_rule_is_the_archive_name_rule(tmp_path: Path) -> None:
    """A prefix the config accepts names archives that status, retention and sync find."""
    when = datetime(2026, 11, 26, tzinfo=UTC)
    samples = [chr(c) for c in range(0x20, 0x600)] + ["\U0001f600", "\u0661", "\uff42"]
    for char in samples:
        prefix = f"a{char}b"
        found = naming.parse(naming.make(prefix, when).filename, prefix) is not None
        escaped = "".join(f"\\U{ord(c):08x}" for c in prefix)  # TOML's escape for any char
        path = write(tmp_path, f'[archive]\nprefix = "{escaped}"\n')
        try:
            accepted = config.load(path).archive.prefix == prefix
        except ConfigError as exc:
            assert exc.problems == [
                f"archive.prefix: may contain only {naming.PREFIX_CHARS}, got {prefix!r}"
            ]
            accepted = False
        assert accepted == found, repr(char)


def test_absolute_excludes_are_normalised_and_must_lie_in_a_source(tmp_path: Path) -> None:
    text = (
        '[archive]\nsources = ["/srv/data", "/"]\n'
        'exclude = ["/srv//data/cache/", "*.tmp", "/proc", "/srv/data/*/tmp"]\n'
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.archive.exclude == ("/srv/data/cache", "*.tmp", "/proc", "/srv/data/*/tmp")
    problems = problems_of(
        tmp_path,
        '[archive]\nsources = ["/srv/data"]\n'
        'exclude = ["/srv/database", "/srv/d*", "/srv/data/", "data"]\n',
    )
    assert [p.split(" (")[0] for p in problems] == [
        "archive.exclude: /srv/database is not inside any of archive.sources",
        "archive.exclude: /srv/d* is not inside any of archive.sources",
        "archive.exclude: /srv/data is a source itself and would leave nothing of it",
    ]


def test_a_bad_sources_key_is_not_reported_again_as_a_bad_exclude(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[archive]\nsources = ["rel"]\nexclude = ["/srv/x"]\n')
    assert problems == ["archive.sources: must be an absolute path, got 'rel'"]
