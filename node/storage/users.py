"""User transactions. Only token hashes are stored; see node/core/users.py."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class UserRow:
    name: str
    token_hash: bytes
    attributes: tuple[str, ...]
    admin: bool
    created_ms: int


def _row(r: tuple) -> UserRow:
    return UserRow(r[0], r[1], tuple(json.loads(r[2])), bool(r[3]), r[4])


def insert(conn: sqlite3.Connection, user: UserRow) -> None:
    conn.execute(
        "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
        (user.name, user.token_hash, json.dumps(sorted(user.attributes)), int(user.admin),
         user.created_ms),
    )


def find(conn: sqlite3.Connection, name: str) -> UserRow | None:
    r = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    return _row(r) if r else None


def all_users(conn: sqlite3.Connection) -> list[UserRow]:
    return [_row(r) for r in conn.execute("SELECT * FROM users ORDER BY name")]


def delete(conn: sqlite3.Connection, name: str, now_ms: int) -> bool:
    """Remove a user and retire the name for good (see was_removed)."""
    if conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
        return False
    conn.execute("INSERT OR IGNORE INTO removed_users (name, removed_ms) VALUES (?, ?)",
                 (name, now_ms))
    return True


def was_removed(conn: sqlite3.Connection, name: str) -> int | None:
    """When the name's user was removed, if it ever was: such a name is never
    reissued, since named-reader access and authorship go by name."""
    row = conn.execute("SELECT removed_ms FROM removed_users WHERE name = ?",
                       (name,)).fetchone()
    return row[0] if row else None


def set_attributes(conn: sqlite3.Connection, name: str, attributes: list[str]) -> bool:
    return bool(conn.execute("UPDATE users SET attributes = ? WHERE name = ?",
                             (json.dumps(sorted(attributes)), name)).rowcount)


def admin_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM users WHERE admin = 1").fetchone()[0]
