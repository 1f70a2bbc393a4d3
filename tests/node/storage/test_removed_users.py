"""Issue 8 item 12: a removed user's name is never issued again, including names
removed before the migration that introduced removed_users (from the audit log)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from node.storage import users as users_tx
from node.storage.db import _statements, immediate, open_sync
from node.storage.schema import MIGRATIONS


def _first_release_db(path: Path) -> None:
    """A database as the release before removed_users left it: schema 1 only."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in _statements(MIGRATIONS[0]):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO users VALUES ('bob', x'00', '[]', 0, 1)")
        for seq, (action, user) in enumerate([("user.add", "ana"), ("user.remove", "ana"),
                                              ("user.remove", "bob"), ("user.add", "bob")], 1):
            conn.execute("INSERT INTO audit VALUES (?, ?, 'admin', ?, ?, x'00', x'00')",
                         (seq, 1000 + seq, action, json.dumps({"user": user})))


def test_names_removed_before_the_migration_stay_retired(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    _first_release_db(db)
    with contextlib.closing(open_sync(db)) as conn:
        assert users_tx.was_removed(conn, "ana") == 1002
        assert users_tx.was_removed(conn, "bob") is None  # in use again: not retired
        with immediate(conn):
            assert users_tx.delete(conn, "bob", 5000)
        assert users_tx.was_removed(conn, "bob") == 5000
        assert users_tx.was_removed(conn, "carol") is None
