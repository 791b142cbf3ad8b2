"""The one exception type the CLI turns into a one-line message and exit status 1."""


class UsbagentError(Exception):
    """A failure the user can act on; the message names the thing and the fix."""
