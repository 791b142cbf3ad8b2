"""Watchdog against a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from usbagent.watchdog import MAX_STATUS_CHARS, Watchdog, clean_status


class Receiver:
    """A bound datagram socket: what systemd's manager would read."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(2)
        self.address = address

    def recv(self) -> bytes:
        return self.sock.recv(4096)


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", r.address)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield r
    r.sock.close()


def test_messages_arrive_as_systemd_reads_them(receiver: Receiver) -> None:
    wd = Watchdog()
    wd.ready()
    wd.status("copying 3 of 5, 42% — Größe ok")
    wd.ping()
    wd.extend_timeout(12.5)
    wd.stopping()
    assert receiver.recv() == b"READY=1"
    assert receiver.recv() == "STATUS=copying 3 of 5, 42% — Größe ok".encode()
    assert receiver.recv() == b"WATCHDOG=1"
    assert receiver.recv() == b"EXTEND_TIMEOUT_USEC=12500000"
    assert receiver.recv() == b"STOPPING=1"


def test_interval_is_half_the_watchdog_timeout(receiver: Receiver) -> None:
    assert Watchdog().interval == 1.5


def test_watchdog_meant_for_another_process_is_not_ours(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    wd = Watchdog()
    assert wd.interval is None
    wd.ping()  # no watchdog for us: nothing is sent
    wd.ready()
    assert receiver.recv() == b"READY=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Receiver("@usbagent-test-" + secrets.token_hex(6))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", r.address)
        Watchdog().status("idle")
        assert r.recv() == b"STATUS=idle"
    finally:
        r.sock.close()


def test_status_is_one_bounded_line(receiver: Receiver) -> None:
    Watchdog().status("bad\nREADY=1\x00\ttab " + "x" * 500)
    got = receiver.recv().decode()
    assert "\n" not in got and "\x00" not in got
    assert got.startswith("STATUS=bad READY=1 tab x")
    assert len(got) == len("STATUS=") + MAX_STATUS_CHARS


def test_clean_status_keeps_unicode() -> None:
    assert clean_status("  ünïcødé\r\n ok ") == "ünïcødé ok"


def test_without_notify_socket_everything_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    wd = Watchdog()
    assert wd.interval is None
    wd.ready()
    wd.status("idle")
    wd.ping()
    wd.stopping()


def test_broken_socket_is_logged_once_per_streak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    wd = Watchdog()
    with caplog.at_level(logging.INFO, logger="usbagent.watchdog"):
        wd.ready()
        wd.ping()
        wd.status("idle")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage() and "READY" in warnings[0].getMessage()

    # systemd's socket comes back: messages flow again and the recovery is logged.
    caplog.clear()
    r = Receiver(str(path))
    try:
        with caplog.at_level(logging.INFO, logger="usbagent.watchdog"):
            wd.ping()
        assert r.recv() == b"WATCHDOG=1"
        assert any("works again" in rec.getMessage() for rec in caplog.records)
        # ...and a socket that breaks after working is a new streak, logged again.
        r.sock.close()
        path.unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="usbagent.watchdog"):
            wd.ping()
            wd.ping()
        assert len(caplog.records) == 1
    finally:
        r.sock.close()
