"""Byte counts for people: the one formatter every message uses, so a line never mixes
MiB and MB. Binary units (KiB, MiB, GiB), as df -h, du -h and the kernel print them."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int) -> str:
    """`512 B`, `44.2 MiB`, `1.5 GiB`; negative counts keep their sign."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
