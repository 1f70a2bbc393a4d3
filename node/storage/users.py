"""User transactions. Only token hashes are stored; see node/users.py."""

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


def delete(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0


def admin_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM users WHERE admin = 1").fetchone()[0]
