"""Fixtures of the real-machine tier: the cached guest image, one booted guest per test
module with usbagent installed as a user installs it, and a workspace outside the checkout.

Missing prerequisites (root, QEMU, mmdebstrap, ...) skip the tier locally and fail it under
CI=true: a CI run that skipped the real machine would look healthy while proving nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm import driver, image
from tests.vm.guest import Guest, build_payload

WORK_ROOT = Path(os.environ.get("USBAGENT_VM_WORK", "/var/tmp"))


def _require() -> None:
    problem = driver.environment_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"vm tier cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def vm_image() -> image.Image:
    _require()
    return image.ensure()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="usbagent-vm-", dir=WORK_ROOT))
    yield path
    if os.environ.get("USBAGENT_VM_KEEP") != "1":
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
