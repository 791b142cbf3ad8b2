"""`usbagent demo`: the real flow on this machine, with a throwaway key and sample data.

Everything happens in a fresh temporary folder (printed, and kept so the user can look
around and re-run the commands it suggests); no config file is needed, and the user's own
config, archives and state are neither read nor touched. The same code paths as the
nightly job run: preflight, tar -> zstd -> age, sidecar, state recording, full verify with
the identity, safe restore, then a byte-for-byte comparison with the originals.

The demo is a list of steps (`STEPS`); each takes the shared `Demo` and returns the line
that tells the user what it did. A later feature adds its step by appending to the list.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage

from usbagent import archive, restore, verify
from usbagent.config import Config, load
from usbagent.details import ArchiveDetails
from usbagent.errors import UsbagentError
from usbagent.recipients import load_identities
from usbagent.units import human_bytes

PREFIX = "demo"
WORDS = ("backup", "archive", "stick", "encrypted", "nightly", "restore", "verify", "data", "key")


@dataclass
class Demo:
    """What the steps share: the folder, and what earlier steps made."""

    root: Path
    config: Config | None = None
    archive: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def identity(self) -> Path:
        return self.root / "identity.txt"

    @property
    def restored(self) -> Path:
        return self.root / "restored"

    def need_config(self) -> Config:
        if self.config is None:
            raise UsbagentError("the demo config was not written (step order?)")
        return self.config

    def need_archive(self) -> Path:
        if self.archive is None:
            raise UsbagentError("no archive was made (step order?)")
        return self.archive


@dataclass(frozen=True)
class Step:
    name: str
    action: Callable[[Demo], str]


def make_key(demo: Demo) -> str:
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    fd = os.open(demo.identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# usbagent demo identity (throwaway)\n# public key: {public}\n{identity}\n")
    (demo.root / "recipients.txt").write_text(f"# usbagent demo recipient\n{public}\n")
    return f"throwaway age identity {demo.identity}, public key {public[:16]}…"


def make_sample_data(demo: Demo) -> str:
    """Text in nested folders, an incompressible file, a link, and one file to exclude."""
    rng = random.Random(2024)
    count = size = 0
    for folder in ("notes", "notes/2024", "photos", "projects/usbagent"):
        (demo.data / folder).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            text = "\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(200)) + "\n"
            path = demo.data / folder / f"file-{i}.txt"
            path.write_text(text)
            count, size = count + 1, size + len(text)
    blob = os.urandom(2 * 1024 * 1024)
    (demo.data / "photos" / "holiday.jpg").write_bytes(blob)
    (demo.data / "latest-notes").symlink_to("notes/2024")
    (demo.data / "scratch.tmp").write_text("excluded by archive.exclude\n")
    count, size = count + 1, size + len(blob)
    demo.facts["files"] = count
    return f"{count} files ({human_bytes(size)}) and a symlink in {demo.data}, plus scratch.tmp"


def write_config(demo: Demo) -> str:
    """A real config file, so the user can run the suggested commands against it."""
    path = demo.root / "config.toml"
    (demo.root / "archives").mkdir()

    def q(p: Path) -> str:
        return json.dumps(str(p))  # a JSON string is a valid TOML basic string

    path.write_text(
        "[archive]\n"
        f"sources = [{q(demo.data)}]\n"
        'exclude = ["*.tmp"]\n'
        f"destination = {q(demo.root / 'archives')}\n"
        f"recipients_file = {q(demo.root / 'recipients.txt')}\n"
        f'prefix = "{PREFIX}"\n'
        f"identity_file = {q(demo.identity)}\n"
        "\n[agent]\n"
        f"state_dir = {q(demo.root / 'state')}\n"
        "\n[notify]\nenabled = false\n"
    )
    demo.config = load(path)
    return f"config {path} (sources, exclude *.tmp, destination, state dir all in the folder)"


def make_archive(demo: Demo) -> str:
    cfg = demo.need_config()
    made = ArchiveDetails.of(archive.archive_now(cfg))
    if made is None or made.size is None:  # archive_now raises before that could happen
        raise UsbagentError("the archive run recorded no archive")
    demo.archive = cfg.archive.destination / made.archive
    return (
        f"{demo.archive.name}: {human_bytes(made.size)} encrypted, "
        f"sidecar {demo.archive.name}.sha256, outcome recorded in {cfg.agent.state_dir}"
    )


def verify_archive(demo: Demo) -> str:
    checked = verify.check(demo.need_archive(), load_identities(demo.identity))
    if checked.problem:
        raise UsbagentError(checked.problem)
    return checked.detail


def restore_archive(demo: Demo) -> str:
    result = restore.restore(demo.need_archive(), demo.identity, demo.restored, ())
    if result.stream_error:
        raise UsbagentError(f"restore: {result.stream_error}")
    if result.listed:
        raise UsbagentError(f"restore failed for {result.listed[0][0]}: {result.listed[0][1]}")
    return f"{result.restored} members ({human_bytes(result.size)}) into {demo.restored}"


def compare(demo: Demo) -> str:
    """Every original file, link and folder is back, identical; the excluded file is not."""
    copy = demo.restored / str(demo.data).lstrip("/")
    files = 0
    for folder, dirs, names in os.walk(demo.data):
        rel = Path(folder).relative_to(demo.data)
        for name in [*names, *dirs]:
            original, restored = Path(folder, name), copy / rel / name
            if original.is_symlink():
                if original.readlink() != restored.readlink():
                    raise UsbagentError(f"symlink {rel / name} differs after restore")
            elif name.endswith(".tmp"):
                if restored.exists():
                    raise UsbagentError(f"{rel / name} should have been excluded")
            elif original.is_file():
                if not filecmp.cmp(original, restored, shallow=False):
                    raise UsbagentError(f"{rel / name} differs after restore")
                files += 1
            elif not restored.is_dir():
                raise UsbagentError(f"folder {rel / name} is missing after restore")
    if files != demo.facts.get("files"):
        raise UsbagentError(f"compared {files} files, expected {demo.facts.get('files')}")
    return f"all {files} files and the symlink are identical to the originals; *.tmp excluded"


STEPS: list[Step] = [
    Step("key", make_key),
    Step("data", make_sample_data),
    Step("config", write_config),
    Step("archive", make_archive),
    Step("verify", verify_archive),
    Step("restore", restore_archive),
    Step("compare", compare),
]


def serve_stick(demo: Demo) -> str:
    """As root: a loop-device stick that the hotplug agent serves (see usbagent.demo_stick)."""
    from usbagent import demo_stick  # deferred: pulls in the agent and its D-Bus/udev stack

    return demo_stick.demo_step(demo.need_config(), demo.root)


STEPS.append(Step("stick", serve_stick))


def _program() -> str:
    """How to run this usbagent from the user's shell: `make demo` runs it from .venv/bin,
    which is not on PATH, so a bare `usbagent` would be "command not found" there."""
    script = Path(sys.executable).parent / "usbagent"
    on_path = shutil.which("usbagent")
    if on_path is not None and script.exists() and Path(on_path).samefile(script):
        return "usbagent"
    if script.exists():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m usbagent"


def _try_it(demo: Demo) -> list[str]:
    cfg = demo.need_config()
    usbagent = _program()
    return [
        "Try it yourself:",
        f"  age -d -i {demo.identity} {demo.archive} | zstd -d | tar -tv",
        f"  (cd {cfg.archive.destination} && sha256sum -c *.sha256)",
        f"  {usbagent} --config {cfg.path} verify {cfg.archive.destination} "
        f"--identity {demo.identity}",
        f"  {usbagent} --config {cfg.path} status"
        "   # CRITICAL 'agent is not running': the demo's agent has stopped",
        f"When done: rm -rf {demo.root}",
    ]


def run(_config: Config | None, args: Any) -> int:
    """Run every step, telling the user what each did; stop at the first failure."""
    root = Path(tempfile.mkdtemp(prefix="usbagent-demo-"))
    demo = Demo(root=root)
    print(f"usbagent demo: the real archive flow with a throwaway key, in {root}")
    print("(your own config, archives and state are not used)")
    started = time.monotonic()
    for number, step in enumerate(STEPS, start=1):
        t0 = time.monotonic()
        try:
            line = step.action(demo)
        except UsbagentError as exc:
            raise UsbagentError(f"step {number} ({step.name}) failed: {exc}") from None
        print(f"{number:>2}. {step.name:<8} {line}  [{time.monotonic() - t0:.2f} s]")
    print(f"All {len(STEPS)} steps passed in {time.monotonic() - started:.1f} s.")
    print("\n".join(_try_it(demo)))
    return 0
