"""The migration that rebuilds ``entries`` as a rowid table (node/storage/schema.py): every
row and every column comes through unchanged, including the columns later migrations
added (stubs, range hints), and the rebuilt table has its key and its indexes."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from node.storage import log as log_tx
from node.storage.db import _statements, open_sync
from node.storage.schema import MIGRATIONS

# The migration that rebuilds entries (1-based, as user_version counts), found by its
# text: migrations may be renumbered when branches merge.
REBUILD = 1 + next(i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE entries_rowid" in m)

ROWS = [
    # origin, seq, hash, payload, signature, key_id, record_id, version, kind, source,
    # received_ms, stub, stub_signature, stub_key_id, first_seq
    ("ffc", 1, b"h1", b"payload one", b"s" * 64, "k1", "r1", 1, "BOLO", "local", 10,
     b"stub one", None, None, None),
    ("ffc", 2, b"h2", None, b"t" * 64, "k1", "r1", 2, "BOLO", "nysic", 11,
     b"stub two", b"u" * 64, "k2", None),
    ("ffc", 9, b"h9", None, None, None, None, None, None, "nysic", 12, None, None, None, 3),
    ("ncric", 1, b"n1", b"payload n", b"v" * 64, "kn", "rn", 1, "SAR", "ncric", 13,
     None, None, None, None),
]
COLUMNS = ("origin, seq, hash, payload, signature, key_id, record_id, version, kind, source, "
           "received_ms, stub, stub_signature, stub_key_id, first_seq")


def make_before(path: Path) -> None:
    """A database at the schema version just before the rebuild, with entries in it."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for script in MIGRATIONS[:REBUILD - 1]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {REBUILD - 1}")
        assert "WITHOUT ROWID" in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()[0]
        conn.executemany(f"INSERT INTO entries ({COLUMNS}) VALUES ({','.join('?' * 15)})",
                         ROWS)


def test_every_column_of_every_entry_survives_the_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    make_before(path)
    with contextlib.closing(open_sync(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        # The rebuild went through the WAL (the copy, the old pages zeroed): folded
        # and truncated at the end of the migrations, not left at that size on disk.
        assert (tmp_path / "node.db-wal").stat().st_size == 0
        held = conn.execute(f"SELECT {COLUMNS} FROM entries ORDER BY origin, seq").fetchall()
        assert held == ROWS
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()[0]
        assert "WITHOUT ROWID" not in sql
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(entries)")}
        assert "entries_record" in indexes
        # The key still refuses a second row at a held position (a fork is evidence,
        # never an overwrite: the code relies on this constraint).
        try:
            conn.execute("INSERT INTO entries (origin, seq, hash, source, received_ms) "
                         "VALUES ('ffc', 1, x'00', 'x', 0)")
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("a second row at (ffc, 1) was accepted")
        # What the code reads through its own queries comes out the same.
        assert log_tx.heads(conn) == {"ffc": 9, "ncric": 1}
        assert log_tx.items_after(conn, "ffc", 4, 10)[0].first == 5
        assert log_tx.entry(conn, "ffc", 2).stub_key_id == "k2"
