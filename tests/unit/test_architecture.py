"""The dependency rules of ARCHITECTURE.md, checked on the source (ast, no import executed).

Layers: model, policy, platform, sources, stick, journal, agent, notify, commands. The rules:
policy imports nothing doing I/O; sources never import stick or agent; only the journal
writes the state dir; no import cycle; no module over MAX_LINES.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "usbagent"
MAX_LINES = 400

LAYERS: dict[str, frozenset[str]] = {
    "model": frozenset(
        {
            "errors",
            "events",
            "details",
            "config",
            "configcheck",
            "units",
        }
    ),
    "policy": frozenset(
        {
            "naming",
            "chains",
            "chainhealth",
            "levels",
            "plan",
            "retention",
            "devices",
            "tarsafety",
            "dumpdir",
        }
    ),
    "platform": frozenset(
        {
            "fsutil",
            "mounts",
            "watchdog",
            "systemd",
            "credentials",
            "dbuscall",
            "logind",
            "folderwalk",
        }
    ),
    "sources": frozenset(
        {
            "backend",
            "sources",
            "udisks",
            "udev",
        }
    ),
    "stick": frozenset(
        {
            "copier",
            "sync",
            "synclocal",
            "syncwords",
        }
    ),
    "journal": frozenset(
        {
            "journal",
            "state",
            "ledger",
            "outbox",
            "metrics",
            "snapshots",
        }
    ),
    "health": frozenset(
        {
            "health",
        }
    ),
    "agent": frozenset(
        {
            "agent",
            "decide",
            "stickjob",
            "agentstatus",
        }
    ),
    "notify": frozenset(
        {
            "notify",
            "missed",
            "delivery",
            "asuser",
        }
    ),
}
# Modules and libraries that do I/O: policy may import none of them.
IO_MODULES = frozenset(
    {
        "os", "io", "shutil", "subprocess", "socket", "fcntl", "signal", "select",
        "selectors", "tempfile", "threading", "asyncio", "mmap", "pyudev", "dbus_next",
        "fs", "pyrage", "sdnotify",
    }
)  # fmt: skip
# What a module outside the journal may use of the journal's parts: readers and types only.
JOURNAL_READERS: dict[str, frozenset[str]] = {
    "state": frozenset(
        {"read_json", "last", "last_ok", "last_error", "events", "archives", "known_archives",
         "archive_record", "ArchiveRecord", "journal_entries", "MAX_EVENTS", "MAX_ARCHIVES"}
    ),
    "ledger": frozenset({"load", "sticks", "StickRecord", "path_for"}),
    # add/discard: the outbox is the journal's notification part, written by the notifier
    # directly so that it need not load the rest of the journal
    "outbox": frozenset({"pending", "path", "Note", "LOW", "NORMAL", "CRITICAL", "add", "discard"}),
    "metrics": frozenset({"render", "MetricFacts", "KINDS"}),
}  # fmt: skip
# Not split yet (issue 10): the size each had when the limit came; none may grow.
STATE_WRITERS = frozenset({"write_atomic", "write_json", "atomic_writer"})


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


@cache
def tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")


def imported(module: str | ast.Module) -> Iterator[tuple[str, str | None, int]]:
    """(top-level module, imported name or None, line) for every import, deferred ones too.

    A usbagent module is named by its own name (`sync`), anything else by its top level
    package (`os`, `dbus_next`).
    """
    for node in ast.walk(tree(module) if isinstance(module, str) else module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                name = parts[1] if parts[0] == "usbagent" and len(parts) > 1 else parts[0]
                yield name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level or parts[0] == "usbagent":
                inner = parts[1:] if parts[0] == "usbagent" else parts
                inner = [p for p in inner if p]
                for alias in node.names:
                    if inner:
                        yield inner[0], alias.name, node.lineno
                    else:  # from usbagent import x
                        yield alias.name, None, node.lineno
            else:
                for alias in node.names:
                    yield parts[0], alias.name, node.lineno


def ours(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists()


def graph() -> dict[str, set[str]]:
    return {m: {n for n, _, _ in imported(m) if ours(n) and n != m} for m in modules()}


def layer_of(module: str) -> str:
    return next((name for name, members in LAYERS.items() if module in members), "commands")


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer_it_was_put_in_on_purpose() -> None:
    """A listed module that no longer exists means this file went stale."""
    listed = set().union(*LAYERS.values())
    assert listed <= set(modules()), sorted(listed - set(modules()))


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_policy_imports_nothing_doing_io() -> None:
    allowed = LAYERS["model"] | LAYERS["policy"]
    bad = [
        f"{m}.py:{line} imports {name}"
        for m in sorted(LAYERS["policy"])
        for name, _, line in imported(m)
        if (ours(name) and name not in allowed) or name in IO_MODULES
    ]
    assert bad == []


def test_platform_imports_nothing_above_it() -> None:
    """systemd, fsutil, ... serve every layer: one that imports a command (as systemd once
    imported the failure hook for its scope rule) drags that command into status and doctor."""
    allowed = LAYERS["model"] | LAYERS["policy"] | LAYERS["platform"]
    bad = [
        f"{m}.py:{line} imports {name}"
        for m in sorted(LAYERS["platform"])
        for name, _, line in imported(m)
        if ours(name) and name not in allowed
    ]
    assert bad == []


def test_the_agents_decision_core_does_no_io() -> None:
    """decide: event + state -> actions; only the daemon (agent) acts."""
    allowed = LAYERS["model"] | LAYERS["policy"] | {"backend"}  # backend: the Action type
    bad = [
        f"decide.py:{line} imports {name}"
        for name, _, line in imported("decide")
        if (ours(name) and name not in allowed) or name in IO_MODULES
    ]
    assert bad == []


def test_the_daemon_imports_no_command() -> None:
    """The agent judges freshness with `health`, as `status` does, not through `status`."""
    bad = [
        f"{m}.py:{line} imports {name}"
        for m in sorted(LAYERS["agent"])
        for name, _, line in imported(m)
        if ours(name) and layer_of(name) == "commands"
    ]
    assert bad == []


def test_sources_never_import_stick_agent_or_commands() -> None:
    banned = {m for m in modules() if layer_of(m) in ("stick", "agent", "notify", "commands")}
    bad = [
        f"{m}.py:{line} imports {name}"
        for m in sorted(LAYERS["sources"])
        for name, _, line in imported(m)
        if name in banned
    ]
    assert bad == []


def test_the_user_side_helper_imports_nothing_of_the_root_side() -> None:
    """`asuser` runs as the desktop user: it gets the note it shows and the D-Bus call
    helper, never the agent's config, journal or delivery code (the privilege boundary)."""
    allowed = {"outbox", "dbuscall"}
    bad = [
        f"asuser.py:{line} imports {name}"
        for name, _, line in imported("asuser")
        if ours(name) and name not in allowed
    ]
    assert bad == []


