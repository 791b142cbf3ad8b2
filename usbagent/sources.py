"""Which event source the agent listens to: `usb.backend`, or for "auto" whichever runs.

Separate from `backend` (the protocol both sources implement) so that neither source module
imports the other's dependencies, and the protocol imports no source: no import cycle.
"""

from __future__ import annotations

import logging

from usbagent.backend import Backend
from usbagent.config import Config

log = logging.getLogger(__name__)


async def udisks_on_bus(address: str | None = None, activatable: bool = False) -> bool:
    """`udisks.on_bus`, False (logged) when there is no system bus at all."""
    from usbagent import udisks  # deferred: the udev backend must not need dbus-next

    try:
        return await udisks.on_bus(address, activatable)
    except (OSError, ValueError) as exc:
        log.info("no system bus (%s): UDisks2 not available", exc)
        return False


async def select(config: Config) -> Backend:
    """The backend named by usb.backend; for "auto", UDisks2 when it is on the bus, else udev."""
    choice = config.usb.backend
    if choice == "auto":
        choice = "udisks2" if await udisks_on_bus() else "udev"
        log.info("backend auto: using %s", choice)
    if choice == "udisks2":
        from usbagent.udisks import UDisksBackend

        return UDisksBackend()
    from usbagent.udev import UdevBackend

    return UdevBackend()
