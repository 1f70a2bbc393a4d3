"""The layering of DESIGN.md section 2, checked on the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE_CORE = ["node/policy.py", "node/chain.py", "node/audit.py", "node/signing.py",
             "node/keyhistory.py", "node/entities.py", "node/record.py", "node/query.py",
             "node/types.py", "node/timeutil.py", "node/watch.py", "node/routing.py",
             "node/stix/common.py", "node/stix/export.py", "node/stix/imports.py",
             "node/localtypes.py",
             "federation/backoff.py", "federation/ratelimit.py"]
IO_MODULES = {"sqlite3", "aiosqlite", "grpc", "asyncio", "socket", "subprocess", "os"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_pure_core_does_no_io() -> None:
    for rel in PURE_CORE:
        found = {m for m in imports(ROOT / rel) if m.split(".")[0] in IO_MODULES}
        assert not found, f"{rel} imports {found}"
        assert not any(m.startswith(("node.storage", "node.service")) for m in
                       imports(ROOT / rel)), rel


def test_federation_never_imports_the_daemon_or_cli() -> None:
    for path in (ROOT / "federation").rglob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("node.daemon", "node.cli"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_node_core_never_imports_federation() -> None:
    allowed = {"node/daemon.py"}  # the daemon composes node and federation
    for path in (ROOT / "node").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel in allowed or rel.startswith("node/cli/"):
            continue
        bad = {m for m in imports(path) if m.startswith("federation")}
        assert not bad, f"{rel} imports {bad}"


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
