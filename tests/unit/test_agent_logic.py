"""Pure parts of the agent and its backends: facts from UDisks2/udev data, event diffs, status."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from usbagent import journal, mounts, state
from usbagent.agentstatus import idle_status, lag_summary
from usbagent.backend import EventQueue, emit
from usbagent.config import AgentConfig
from usbagent.decide import stick_id
from usbagent.devices import Partition
from usbagent.events import Outcome
from usbagent.stickjob import progress_status
from usbagent.udev import facts_from_udev, is_candidate, mount_name
from usbagent.udisks import BLOCK, DRIVE, FILESYSTEM, LOOP, PARTITION, partition_facts

ROOT = "/org/freedesktop/UDisks2"


def _block(device: str, drive: str = "/", **extra: object) -> dict[str, object]:
    return {
        "Device": device.encode() + b"\0",
        "Drive": drive,
        "IdLabel": "",
        "IdType": "ext4",
        "IdUUID": "ABCD-1234",
        "Size": 1000,
        **extra,
    }


def test_udisks_usb_partition_facts() -> None:
    drive = f"{ROOT}/drives/Sandisk_1"
    part = f"{ROOT}/block_devices/sdb1"
    objects = {
        drive: {DRIVE: {"ConnectionBus": "usb"}},
        f"{ROOT}/block_devices/sdb": {BLOCK: _block("/dev/sdb", drive), "x.PartitionTable": {}},
        part: {
            BLOCK: _block("/dev/sdb1", drive, IdLabel="BACKUP"),
            PARTITION: {"Name": "sovereign-backup", "Table": f"{ROOT}/block_devices/sdb"},
            FILESYSTEM: {"MountPoints": [b"/media/root/BACKUP\0"]},
        },
    }
    p = partition_facts(part, objects)
    assert p == Partition(
        key=part,
        device="/dev/sdb1",
        label="BACKUP",
        part_name="sovereign-backup",
        uuid="abcd-1234",
        fstype="ext4",
        size=1000,
        bus="usb",
        drive=drive,
        mountpoints=("/media/root/BACKUP",),
    )
    # the partitioned whole disk itself is not a candidate
    assert partition_facts(f"{ROOT}/block_devices/sdb", objects) is None


def test_udisks_loop_partition_has_loop_bus_and_no_drive() -> None:
    table = f"{ROOT}/block_devices/loop3"
    part = f"{ROOT}/block_devices/loop3p1"
    objects = {
        table: {BLOCK: _block("/dev/loop3"), LOOP: {}},
        part: {BLOCK: _block("/dev/loop3p1"), PARTITION: {"Name": "", "Table": table}},
    }
    p = partition_facts(part, objects)
    assert p is not None
    assert (p.bus, p.drive, p.mountpoints) == ("loop", "", ())


def test_udisks_unformatted_partition_is_still_reported_for_policy() -> None:
    """An unknown filesystem must reach `refusal_reason` (which says why), not vanish."""
    part = f"{ROOT}/block_devices/sdc1"
    objects = {part: {BLOCK: _block("/dev/sdc1", IdType=""), PARTITION: {"Name": "backup"}}}
    p = partition_facts(part, objects)
    assert p is not None and p.fstype == "" and p.part_name == "backup"


def test_udisks_filesystem_not_ready_until_its_interface_appears() -> None:
    """Probed as a filesystem but no Filesystem interface yet: it could not be mounted."""
    part = f"{ROOT}/block_devices/sdd1"
    block = _block("/dev/sdd1", IdUsage="filesystem")
    objects: dict[str, dict[str, dict[str, object]]] = {part: {BLOCK: block, PARTITION: {}}}
    assert partition_facts(part, objects) is None
    objects[part][FILESYSTEM] = {"MountPoints": []}
    assert partition_facts(part, objects) is not None


def test_udev_facts_and_candidates() -> None:
    props = {
        "DEVTYPE": "partition",
        "DEVNAME": "/dev/sdb1",
        "MAJOR": "8",
        "MINOR": "17",
        "ID_BUS": "usb",
        "ID_FS_LABEL": "BACKUP",
        "ID_FS_TYPE": "vfat",
        "ID_FS_UUID": "ABCD-1234",
        "ID_PART_ENTRY_NAME": "sovereign-backup",
    }
    mounts = {(8, 17): ("/mnt/x",)}
    p = facts_from_udev("/sys/x/sdb/sdb1", props, 4096, "/sys/x/sdb", mounts)
    assert (p.label, p.part_name, p.uuid, p.fstype, p.bus, p.size, p.mountpoints) == (
        "BACKUP",
        "sovereign-backup",
        "abcd-1234",
        "vfat",
        "usb",
        4096,
        ("/mnt/x",),
    )
    loop = facts_from_udev(
        "/sys/devices/virtual/block/loop2/loop2p1", {"DEVTYPE": "partition"}, 0, "", {}
    )
    assert loop.bus == "loop"
    assert is_candidate({"DEVTYPE": "partition"})
    assert is_candidate({"DEVTYPE": "disk", "ID_FS_USAGE": "filesystem"})  # no partition table
    assert not is_candidate({"DEVTYPE": "disk", "ID_PART_TABLE_TYPE": "gpt"})


def test_mountinfo_parsing_unescapes_and_keeps_order() -> None:
    text = (
        "36 35 8:17 / /media/my\\040stick rw,nosuid - ext4 /dev/sdb1 rw\n"
        "37 35 8:17 / /mnt/again rw - ext4 /dev/sdb1 rw\n"
        "38 35 0:22 / /run rw - tmpfs tmpfs rw\n"
    )
    assert mounts.by_devnum(mounts.parse(text)) == {
        (8, 17): ("/media/my stick", "/mnt/again"),
        (0, 22): ("/run",),
    }
    # the mount id tells two mounts at the same place apart (the agent's note of its own)
    assert [e.mount_id for e in mounts.parse(text)] == [36, 37, 38]


def _p(key: str, **kw: object) -> Partition:
    base: dict[str, object] = dict(
        key=key, device="/dev/x", label="L", part_name="", uuid="u", fstype="ext4", size=1,
        bus="usb", drive="",
    )  # fmt: skip
    base.update(kw)
    return Partition(**base)  # type: ignore[arg-type]


def test_emit_reports_only_real_changes() -> None:
    queue: EventQueue = asyncio.Queue()
    known: dict[str, Partition] = {}
    emit(queue, known, "k", _p("k"))
    emit(queue, known, "k", _p("k"))  # same facts again (snapshot + event race): nothing
    emit(queue, known, "k", _p("k", mountpoints=("/m",)))
    emit(queue, known, "k", None)
    emit(queue, known, "k", None)  # already gone: nothing
    emit(queue, known, "other", None)  # never a candidate: nothing
    events = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [a for a, _ in events] == ["added", "changed", "removed"]
    assert known == {}


def test_status_lines_and_stick_identity() -> None:
    assert idle_status(("a", "b"), None) == "idle, watching for sticks labelled a, b"
    assert idle_status(("a",), "disk full").endswith("; last error: disk full")
    assert progress_status(3, 5, 42, 100, "BACKUP") == "copying 3 of 5, 42% to BACKUP"
    assert progress_status(1, 1, 0, 0, "B") == "copying 1 of 1, 0% to B"
    assert stick_id(_p("k", uuid="u1")) == "u1"  # the same filesystem on any device node
    assert stick_id(_p("k", uuid="")) == "k"


def test_lag_summary() -> None:
    assert lag_summary([]) == {"max_ms": 0.0, "p99_ms": 0.0}
    samples = [0.001] * 99 + [0.5]
    assert lag_summary(samples) == {"max_ms": 500.0, "p99_ms": 500.0}
    assert lag_summary([0.001] * 200 + [0.5])["p99_ms"] == 1.0


def test_outcomes_recorded_from_concurrent_sync_threads_all_land(tmp_path: Path) -> None:
    """Two sticks are served at once, each recording from its own thread: none may fail."""
    agent = AgentConfig(state_dir=tmp_path)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        for i in range(50):
            try:
                journal.record(agent, Outcome(kind="sync", ok=False, summary=f"{n}-{i}"))
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(state.events(tmp_path)) == 200
    assert state.last_error(tmp_path) is not None


def test_udev_mount_point_name_cannot_escape_the_mount_folder() -> None:
    assert (
        mount_name(_p("k", uuid="3bf5b5e7-442e-48d4", device="/dev/sdb1")) == "3bf5b5e7-442e-48d4"
    )
    assert mount_name(_p("k", uuid="abcd-1234", device="/dev/sdb1")) == "abcd-1234"
    for hostile in ("../../etc", "a/b", "", ".hidden", "x" * 80):
        assert mount_name(_p("k", uuid=hostile, device="/dev/sdb1")) == "sdb1"


def test_a_device_below_usb_is_on_usb_for_every_reader_even_without_id_bus() -> None:
    """The rule `usbagent sync` alone applied before: the udev backend then refused, under
    require_usb, a stick that `usbagent sync` accepted."""
    from usbagent.config import UsbConfig
    from usbagent.devices import refusal_reason
    from usbagent.udev import with_usb_bus

    props = {"DEVTYPE": "partition", "DEVNAME": "/dev/sdb1", "ID_FS_LABEL": "B",
             "ID_FS_TYPE": "ext4", "ID_FS_UUID": "u", "MAJOR": "8", "MINOR": "17"}  # fmt: skip
    below_usb = with_usb_bus(props, ["scsi", "usb", "pci"])
    p = facts_from_udev("/sys/x/sdb1", below_usb, 1 << 30, "/sys/x/sdb", {})
    assert p.bus == "usb"
    assert refusal_reason(p, UsbConfig(labels=("B",), require_usb=True), {"a": 1024}) is None
    assert with_usb_bus(props, ["scsi", "pci"]) == props  # nothing below usb: no bus claimed
    ata = {**props, "ID_BUS": "ata"}
    assert with_usb_bus(ata, ["usb"]) == ata  # what udev named wins
