"""usbagent: encrypted nightly archives, copied to a labeled USB stick when it is plugged in."""

__version__ = "0.1.0"
