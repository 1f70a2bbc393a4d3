"""Own-log recovery marker (see node.recovery) and the checks of a database
that is about to be restored."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from node.core.recovery import Held
from node.storage.db import explain


def marker(conn: sqlite3.Connection) -> tuple[str, int] | None:
    row = conn.execute("SELECT reason, since_ms FROM own_recovery WHERE id = 1").fetchone()
    return (row[0], row[1]) if row else None


def begin(conn: sqlite3.Connection, reason: str, now_ms: int) -> bool:
    """Set the marker (the first reason is kept). True if it was not set."""
    return conn.execute("INSERT OR IGNORE INTO own_recovery (id, reason, since_ms) "
                        "VALUES (1, ?, ?)", (reason, now_ms)).rowcount == 1


def finish(conn: sqlite3.Connection) -> bool:
    conn.execute("DELETE FROM own_adopted")
    return conn.execute("DELETE FROM own_recovery").rowcount == 1


def adopt(conn: sqlite3.Connection, proof: Held) -> None:
    """The held proof an administrator adopted: its position must hold its hash."""
    conn.execute("INSERT OR REPLACE INTO own_adopted (id, seq, hash) VALUES (1, ?, ?)",
                 (proof.seq, proof.entry_hash))


def adopted(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
    """(seq, entry hash) adopted by the administrator, while that recovery runs."""
    row = conn.execute("SELECT seq, hash FROM own_adopted WHERE id = 1").fetchone()
    return (row[0], bytes(row[1])) if row else None


def held(conn: sqlite3.Connection) -> Held | None:
    """The held marker (node.core.recovery): the first proof that put it there."""
    row = conn.execute("SELECT peer, seq, own_head, hash, since_ms FROM own_held "
                       "WHERE id = 1").fetchone()
    return Held(row[0], row[1], row[2], bytes(row[3]), row[4]) if row else None


def hold(conn: sqlite3.Connection, proof: Held) -> bool:
    """Set the held marker (the first proof is kept). True if it was not set."""
    return conn.execute("INSERT OR IGNORE INTO own_held (id, peer, seq, own_head, hash, "
                        "since_ms) VALUES (1, ?, ?, ?, ?, ?)",
                        (proof.peer, proof.seq, proof.own_head, proof.entry_hash,
                         proof.since_ms)).rowcount == 1


def release(conn: sqlite3.Connection) -> bool:
    return conn.execute("DELETE FROM own_held").rowcount == 1


REQUIRED_TABLES = {"entries", "records", "audit", "audit_head", "users", "cursors"}


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def checkpoint_file(path: Path) -> None:
    """Fold a stopped node's write-ahead log into its database file, so the file
    alone is the whole database (before it is put aside by a restore)."""
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout = 2000")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        raise explain(path, exc) from None


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return [] if problems == ["ok"] else problems


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def record_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM records").fetchone()[0]


def self_contained(conn: sqlite3.Connection) -> None:
    """Fold the WAL in and leave WAL mode: the file alone is the database (the
    daemon switches it back to WAL when it opens it)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
