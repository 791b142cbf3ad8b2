"""The agent's decision core (usbagent.decide) driven by a fake event source.

The fake source turns device facts into events with `backend.emit`, exactly as the UDisks2
and udev backends do, so the core sees the same added/changed/removed stream; the daemon's
part (carrying the decisions out) is covered by tests/integration/test_agent.py.
"""

from __future__ import annotations

import asyncio
import dataclasses

from usbagent.backend import EventQueue, emit
from usbagent.config import UsbConfig
from usbagent.decide import Core, Decision, Pulled, Serve, StartGrace, StopGrace, stick_id
from usbagent.devices import Partition

USB = UsbConfig(labels=("BACKUP",), require_usb=False)


def stick(n: int, **changes: object) -> Partition:
    p = Partition(
        key=f"/dev/sd{chr(ord('a') + n)}1",
        device=f"/dev/sd{chr(ord('a') + n)}1",
        label="BACKUP",
        part_name="",
        uuid=f"uuid-{n}",
        fstype="ext4",
        size=1 << 30,
        bus="usb",
        drive=f"/drive/{n}",
    )
    return dataclasses.replace(p, **changes)  # type: ignore[arg-type]


class FakeSource:
    """Device facts in, the core's decisions out (the events go through `emit`)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.known: dict[str, Partition] = {}
        self.queue: EventQueue = asyncio.Queue()

    def _deliver(self) -> list[Decision]:
        out: list[Decision] = []
        while not self.queue.empty():
            out += self.core.on_event(*self.queue.get_nowait())
        return out

    def plug(self, p: Partition) -> list[Decision]:
        emit(self.queue, self.known, p.key, p)
        return self._deliver()

    def unplug(self, p: Partition) -> list[Decision]:
        emit(self.queue, self.known, p.key, None)
        return self._deliver()


def test_a_plugged_stick_is_served_once_per_plug_and_again_when_replugged() -> None:
    core = Core(USB)
    source = FakeSource(core)
    a = stick(1)
    assert source.plug(a) == [Serve(a)]
    assert source.plug(dataclasses.replace(a, size=2 << 30)) == []  # a change, same plug
    assert core.job_ended(stick_id(a)) == []  # served once: not again for the same plug
    assert source.unplug(a) == []
    assert source.plug(a) == [Serve(a)]


def test_two_sticks_are_served_at_once() -> None:
    source = FakeSource(Core(USB))
    a, b = stick(1), stick(2)
    assert source.plug(a) == [Serve(a)]
    assert source.plug(b) == [Serve(b)]


def test_a_stick_without_a_configured_label_is_ignored() -> None:
    source = FakeSource(Core(USB))
    assert source.plug(stick(1, label="PHOTOS")) == []


def test_a_stick_being_served_is_not_served_twice_until_its_job_ends() -> None:
    """Busy: the same filesystem seen on another device key (re-enumerated) waits."""
    core = Core(USB)
    source = FakeSource(core)
    a = stick(1)
    again = stick(1, key="/dev/sdz1", device="/dev/sdz1")  # same UUID, new device
    assert source.plug(a) == [Serve(a)]
    assert source.plug(again) == []
    assert source.unplug(a) == [Pulled(stick_id(a))]
    assert core.job_ended(stick_id(a)) == [Serve(again)]


def test_replugged_while_the_old_job_winds_down_is_served_after_it() -> None:
    core = Core(USB)
    source = FakeSource(core)
    a = stick(1)
    assert source.plug(a) == [Serve(a)]
    assert source.unplug(a) == [Pulled(stick_id(a))]
    assert source.plug(a) == []  # its old job still unmounts / reports
    assert core.job_ended(stick_id(a)) == [Serve(a)]


def test_removal_mid_job_cancels_only_that_job() -> None:
    source = FakeSource(Core(USB))
    a, b = stick(1), stick(2)
    source.plug(a)
    source.plug(b)
    assert source.unplug(b) == [Pulled(stick_id(b))]


def test_a_stick_still_being_probed_gets_a_grace_then_is_judged() -> None:
    core = Core(USB)
    source = FakeSource(core)
    bare = stick(1, uuid="", fstype="")
    assert source.plug(bare) == [StartGrace(bare.key)]
    assert source.plug(dataclasses.replace(bare, size=5)) == []  # one timer, not two
    assert core.grace_over(bare.key) == [Serve(dataclasses.replace(bare, size=5))]


def test_facts_arriving_within_the_grace_cancel_its_timer_and_serve() -> None:
    source = FakeSource(Core(USB))
    bare = stick(1, uuid="", fstype="")
    assert source.plug(bare) == [StartGrace(bare.key)]
    probed = stick(1)
    assert source.plug(probed) == [StopGrace(bare.key), Serve(probed)]


def test_a_stick_removed_during_its_grace_is_forgotten() -> None:
    core = Core(USB)
    source = FakeSource(core)
    bare = stick(1, uuid="", fstype="")
    source.plug(bare)
    assert source.unplug(bare) == [StopGrace(bare.key)]
    assert core.grace_over(bare.key) == []


def test_a_reformatted_stick_on_the_same_device_is_served_again() -> None:
    """A new filesystem UUID on the same device is a new stick, even without a removal."""
    core = Core(USB)
    source = FakeSource(core)
    a = stick(1)
    source.plug(a)
    core.job_ended(stick_id(a))
    fresh = stick(1, uuid="uuid-new")
    assert source.plug(fresh) == [Serve(fresh)]


def test_nothing_new_is_served_while_stopping() -> None:
    core = Core(USB)
    core.stopping = True
    assert FakeSource(core).plug(stick(1)) == []
