"""The Pythons pyproject.toml declares are the ones tested: CI runs the oldest.

Debian 12's /usr/bin/python3 (3.11.2) is what `python3 -m venv` gives a user, and it lacks
things newer 3.11 releases have (tarfile's `filter=`): a suite that passes only on a newer
interpreter would hide exactly the crash users get.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def oldest_supported() -> tuple[int, ...]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    match = re.fullmatch(r">=(\d+)\.(\d+)\.(\d+)", project["requires-python"])
    assert match, f"requires-python {project['requires-python']!r} is not '>=X.Y.Z'"
    return tuple(int(g) for g in match.groups())


def test_the_declared_pythons_agree() -> None:
    oldest = oldest_supported()
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    minor = f"Programming Language :: Python :: {oldest[0]}.{oldest[1]}"
    assert minor in classifiers
    assert sys.version_info[:3] >= oldest


def test_ci_runs_the_oldest_supported_python() -> None:
    """Under CI (.ci/run sets CI=true) the suite must run on the floor itself."""
    if os.environ.get("CI") != "true":
        assert sys.version_info[:3] >= oldest_supported()
        return
    assert sys.version_info[:3] == oldest_supported(), (
        f"CI runs Python {sys.version.split()[0]}, not the oldest supported "
        f"{'.'.join(map(str, oldest_supported()))}: build the venv with PYTHON=/usr/bin/python3"
    )


def test_the_makefile_builds_the_venv_with_debians_python() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PYTHON\s*\?=\s*/usr/bin/python3$", makefile, re.MULTILINE)
    debian = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tuple(int(v) for v in debian.split()) >= oldest_supported()  # users can install
