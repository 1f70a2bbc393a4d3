"""The layering of DESIGN.md section 2, checked on the imports themselves.

node/core      pure functions and state machines: no I/O, imports only core and wire
node/telemetry logs and counters (in memory; metrics served from the daemon), any layer above core
node/storage   SQL: one transaction function per operation; imports core and wire
node/config    the node's files (node.toml, peers.toml, keys, identity card)
node/services  the node's operations over storage and config (publish, search, ...)
node/daemon    the process: gRPC servers, signals; composes services and federation
node/cli       the command line, a client of the daemon (or of a stopped node's files)
federation/    replication and federated queries between nodes: services, never daemon/cli
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IO_MODULES = {"sqlite3", "aiosqlite", "grpc", "asyncio", "socket", "subprocess", "os"}
PURE_FEDERATION = ["federation/backoff.py", "federation/ratelimit.py"]
LAYERS = ("core", "telemetry", "storage", "config", "services", "daemon", "cli")
# What each layer of node/ may import of node/ (besides node.wire, the generated code)
# and whether it may import federation.
MAY_IMPORT = {
    "core": ({"core"}, False),
    "telemetry": ({"core", "telemetry"}, False),
    "storage": ({"core", "telemetry", "storage"}, False),
    "config": ({"core", "telemetry", "storage", "config"}, False),
    "services": ({"core", "telemetry", "storage", "config", "services"}, False),
    "daemon": ({"core", "telemetry", "storage", "config", "services", "daemon"}, True),
    "cli": (set(LAYERS), True),
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "node":  # `from node import core` names a layer
                out.update(f"node.{a.name}" for a in node.names)
    return out


def test_every_node_module_sits_in_a_layer() -> None:
    """A newcomer reads the layering from the folder names: no module of node/
    outside a layer but the package marker and the local test network."""
    loose = {p.name for p in (ROOT / "node").glob("*.py")} - {"__init__.py", "devnet.py"}
    assert not loose, f"modules outside a layer folder: {sorted(loose)}"


def test_pure_core_does_no_io() -> None:
    paths = [*(ROOT / "node" / "core").rglob("*.py"), *(ROOT / p for p in PURE_FEDERATION)]
    assert len(paths) > 10
    for path in paths:
        found = {m for m in imports(path) if m.split(".")[0] in IO_MODULES}
        assert not found, f"{path.relative_to(ROOT)} imports {found}"


def test_each_layer_imports_only_the_layers_below() -> None:
    checked = 0
    for layer, (allowed, federation_ok) in MAY_IMPORT.items():
        for path in (ROOT / "node" / layer).rglob("*.py"):
            rel = path.relative_to(ROOT)
            for m in imports(path):
                parts = m.split(".")
                if parts[0] == "federation":
                    assert federation_ok, f"{rel} imports {m}"
                elif parts[0] == "node" and len(parts) > 1 and parts[1] != "wire":
                    assert parts[1] in allowed, f"{rel} ({layer}) imports {m}"
            checked += 1
    assert checked > 40


def test_federation_never_imports_the_daemon_or_cli() -> None:
    for path in (ROOT / "federation").rglob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("node.daemon", "node.cli"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_storage_touches_sqlite() -> None:
    """Outside node/storage, code may hold a connection (transaction functions are
    composed from storage functions) but never runs SQL or opens a database."""
    allowed_prefixes = ("node/storage/", "node/devnet.py", "node/wire/")  # devnet: tests
    for base in ("node", "federation"):
        for path in (ROOT / base).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel.startswith(allowed_prefixes):
                continue
            text = path.read_text()
            assert "aiosqlite" not in imports(path), rel
            for needle in (".execute(", ".executemany(", "sqlite3.connect"):
                assert needle not in text, f"{rel} runs SQL ({needle})"
