"""One byte formatter for every message, so a line never mixes MiB and MB (issue 9, 19)."""

from __future__ import annotations

from usbagent import health, syncwords
from usbagent.units import human_bytes


def test_binary_units_with_one_decimal() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(46_399_488) == "44.2 MiB"  # the "44.2 MiB ... 46.4 MB"
    assert human_bytes(3 * 2**30 // 2) == "1.5 GiB"
    assert human_bytes(5 * 2**40) == "5.0 TiB"
    assert human_bytes(2**70) == "1048576.0 PiB"


def test_status_and_sync_say_the_same_thing_for_the_same_bytes() -> None:
    free = 46_399_488
    assert health.size(free) == syncwords.human(free) == "44.2 MiB"
