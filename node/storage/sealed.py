"""Sealed copies of entries (node/core/sealing.py): stored per position after the
origin's signature over them verified, read back to go out with the position.

What another center's stream causes to be written here is bounded: at most
``limit`` distinct copies per position (the origin makes one per named center;
a copy already held is not stored twice), each at most the size the caller
checked (node.core.sealing.check_copy), and only copies the origin signed for the
hash this node holds at that position."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence

from node.core.sealing import SealedCopy


def add(conn: sqlite3.Connection, origin: str, seq: int, digest: bytes,
          copies: Sequence[SealedCopy], now_ms: int, limit: int) -> tuple[int, int]:
    """Keep the verified ``copies`` of one position (entry hash ``digest``), up to
    ``limit`` per position in all: (how many were new, how many were refused for
    the limit). A copy already held counts as neither."""
    held = conn.execute("SELECT count(*) FROM sealed_copies WHERE origin = ? AND seq = ?",
                        (origin, seq)).fetchone()[0]
    stored = refused = 0
    for c in copies:
        digest_c = hashlib.sha256(c.sealed).digest()
        if held + stored >= limit:
            refused += conn.execute(
                "SELECT 1 FROM sealed_copies WHERE origin = ? AND seq = ? AND digest = ?",
                (origin, seq, digest_c)).fetchone() is None
            continue
        stored += conn.execute(
            "INSERT OR IGNORE INTO sealed_copies (origin, seq, hash, digest, sealed, "
            "signature, key_id, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (origin, seq, digest, digest_c, c.sealed, c.signature, c.key_id,
             now_ms)).rowcount
    return stored, refused


def add_own(conn: sqlite3.Connection, origin: str,
            rows: Iterable[tuple[int, bytes, SealedCopy]], now_ms: int) -> None:
    """The copies this node made of its own new entries: (seq, hash, copy)."""
    conn.executemany(
        "INSERT OR IGNORE INTO sealed_copies (origin, seq, hash, digest, sealed, signature, "
        "key_id, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(origin, seq, digest, hashlib.sha256(c.sealed).digest(), c.sealed, c.signature,
          c.key_id, now_ms) for seq, digest, c in rows])


def for_positions(conn: sqlite3.Connection, origin: str, first: int, last: int
                  ) -> dict[int, list[tuple[bytes, SealedCopy]]]:
    """seq -> [(hash it was signed for, copy)] for the positions first..last."""
    out: dict[int, list[tuple[bytes, SealedCopy]]] = {}
    for seq, digest, sealed, signature, kid in conn.execute(
            "SELECT seq, hash, sealed, signature, key_id FROM sealed_copies WHERE origin = ? "
            "AND seq BETWEEN ? AND ? ORDER BY seq, digest", (origin, first, last)):
        out.setdefault(seq, []).append((digest, SealedCopy(sealed, signature, kid)))
    return out


def count(conn: sqlite3.Connection, origin: str, seq: int) -> int:
    return conn.execute("SELECT count(*) FROM sealed_copies WHERE origin = ? AND seq = ?",
                        (origin, seq)).fetchone()[0]
