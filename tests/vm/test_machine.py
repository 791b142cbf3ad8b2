"""The real machine: usbagent as shipped, in a Debian 12 guest with systemd as PID 1.

One guest for this module, booted once; the cases run in file order on it (the numbers are
the cases of issue 8) and each leaves the machine as it found it. Case 7 (a power cut, then
a boot a day later) boots the same disk again; the missed night that boot brings is checked
last, after the timer's random delay has had time to pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.vm import sticks
from tests.vm.driver import UsbStick
from tests.vm.guest import (
    AGENT,
    CONFIG,
    DESTINATION,
    IDENTITY,
    RECIPIENTS,
    STATE,
    USBAGENT,
    VENV,
    Guest,
)

UNITS = (
    "usbagent.service",
    "usbagent-archive.service",
    "usbagent-notify-failure@usbagent.service.service",
)


def systemd_time(guest: Guest, unit: str, prop: str) -> str:
    """A timestamp property as `status` prints times ("2026-12-02 02:00 UTC")."""
    value = guest.ok(f"TZ=UTC LC_ALL=C systemctl show -p {prop} --value {unit}").strip()
    return datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S UTC").strftime("%Y-%m-%d %H:%M UTC")


def sha256_in_guest(guest: Guest, path: str) -> str:
    return guest.ok(f"sha256sum {path}").split()[0]


@pytest.fixture
def archive(machine: Guest) -> str:
    """The newest archive in the guest; the nightly job makes one first if there is none.

    A case that copies an archive asks for this instead of relying on an earlier case's run.
    """
    if not machine.archives():
        machine.ok("systemctl start usbagent-archive.service", timeout=600)
    return machine.archives()[-1]


def test_1_install_leaves_a_running_agent_an_enabled_timer_and_a_clean_doctor(
    machine: Guest, record_property: pytest.RecordProperty
) -> None:
    agent = machine.unit("usbagent.service", "ActiveState", "SubState", "NRestarts", "Type")
    # Type=notify: "active" only once the agent sent READY=1.
    assert agent == {"ActiveState": "active", "SubState": "running", "NRestarts": "0",
                     "Type": "notify"}  # fmt: skip
    timer = machine.unit("usbagent-archive.timer", "UnitFileState", "ActiveState")
    assert timer == {"UnitFileState": "enabled", "ActiveState": "active"}
    doctor = machine.usbagent("doctor")
    assert doctor.rc == 0, doctor.out + doctor.err
    # Installing again (an upgrade) restarts the agent: it must not keep running old code
    # under the old unit's sandbox until the next boot.
    pid = machine.unit("usbagent.service", "MainPID")["MainPID"]
    machine.usbagent("install", timeout=300).check("usbagent install (again)")
    after = machine.unit("usbagent.service", "MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] != pid, after
    for unit in UNITS:
        out = machine.sh(f"systemd-analyze security --no-pager {unit} | tail -1").out.strip()
        record_property(f"security {unit}", out)
        print(f"systemd-analyze security {unit}: {out}")


def test_2_the_timers_service_makes_an_archive_the_standard_tools_read(machine: Guest) -> None:
    before = set(machine.archives())
    machine.ok("systemctl start usbagent-archive.service", timeout=600)
    job = machine.unit("usbagent-archive.service", "Result", "ExecMainStatus")
    assert job == {"Result": "success", "ExecMainStatus": "0"}
    (new,) = set(machine.archives()) - before
    listing = machine.ok(f"age -d -i {IDENTITY} {DESTINATION}/{new} | zstd -d | tar -t")
    assert "data/docs/note-19.txt" in listing.split() and "data/photos/cat.jpg" in listing.split()
    machine.ok(f"cd {DESTINATION} && sha256sum -c {new}.sha256")
    # `status` shows the next run systemd has (systemd 252 prints it in its default style).
    timer = machine.check("archive-timer")
    nxt = systemd_time(machine, "usbagent-archive.timer", "NextElapseUSecRealtime")
    assert timer["state"] == "OK" and f"next {nxt}" in timer["message"], timer
    assert machine.check("archive")["state"] == "OK"


@pytest.fixture(scope="module")
def ext4_stick(machine: Guest, tmp_path_factory: pytest.TempPathFactory) -> sticks.StickImage:
    return sticks.make(tmp_path_factory.mktemp("sticks") / "ext4.img", "ext4", 128,
                       "sovereign-backup")  # fmt: skip


def test_3_ext4_usb_stick_is_copied_verified_powered_off_and_alice_is_told(
    machine: Guest, ext4_stick: sticks.StickImage, archive: str
) -> None:
    machine.login()
    machine.clear_notifications()
    newest = archive
    cursor = machine.cursor()
    machine.vm.plug_usb("stick-ext4", ext4_stick.path, serial="UAEXT4")
    try:
        machine.wait_notified("safe to remove", timeout=300)
        # Drive.PowerOff: the stick left the guest's USB bus and nothing is mounted from it.
        machine.vm.wait_guest("! lsblk -dno SERIAL | grep -qx UAEXT4", 60, "the stick to leave")
        assert "sovereign-backup" not in machine.ok("findmnt -rn -o TARGET,SOURCE")
        log = machine.agent_log_after(cursor)
        assert "not delivered" not in log and "kept for later" not in log, log
        # What is kept (last/sync.json, which `status` reads) is exactly what alice was told.
        sync = json.loads(machine.ok(f"cat {STATE}/last/sync.json"))
        assert sync["ok"] and sync["details"]["removal"] == "powered-off", sync
        told = [body for summary, body in machine.notes() if summary.startswith("Backup copied")]
        assert told == [sync["summary"]], (told, sync)
        assert sync["summary"].endswith("unmounted and powered off, safe to remove"), sync
        want = sha256_in_guest(machine, f"{DESTINATION}/{newest}")
    finally:
        machine.vm.unplug("stick-ext4")  # the next case plugs it again
    on_stick = sticks.files(ext4_stick)
    assert hashlib.sha256(on_stick[newest]).hexdigest() == want
    assert on_stick[newest + ".sha256"].decode().split()[0] == want


def test_3_a_notification_missed_while_logged_out_is_shown_at_login(
    machine: Guest, ext4_stick: sticks.StickImage, archive: str
) -> None:
    machine.logout()
    cursor = machine.cursor()
    machine.vm.plug_usb("stick-ext4", ext4_stick.path, serial="UAEXT4")
    machine.wait_logged(
        cursor,
        "kept for later (no graphical session): Backup copied: stick safe to remove",
        180,
        "the 'safe to remove' note to be kept (nobody logged in)",
    )
    machine.vm.unplug("stick-ext4")
    machine.clear_notifications()
    machine.login()
    machine.wait_notified("Missed while you were away: Backup copied: stick safe to remove", 180)


def test_8_a_hung_agent_is_killed_by_the_watchdog_restarted_and_alice_is_told(
    machine: Guest,
) -> None:
    machine.clear_notifications()
    before = machine.unit("usbagent.service", "MainPID", "NRestarts")
    machine.ok(f"kill -STOP {before['MainPID']}")
    machine.vm.wait_guest(
        f'[ "$(systemctl show -p NRestarts --value usbagent.service)" = '
        f"{int(before['NRestarts']) + 1} ] && systemctl is-active -q usbagent.service",
        120,
        "the watchdog to kill and systemd to restart the agent",
    )
    after = machine.unit("usbagent.service", "MainPID", "Result")
    assert after["MainPID"] != before["MainPID"]
    machine.wait_notified("Backup service failed: usbagent.service", 120)
    assert "watchdog" in machine.ok(f"cat {STATE}/last/unit-failed.json")


def _python_usbagent(machine: Guest, args: str) -> tuple[int, str]:
    r = machine.sh(f"{VENV}/bin/python3 -m usbagent --config {CONFIG} {args}")
    return r.rc, r.out + r.err


def test_8_a_missing_execstart_is_recorded_notified_and_makes_status_critical(
    machine: Guest,
) -> None:
    machine.clear_notifications()
    machine.ok(f"mv {USBAGENT} /root/usbagent.moved")
    try:
        machine.sh("systemctl start usbagent-archive.service", timeout=120)
        job = machine.unit("usbagent-archive.service", "Result", "ExecMainStatus")
        assert job == {"Result": "exit-code", "ExecMainStatus": "203"}, job
        machine.wait_notified("Backup service failed: usbagent-archive.service", 120)
        rc, out = _python_usbagent(machine, "status")
        assert rc == 2 and out.startswith("usbagent CRITICAL"), out
        assert "usbagent-archive.service" in out and "203/EXEC" in out, out
    finally:
        machine.ok(f"mv /root/usbagent.moved {USBAGENT}")
    _good_archive(machine)


def _good_archive(machine: Guest) -> None:
    """A successful run again, so the next case starts from a healthy machine."""
    machine.ok("systemctl reset-failed; systemctl start usbagent-archive.service", timeout=600)
    rc, out = _python_usbagent(machine, "status")
    assert rc == 0, out


def test_9_recipients_file_moved_away_the_timer_run_fails_status_critical_alice_told(
    machine: Guest,
) -> None:
    machine.clear_notifications()
    machine.ok(f"mv {RECIPIENTS} /root/recipients.moved")
    try:
        r = machine.sh("systemctl start usbagent-archive.service", timeout=300)
        assert r.rc != 0
        # alice is told why, not only "exited with status 1"
        machine.wait_notified(f"recipients file {RECIPIENTS} does not exist", 120)
        rc, out = _python_usbagent(machine, "status")
        assert rc == 2 and out.startswith("usbagent CRITICAL"), out
        assert f"recipients file {RECIPIENTS} does not exist" in out, out
    finally:
        machine.ok(f"mv /root/recipients.moved {RECIPIENTS}")
    _good_archive(machine)


def test_5_a_labelled_disk_that_is_not_on_usb_is_refused_recorded_and_notified(
    machine: Guest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    disk = sticks.make(tmp_path_factory.mktemp("disk") / "virtio.img", "ext4", 64,
                       "sovereign-backup")  # fmt: skip
    machine.login()
    machine.clear_notifications()
    n = len(machine.events())
    machine.vm.plug_disk("disk-virtio", disk.path, serial="UAVIRTIO")
    try:
        refused = machine.wait_event("refused", n)
        assert "not USB" in refused["summary"], refused
        machine.wait_notified("Backup stick not used", 60)
        assert "sovereign-backup" not in machine.ok("findmnt -rn -o TARGET")
    finally:
        machine.vm.unplug("disk-virtio")
    assert "usbagent" not in sticks.ext4_root(disk), "a refused disk was written to"


@pytest.fixture(scope="module")
def fat_sticks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sticks.StickImage]:
    d = tmp_path_factory.mktemp("fat")
    return {
        "vfat": sticks.make(d / "fat32.img", "vfat", 96, "BACKUP"),
        "exfat": sticks.make(d / "exfat.img", "exfat", 96, "BACKUP"),
    }


@pytest.mark.parametrize("fs", ["vfat", "exfat"])
def test_4_fat32_and_exfat_sticks_are_mounted_for_real_copied_and_verified(
    machine: Guest, fat_sticks: dict[str, sticks.StickImage], fs: str, archive: str
) -> None:
    stick = fat_sticks[fs]
    newest = archive
    want = sha256_in_guest(machine, f"{DESTINATION}/{newest}")
    n = len(machine.events())
    machine.vm.plug_usb(f"stick-{fs}", stick.path, serial=f"UA{fs.upper()}")
    sync = machine.wait_event("sync", n)
    assert sync["ok"] and "safe to remove" in sync["summary"], sync
    assert sync["details"]["fstype"] == fs, sync
    machine.vm.unplug(f"stick-{fs}")
    if fs == "vfat":  # read back on the host with mtools
        found = sticks.fat_files(stick)
        assert hashlib.sha256(found[newest]).hexdigest() == want
        assert found[newest + ".sha256"].decode().split()[0] == want
        assert not sticks.fat_dirty(stick), "unmounted cleanly: the dirty bit must be clear"
    else:  # the host kernel has no exFAT: the guest's own driver reads it, not via usbagent
        machine.vm.plug_disk("check-exfat", stick.path, serial="UACHECK")
        try:
            machine.vm.wait_guest("blkid -L BACKUP >/dev/null", 60, "the exFAT disk")
            machine.ok("mkdir -p /mnt/check && mount -o ro $(blkid -L BACKUP) /mnt/check")
            got = sha256_in_guest(machine, f"/mnt/check/usbagent/{newest}")
            machine.ok("umount /mnt/check")
        finally:
            machine.vm.unplug("check-exfat")
        assert got == want


def test_4_an_archive_over_4_gib_is_refused_for_fat32_before_mount_naming_its_size(
    machine: Guest, fat_sticks: dict[str, sticks.StickImage]
) -> None:
    size = 4 * 2**30 + 2**20
    name = f"vm-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.zst.age"
    # A real file of that size, sparse; its sidecar is its true SHA-256 (of the zeros).
    digest = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(zeros)
    machine.ok(f"truncate -s {size} {DESTINATION}/{name}")
    machine.vm.write(f"{DESTINATION}/{name}.sha256", f"{digest.hexdigest()}  {name}\n")
    n = len(machine.events())
    try:
        machine.vm.plug_usb("stick-vfat", fat_sticks["vfat"].path, serial="UAVFAT")
        refused = machine.wait_event("refused", n)
        assert str(size) in refused["summary"] or "4.0 GiB" in refused["summary"], refused
        assert "sovereign-backup" not in machine.ok("findmnt -rn -o SOURCE,TARGET")
        assert not any(e["kind"] == "sync" for e in machine.events()[n:])
    finally:
        machine.vm.unplug("stick-vfat")
        machine.ok(f"rm -f {DESTINATION}/{name} {DESTINATION}/{name}.sha256")


BIG_MIB = 200  # an archive whose copy takes seconds even here, so it can be interrupted
CUT_AT_MIB = 48  # interrupt once this much of it is on the stick


def new_big_archive(machine: Guest) -> str:
    """A new archive holding BIG_MIB of fresh random data (an increment of about that size)."""
    before = set(machine.archives())
    machine.ok(f"mkdir -p /data/big && head -c {BIG_MIB}M /dev/urandom > /data/big/blob", 600)
    machine.ok("systemctl start usbagent-archive.service", timeout=900)
    (new,) = set(machine.archives()) - before
    return new


@pytest.fixture(scope="module")
def big_archive(machine: Guest) -> str:
    return new_big_archive(machine)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_7_a_power_cut_mid_copy_then_a_boot_next_day_with_the_sticks_still_in(
    machine: Guest, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> None:
    d = tmp_path_factory.mktemp("cut")
    images = {
        "ext4": sticks.make(d / "ext4.img", "ext4", 640, "sovereign-backup"),
        "vfat": sticks.make(d / "vfat.img", "vfat", 640, "BACKUP"),
    }
    plugged = tuple(
        UsbStick(f"cut-{fs}", stick.path, f"UACUT{fs.upper()}") for fs, stick in images.items()
    )
    # Older copies first: both sticks served in full, the host's view of them kept.
    n = len(machine.events())
    for s in plugged:
        machine.vm.plug_usb(s.name, s.image, serial=s.serial)
    seeded = [machine.wait_event_where(f"the {fs} stick's first sync", _synced(fs), n)
              for fs in images]  # fmt: skip
    assert all(e["ok"] for e in seeded), seeded
    unplug_powered_off(machine, plugged)
    older = {fs: {k: sha(v) for k, v in sticks.files(st).items()} for fs, st in images.items()}

    # A new archive (made only now: the older copies stay small) is being copied to both
    # sticks when the power goes.
    big = request.getfixturevalue("big_archive")
    want = machine.digests()
    for s in plugged:
        machine.vm.plug_usb(s.name, s.image, serial=s.serial)
    machine.wait_copying(2, CUT_AT_MIB)
    cut = datetime.now(UTC)
    machine.vm.power_cut()
    for fs, stick in images.items():
        found = sticks.files(stick)
        assert sticks.bad_copies(found, want) == [], fs
        assert {k: sha(found[k]) for k in older[fs] if k in found} == older[fs], fs
    assert sticks.fat_dirty(images["vfat"])

    # Power back on with both sticks still in, the next day: the night's 02:00 run was
    # missed while the machine was off (the module's last case checks it ran after the boot).
    machine.vm.boot(sticks=plugged, clock=cut + timedelta(days=1))
    after = [machine.wait_event_where(f"the {fs} stick's sync after the boot",
                                      _synced(fs, since=cut)) for fs in images]  # fmt: skip
    assert all(e["ok"] for e in after), after
    assert after[1]["details"]["repaired"] is True, after[1]  # FAT: checked, repaired, said
    assert "not removed safely last time" in after[1]["summary"], after[1]
    unplug_powered_off(machine, plugged)
    want = machine.digests()  # the night's run (see the last case) may have made one more
    for fs, stick in images.items():
        found = sticks.files(stick)
        assert sticks.bad_copies(found, want) == [], fs
        assert big in found and set(older[fs]) <= set(found), (fs, sorted(found))


def unplug_powered_off(machine: Guest, plugged: tuple[UsbStick, ...]) -> None:
    """Take out sticks the agent powered off (they left the guest's bus first)."""
    for s in plugged:
        machine.vm.wait_guest(f"! lsblk -dno SERIAL | grep -qx {s.serial}", 60, "power-off")
        machine.vm.unplug(s.name)


@pytest.mark.parametrize("fs", ["ext4", "vfat"])
def test_6_a_stick_pulled_mid_copy_is_reported_removed_and_served_when_plugged_again(
    machine: Guest, big_archive: str, fs: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    label = "sovereign-backup" if fs == "ext4" else "BACKUP"
    stick = sticks.make(tmp_path_factory.mktemp("pull") / f"{fs}.img", fs, 320, label)
    name, serial = f"pull-{fs}", f"UAPULL{fs.upper()}"
    machine.login()
    machine.clear_notifications()
    agent = machine.unit(AGENT, "MainPID", "NRestarts")
    n = len(machine.events())
    machine.vm.plug_usb(name, stick.path, serial=serial)
    machine.wait_copying(1, CUT_AT_MIB)
    machine.vm.unplug(name)

    pulled = machine.wait_event("sync", n)
    assert not pulled["ok"], pulled
    assert "plugged in but not backed up" in pulled["summary"], pulled
    assert "the stick was removed during the copy" in pulled["summary"], pulled
    assert big_archive not in pulled["details"].get("copied", []), pulled
    machine.wait_notified("the stick was removed during the copy", 120)
    told = [body for _, body in machine.notes() if "removed during the copy" in body]
    assert told == [pulled["summary"]], told  # once, and what was recorded
    # No hang, no restart: the same agent process, and nothing of the stick stays mounted.
    assert machine.unit(AGENT, "MainPID", "NRestarts") == agent
    machine.vm.wait_guest(
        "! findmnt -rn -o TARGET | grep -q '^/media/'", 60, "the pulled stick's mount to go"
    )
    want = machine.digests()
    assert sticks.bad_copies(sticks.files(stick), want) == []
    if fs == "vfat":  # the kernel marks a mounted FAT dirty; a pull leaves it so
        assert sticks.fat_dirty(stick)

    # The next plug is served: checked (FAT: repaired, and alice is told), copied, verified.
    machine.clear_notifications()
    n = len(machine.events())
    machine.vm.plug_usb(name, stick.path, serial=serial)
    served = machine.wait_event("sync", n, timeout=300)
    unplug_powered_off(machine, (UsbStick(name, stick.path, serial),))
    assert served["ok"] and served["summary"].endswith("safe to remove"), served
    if fs == "vfat":
        assert served["details"]["repaired"] is True, served
        machine.wait_notified("not removed safely last time", 120)
        assert not sticks.fat_dirty(stick)
    found = sticks.files(stick)
    # The night case 7's boot missed may have run meanwhile: judge against what is there now.
    assert sticks.bad_copies(found, machine.digests()) == []
    assert set(want) <= set(found) and not [f for f in found if f.endswith(".partial")]
    assert machine.unit(AGENT, "MainPID", "NRestarts") == agent


def _synced(fs: str, since: datetime | None = None) -> Callable[[dict[str, Any]], bool]:
    """Is an event a sync outcome for the stick with filesystem `fs` (recorded after `since`)?"""

    def pred(e: dict[str, Any]) -> bool:
        return (
            e["kind"] == "sync"
            and e.get("details", {}).get("fstype") == fs
            and (since is None or datetime.fromisoformat(e["time"]) > since)
        )

    return pred


def test_2_a_night_missed_while_the_machine_was_off_runs_after_the_next_boot(
    machine: Guest,
) -> None:
    """Last: case 7 booted the machine a day after its power cut. The timer's catch-up run
    (Persistent=true) comes after a random delay of up to RandomizedDelaySec (5 min) from
    the boot, so this waits for it at the end, while the other cases ran."""
    if machine.vm.clock is None:  # case 7 was not run: a night off of this case's own
        machine.ok("sync")
        machine.vm.power_cut()
        machine.vm.boot(clock=datetime.now(UTC) + timedelta(days=1))
    machine.vm.wait_guest(
        '[ "$(systemctl show -p ExecMainExitTimestampMonotonic --value '
        'usbagent-archive.service)" != 0 ]',
        420,
        "the missed night's archive run",
    )
    job = machine.unit("usbagent-archive.service", "Result", "ExecMainStatus")
    assert job == {"Result": "success", "ExecMainStatus": "0"}, job
    booted = int(machine.ok('date -d "$(uptime -s)" +%s'))
    last = json.loads(machine.ok(f"cat {STATE}/last/archive.json"))
    assert last["ok"] and datetime.fromisoformat(last["time"]).timestamp() >= booted, last
    assert last["details"]["archive"] in machine.archives(), last
    timer = machine.check("archive-timer")
    ran = systemd_time(machine, "usbagent-archive.timer", "LastTriggerUSec")
    assert timer["state"] == "OK" and f"last run {ran}" in timer["message"], timer
