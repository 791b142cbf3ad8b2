"""Which event source the agent listens to: `usb.backend`, or for "auto" whichever runs.

Separate from `backend` (the protocol both sources implement) so that neither source module
imports the other's dependencies, and the protocol imports no source: no import cycle.
"""

from __future__ import annotations

import logging

from usbagent.backend import Backend
from usbagent.config import Config

log = logging.getLogger(__name__)


async def udisks_on_bus() -> bool:
    """Whether org.freedesktop.UDisks2 has an owner on the system bus (no activation)."""
    from usbagent import udisks  # deferred: the udev backend must not need dbus-next

    return await udisks.name_has_owner()


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
