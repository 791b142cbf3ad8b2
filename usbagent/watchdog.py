"""systemd notify protocol (READY/STATUS/WATCHDOG/STOPPING) without silent failures.

sdnotify on its own swallows every socket error unless debug=True, and encodes messages as
latin-1 although systemd reads STATUS= as UTF-8. This wrapper runs sdnotify in debug mode,
sends UTF-8, and logs a broken notify socket once per failure streak: a watchdog that cannot
reach systemd is a restart waiting to happen, so it must show in the journal, but it must
never crash the agent or flood the log.

Outside systemd (no $NOTIFY_SOCKET) every method is a no-op.
"""

from __future__ import annotations

import logging
import os
import unicodedata

from sdnotify import SystemdNotifier

log = logging.getLogger(__name__)

# systemd shows STATUS= in one line of `systemctl status`; keep it readable there.
MAX_STATUS_CHARS = 200


class _Utf8Notifier(SystemdNotifier):  # type: ignore[misc]  # sdnotify is untyped
    """sdnotify's socket handling (incl. '@' abstract addresses), but sending UTF-8."""

    def notify(self, state: str) -> None:
        if self.socket is None:  # connecting failed; the constructor raised already
            raise ConnectionError("notify socket is not connected")
        self.socket.sendall(state.encode("utf-8"))


def clean_status(line: str) -> str:
    """One printable line of bounded length: control characters become spaces.

    A newline inside STATUS= would end the field and let the rest be parsed as another
    assignment (e.g. a file name containing "\\nREADY=1").
    """
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in line)
    text = " ".join(text.split())
    if len(text) > MAX_STATUS_CHARS:
        text = text[: MAX_STATUS_CHARS - 1] + "…"
    return text


def _watchdog_interval(usec: str | None, pid: str | None) -> float | None:
    """Seconds between pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    None when systemd set no watchdog, or set it for another process (WATCHDOG_PID).
    """
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring invalid WATCHDOG_USEC=%r from the environment", usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Watchdog:
    """Talks to systemd as the environment (NOTIFY_SOCKET, WATCHDOG_USEC/PID) says."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        self.interval: float | None = (
            _watchdog_interval(os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID"))
            if self.address
            else None
        )
        self._notifier: _Utf8Notifier | None = None
        self._failing = False

    def ready(self) -> None:
        """Call only once the event sources are subscribed: systemd then reports us active."""
        self._send("READY=1")

    def status(self, line: str) -> None:
        """The human line `systemctl status` shows (idle / copying 3 of 5, 42% / last error)."""
        self._send("STATUS=" + clean_status(line))

    def ping(self) -> None:
        """WATCHDOG=1; call from the event loop only while it and the backend are healthy."""
        if self.interval is not None:
            self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before systemd kills a slow start/stop (EXTEND_TIMEOUT_USEC)."""
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._notifier is None:
                self._notifier = _Utf8Notifier(debug=True)
            self._notifier.notify(message)
        except OSError as exc:
            self._failed(message, exc)
            return
        if self._failing:
            self._failing = False
            log.info("systemd notify socket %s works again", self.address)

    def _failed(self, message: str, exc: OSError) -> None:
        """Log the first failure of a streak; reconnect on the next send."""
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self._notifier = None
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot send %r to the systemd notify socket %s (%s): systemd will not see "
                "readiness or watchdog pings and may kill this service",
                message.split("=", 1)[0],
                self.address,
                exc,
            )
