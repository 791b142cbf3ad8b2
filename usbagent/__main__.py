"""`python -m usbagent`."""

import sys

from usbagent.cli import main

sys.exit(main())
