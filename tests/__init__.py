"""usbagent's tests; a package so that `tests.stack` imports the same way everywhere."""
