"""Fixtures of the real-machine tier: the cached guest image, one booted guest per test
module with usbagent installed as a user installs it, and a workspace outside the checkout.

Missing prerequisites (root, QEMU, mmdebstrap, ...) skip the tier locally and fail it under
CI=true: a CI run that skipped the real machine would look healthy while proving nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.vm import driver, image, rundirs
from tests.vm.guest import Guest, build_payload

WORK_ROOT = Path(os.environ.get("USBAGENT_VM_WORK", "/var/tmp"))


def _require() -> None:
    problem = driver.environment_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"vm tier cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing case's report carries the guest's journal: the why is usually in there."""
    report = yield
    guest = getattr(item, "funcargs", {}).get("machine")
    if report.failed and report.when == "call" and isinstance(guest, Guest):
        report.sections.append(("guest journal (usbagent units)", guest.diagnosis()))
    return report


@pytest.fixture(scope="session")
def vm_image() -> image.Image:
    _require()
    return image.ensure()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """This run's folder; folders of earlier runs that were killed are removed first."""
    rundirs.remove_abandoned(WORK_ROOT)
    path = rundirs.make(WORK_ROOT)
    yield path
    if os.environ.get("USBAGENT_VM_KEEP") == "1":
        rundirs.disown(path)  # kept on purpose: the next run must not remove it
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def payload(workdir: Path) -> Path:
    return build_payload(workdir)


@pytest.fixture(scope="module")
def machine(
    vm_image: image.Image, workdir: Path, payload: Path, request: pytest.FixtureRequest
) -> Iterator[Guest]:
    """A fresh guest (a new overlay on the clean image), booted, usbagent installed."""
    mod = workdir / request.module.__name__.rsplit(".", 1)[-1]
    mod.mkdir()
    vm = driver.Vm(vm_image, mod, payload)
    vm.boot()
    guest = Guest(vm)
    try:
        guest.install()
        yield guest
    finally:
        vm.power_cut()
