"""The agent's decisions, apart from its I/O: device event + what it knows -> actions.

Everything here is plain data and synchronous; `usbagent.agent` (the daemon) feeds it the
backends' events, the end of each job and the end of each probe grace, and carries out the
actions it returns (start a job, set or cancel a timer, cancel a job). So the rules (already
handled during this plug, label, probe grace, one job per stick, a stick pulled mid-job)
are tested in microseconds, without a device stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usbagent.backend import Action
from usbagent.config import UsbConfig
from usbagent.devices import Partition, label_matches


def stick_id(p: Partition) -> str:
    """One job per physical filesystem: UUID when known, else the backend's device key."""
    return p.uuid or p.key


@dataclass(frozen=True)
class Serve:
    """Start a job for this stick (mount, sync, unmount, report)."""

    partition: Partition


@dataclass(frozen=True)
class StartGrace:
    """A labelled partition without filesystem facts yet: call `grace_over(key)` later."""

    key: str


@dataclass(frozen=True)
class StopGrace:
    """The facts arrived (or the device left): the grace timer for `key` is not needed."""

    key: str


@dataclass(frozen=True)
class Pulled:
    """The stick of a running job disappeared: cancel that job, and say so in its outcome."""

    stick: str


Decision = Serve | StartGrace | StopGrace | Pulled


@dataclass
class Core:
    """What the agent knows about devices and jobs; each method returns what to do now."""

    usb: UsbConfig
    present: dict[str, Partition] = field(default_factory=dict)  # device key -> latest facts
    # device key -> fs UUID decided during its current plug (a new UUID on the same
    # device is a reformatted or swapped stick, even if its removal was never seen)
    handled: dict[str, str] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)  # stick id -> device key of its job
    waiting: set[str] = field(default_factory=set)  # device keys in their probe grace
    stopping: bool = False

    def on_event(self, action: Action, p: Partition) -> list[Decision]:
        if action == "removed":
            self.present.pop(p.key, None)
            self.handled.pop(p.key, None)
            out: list[Decision] = []
            if p.key in self.waiting:
                self.waiting.discard(p.key)
                out.append(StopGrace(p.key))
            out += [Pulled(s) for s, key in self.busy.items() if key == p.key]
            return out
        if action == "changed" and p.key not in self.present:
            return []  # a device we consider removed comes back only with a new "added"
        self.present[p.key] = p
        return self.consider(p)

    def consider(self, p: Partition, waited: bool = False) -> list[Decision]:
        """Serve `p` if it is ours, not yet decided during this plug and not already busy."""
        if self.handled.get(p.key) == p.uuid or self.stopping:
            return []
        if not label_matches(p, self.usb):
            return []
        if not (p.fstype or p.uuid or waited):
            # udev/UDisks2 may still be probing it (a big stick takes a moment): judge it
            # only if it stays that way, so a fine stick never gets a false refusal
            if p.key in self.waiting:
                return []
            self.waiting.add(p.key)
            return [StartGrace(p.key)]
        out: list[Decision] = []
        if p.key in self.waiting:
            self.waiting.discard(p.key)
            out.append(StopGrace(p.key))
        if stick_id(p) in self.busy:
            return out  # served once its job has ended (see job_ended)
        self.handled[p.key] = p.uuid
        self.busy[stick_id(p)] = p.key
        return [*out, Serve(p)]

    def grace_over(self, key: str) -> list[Decision]:
        self.waiting.discard(key)
        p = self.present.get(key)
        return self.consider(p, waited=True) if p is not None else []

    def job_ended(self, stick: str) -> list[Decision]:
        """A job ended; a stick re-plugged while it wound down is served now."""
        self.busy.pop(stick, None)
        out: list[Decision] = []
        for p in list(self.present.values()):
            if stick_id(p) == stick:
                out += self.consider(p)
        return out
