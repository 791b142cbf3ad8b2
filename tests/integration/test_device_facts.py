"""One device, one set of facts: what `usbagent sync MOUNTPOINT` reads about a stick is what
the agent's event sources report, so `usb.require_usb` (and every other rule) gives the same
verdict whichever path saw the stick."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from tests.integration.backend_checks import next_event
from tests.stack import MakeStick, PartSpec
from usbagent import sync, udev
from usbagent.backend import Backend, EventQueue
from usbagent.config import UsbConfig
from usbagent.devices import Partition, refusal_reason
from usbagent.udev import UdevBackend
from usbagent.udisks import UDisksBackend

pytestmark = pytest.mark.stack


async def reported(make: Callable[[], Backend], device: str) -> Partition:
    backend = make()
    queue: EventQueue = asyncio.Queue()
    await backend.start(queue)
    try:
        return await next_event(queue, device, "added")
    finally:
        await backend.close()


@pytest.mark.parametrize("make", [UdevBackend, UDisksBackend], ids=["udev", "udisks2"])
def test_usbagent_sync_and_the_agent_judge_a_stick_alike(
    make: Callable[[], Backend], make_stick: MakeStick, unique_label: str
) -> None:
    stick = make_stick(PartSpec(label=unique_label, name=unique_label))
    mount = stick.mount()
    agent_sees = asyncio.run(reported(make, stick.device(0)))
    sync_sees = sync.facts_at(mount)
    assert sync_sees is not None

    def judged(p: Partition) -> tuple[object, ...]:
        return (p.device, p.label, p.part_name, p.uuid, p.fstype, p.size, p.bus)

    assert judged(sync_sees) == judged(agent_sees)
    usb = UsbConfig(labels=(unique_label,), require_usb=True)
    verdict = refusal_reason(sync_sees, usb, {"a": 1024})
    assert verdict is not None and "USB" in verdict  # a loop device is not on USB
    assert refusal_reason(agent_sees, usb, {"a": 1024}) == verdict
    lenient = dataclasses.replace(usb, require_usb=False)
    assert refusal_reason(agent_sees, lenient, {"a": 1024}) is None
    assert refusal_reason(sync_sees, lenient, {"a": 1024}) is None


def test_udev_backend_and_usbagent_sync_read_a_device_through_one_conversion(
    make_stick: MakeStick, unique_label: str
) -> None:
    """Same Partition, key and drive included, from the monitor's device and the node."""
    import pyudev

    stick = make_stick(PartSpec(label=unique_label))
    device = pyudev.Devices.from_device_file(pyudev.Context(), stick.device(0))
    from_monitor = udev.facts_of(device)
    assert from_monitor is not None
    assert udev.facts_for_device(stick.device(0)) == from_monitor


def test_doctor_and_the_agents_auto_choice_ask_the_same_question(stack: object) -> None:
    """UDisks2 running (the stack's udisksd): both see it; on a bus without it, neither."""
    from tests.integration.dbus_doubles import private_system_bus
    from usbagent import doctorhost, sources

    assert asyncio.run(sources.udisks_on_bus()) is True
    assert doctorhost.udisks_available(None, activatable=False)[0] is True
    with private_system_bus() as empty:
        assert asyncio.run(sources.udisks_on_bus(empty)) is False
        for activatable in (False, True):
            assert doctorhost.udisks_available(empty, activatable) == (
                False,
                "UDisks2 not on the system bus",
            )
