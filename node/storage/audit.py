"""Audit log transactions: append inside the caller's transaction, read, verify."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from node.core.audit import GENESIS, AuditEntry, canonical, entry_hash, head_message

Signer = Callable[[bytes], bytes]


def append(conn: sqlite3.Connection, sign: Signer, ts_ms: int, actor: str, action: str,
           detail: dict[str, Any]) -> int:
    """Append one entry and re-sign the head; call inside an open transaction."""
    return append_many(conn, sign, ts_ms, [(actor, action, detail)])


def append_many(conn: sqlite3.Connection, sign: Signer, ts_ms: int,
                items: list[tuple[str, str, dict[str, Any]]]) -> int:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0], row[1]) if row else (0, GENESIS)
    rows = []
    for actor, action, detail in items:
        seq += 1
        text = canonical(detail)
        digest = entry_hash(prev, seq, ts_ms, actor, action, text)
        rows.append((seq, ts_ms, actor, action, text, prev, digest))
        prev = digest
    conn.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
        "signature = excluded.signature",
        (seq, prev, sign(head_message(seq, prev))),
    )
    return seq


def entries(conn: sqlite3.Connection, since_ms: int = 0, limit: int = 0) -> Iterator[AuditEntry]:
    sql = "SELECT seq, ts_ms, actor, action, detail, prev, hash FROM audit WHERE ts_ms >= ? "
    sql += "ORDER BY seq"
    if limit:
        sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY seq"
    for row in conn.execute(sql, (since_ms,)):
        yield AuditEntry(*row)


def head(conn: sqlite3.Connection) -> tuple[int, bytes, bytes]:
    row = conn.execute("SELECT seq, hash, signature FROM audit_head WHERE id = 1").fetchone()
    return (row[0], row[1], row[2]) if row else (0, GENESIS, b"")
