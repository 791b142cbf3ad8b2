"""Shared fixtures: the real device stack (`stack`), loop-device sticks (`make_stick`) and
unique labels (`unique_label`), so tests of every feature run against udevd and UDisks2.

Device tests need root. Without it they are skipped locally, but fail under CI=true:
a CI run that silently skipped every device test would look healthy while testing nothing.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import (
    MakeStick,
    PartSpec,
    Stack,
    StackError,
    StackSession,
    Stick,
    Workspace,
    clean_leftovers,
    prereq,
)
from tests.stack.user_manager import SYSTEMD as USER_MANAGER_BINARY
from tests.stack.user_manager import UserManager
from tests.stack.user_manager import user_manager as running_user_manager


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stack_last: run after every other test (checks what the others left)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move `stack_last` tests to the end, keeping the order of everything else."""
    items.sort(key=lambda item: item.get_closest_marker("stack_last") is not None)


def _require_stack_prerequisites() -> None:
    problem = prereq.verdict(prereq.gather())
    if problem is not None and problem.action == "skip":
        pytest.skip(problem.reason)
    if problem is not None:
        pytest.fail(problem.reason, pytrace=False)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackSession]:
    """System D-Bus + udevd + udisksd answering; stops at the end only what it started."""
    _require_stack_prerequisites()
    try:
        cleaned = clean_leftovers()
    except StackError as e:  # someone else's problem than this run's tests: say it, go on
        warnings.warn(str(e), stacklevel=1)
        cleaned = []
    daemons = Stack().start()
    try:
        session = StackSession(daemons=daemons, workspace=Workspace.create(), cleaned=cleaned)
    except BaseException:
        daemons.stop()
        raise
    try:
        yield session
    finally:
        try:
            leaked = session.workspace.close()
        finally:
            daemons.stop()
        if leaked:
            pytest.fail(f"session leaked (removed where possible): {leaked}", pytrace=False)


@pytest.fixture
def make_stick(stack: StackSession) -> Iterator[MakeStick]:
    """Factory of sticks; each is unplugged and its image deleted after the test, pass or fail."""
    made: list[Stick] = []

    def make(*parts: PartSpec, plug: bool = True, image_dir: Path | None = None) -> Stick:
        stick = stack.workspace.make_stick(*parts, plug=plug, image_dir=image_dir)
        made.append(stick)
        return stick

    yield make
    stack.workspace.remove_sticks(made)


@pytest.fixture
def unique_label() -> str:
    """A filesystem label no concurrent test uses; 9 chars, fits FAT's 11."""
    return "ua-" + secrets.token_hex(3)


@pytest.fixture
def user_manager() -> Iterator[UserManager]:
    """A real `systemd --user` (own runtime dir); stopped with all its units afterwards."""
    if os.geteuid() != 0 or not Path(USER_MANAGER_BINARY).exists():
        reason = "systemd user manager tests need root and systemd installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true must not skip them", pytrace=False)
        pytest.skip(reason)
    with running_user_manager() as manager:
        yield manager