def journal_uses(module: ast.Module) -> Iterator[tuple[str, str, int]]:
    """(journal part, name, line) for each name `module` uses from a journal part."""
    aliases: dict[str, str] = {}
    for name, what, line in imported(module):
        if name in JOURNAL_READERS and what is not None:
            yield name, what, line
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and node.module == "usbagent":
            for alias in node.names:
                if alias.name in JOURNAL_READERS:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(module):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield aliases[node.value.id], node.attr, node.lineno


def state_dir_writes(module: ast.Module) -> Iterator[int]:
    """Lines where `module` hands a path under a state dir to a file writer."""
    for node in ast.walk(module):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in STATE_WRITERS and any("state_dir" in ast.unparse(a) for a in node.args):
            yield node.lineno


def test_only_the_journal_writes_the_state_dir() -> None:
    bad = []
    for m in modules():
        if layer_of(m) == "journal":
            continue
        bad += [
            f"{m}.py:{line} uses {part}.{name}"
            for part, name, line in journal_uses(tree(m))
            if name not in JOURNAL_READERS[part]
        ]
        bad += [f"{m}.py:{line} writes into a state dir" for line in state_dir_writes(tree(m))]
    assert bad == []


def test_the_state_dir_rule_sees_writers() -> None:
    probe = ast.parse(
        "from usbagent import ledger as l, state\n"
        "from usbagent.outbox import keep\n"
        "l.record_ok(d)\nstate.write_json(p, 1)\nwrite_atomic(cfg.state_dir / 'x', b'')\n"
    )
    found = {(p, n) for p, n, _ in journal_uses(probe)}
    assert {("ledger", "record_ok"), ("state", "write_json"), ("outbox", "keep")} <= found
    assert list(state_dir_writes(probe)) == [5]


def detail_reads(module: ast.Module) -> Iterator[int]:
    """Lines reading `<x>.details` by key (`.details[...]`, `.details.get(...)`)."""
    for node in ast.walk(module):
        inner = node.value if isinstance(node, ast.Subscript) else None
        if isinstance(node, ast.Attribute) and node.attr == "get":
            inner = node.value
        if isinstance(inner, ast.Attribute) and inner.attr == "details":
            yield node.lineno


def test_outcome_details_are_read_only_through_their_typed_views() -> None:
    """usbagent.details parses an outcome's JSON once per kind; nobody reads it by key."""
    bad = [f"{m}.py:{line}" for m in modules() if m != "details" for line in detail_reads(tree(m))]
    assert bad == []
    probe = ast.parse("a = o.details['x']\nb = o.details.get('y')\nc = o.details\n")
    assert list(detail_reads(probe)) == [1, 2]


def test_no_module_is_over_the_line_limit() -> None:
    """A module over MAX_LINES holds more than one concern: split it along them."""
    sizes = {m: len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in modules()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
