"""The real device test stack: system D-Bus, systemd-udevd, udisksd and loop-device sticks.

`daemons` starts (and later stops) only the daemons that are not already answering;
`sticks` builds GPT images with real filesystems and plugs/unplugs them as loop devices.
pytest uses them through the fixtures in tests/conftest.py (`stack`, `make_stick`,
`unique_label`); a developer through `python -m tests.stack up|down|status`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.stack.daemons import Stack, StackError
from tests.stack.sticks import PartSpec, Stick, Workspace, clean_leftovers

__all__ = [
    "MakeStick",
    "PartSpec",
    "Stack",
    "StackError",
    "StackSession",
    "Stick",
    "Workspace",
    "clean_leftovers",
]


@dataclass
class StackSession:
    """What the `stack` fixture yields: the running daemons and this session's workspace."""

    daemons: Stack
    workspace: Workspace
    cleaned: list[str] = field(default_factory=list)  # leftovers of killed runs, removed

    @property
    def system_bus_address(self) -> str:
        return self.daemons.system_bus_address

    @property
    def root(self) -> Path:
        return self.workspace.root


class MakeStick(Protocol):
    """Type of the `make_stick` fixture, for annotating tests."""

    def __call__(
        self, *parts: PartSpec, plug: bool = True, image_dir: Path | None = None
    ) -> Stick: ...
