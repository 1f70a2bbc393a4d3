"""Key history learned from origins' logs: rotations, announced TLS certificates,
and entries refused because a distrusted (possibly stolen) key signed them."""

from __future__ import annotations

import sqlite3

from node.core.keyhistory import Rotation, SealAnnouncement
from node.storage import log as log_tx

# Entries kept for review per origin: someone else's key causes these writes.
MAX_DISTRUSTED_PER_ORIGIN = 10_000


def add_rotation(conn: sqlite3.Connection, r: Rotation, now_ms: int) -> None:
    conn.execute("INSERT OR IGNORE INTO key_rotations (origin, seq, old_key, new_key, "
                 "learned_ms) VALUES (?, ?, ?, ?, ?)", (r.origin, r.seq, r.old, r.new, now_ms))


def rotations(conn: sqlite3.Connection) -> list[Rotation]:
    return [Rotation(o, s, old, new) for o, s, old, new in conn.execute(
        "SELECT origin, seq, old_key, new_key FROM key_rotations ORDER BY origin, seq")]


def add_cert(conn: sqlite3.Connection, origin: str, fingerprint: str, der: bytes,
             not_after_ms: int, seq: int, now_ms: int) -> None:
    conn.execute("INSERT OR IGNORE INTO tls_certs (origin, fingerprint, der, not_after_ms, "
                 "seq, learned_ms) VALUES (?, ?, ?, ?, ?, ?)",
                 (origin, fingerprint, der, not_after_ms, seq, now_ms))


def certs(conn: sqlite3.Connection) -> list[tuple[str, str, bytes, int, int, int]]:
    """(origin, fingerprint, der, not_after_ms, seq, learned_ms) of every announced
    certificate (this center's own too: learned_ms is when it announced it)."""
    return list(conn.execute("SELECT origin, fingerprint, der, not_after_ms, seq, learned_ms "
                             "FROM tls_certs ORDER BY origin, seq"))


def add_seal(conn: sqlite3.Connection, a: SealAnnouncement, now_ms: int) -> None:
    """One row per (origin, seq): a position holds one verified entry."""
    conn.execute("INSERT OR IGNORE INTO seal_keys (origin, seq, old_key, new_key, learned_ms) "
                 "VALUES (?, ?, ?, ?, ?)", (a.origin, a.seq, a.old, a.new, now_ms))


def seals(conn: sqlite3.Connection) -> list[SealAnnouncement]:
    """Every announced seal key (this center's own too), by origin and seq."""
    return [SealAnnouncement(o, s, old, new) for o, s, old, new in conn.execute(
        "SELECT origin, seq, old_key, new_key FROM seal_keys ORDER BY origin, seq")]


def add_distrusted(conn: sqlite3.Connection, origin: str, seq: int, digest: bytes,
                   payload: bytes, signature: bytes, signer: str, source: str,
                   now_ms: int) -> bool:
    """Keep an entry a distrusted key signed, for the administrator's review
    (bounded per origin; beyond that only the rejection counter says more came)."""
    held = conn.execute("SELECT count(*) FROM distrusted_entries WHERE origin = ?",
                        (origin,)).fetchone()[0]
    if held >= MAX_DISTRUSTED_PER_ORIGIN:
        return False
    conn.execute("INSERT OR IGNORE INTO distrusted_entries (origin, seq, hash, payload, "
                 "signature, key_id, source, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (origin, seq, digest, payload, signature, signer, source, now_ms))
    return True


def distrusted(conn: sqlite3.Connection, origin: str) -> list[tuple[int, str, str, int]]:
    """(seq, key id, source, received_ms) of entries held for review."""
    return list(conn.execute("SELECT seq, key_id, source, received_ms FROM distrusted_entries "
                             "WHERE origin = ? ORDER BY seq", (origin,)))


def distrust_held(conn: sqlite3.Connection, origin: str, after_seq: int,
                  distrusted_key_ids: set[str], now_ms: int) -> int:
    """After a key was stolen (peers update --distrust-after): the entries of
    ``origin`` beyond ``after_seq`` that a distrusted key signed leave the log and
    are kept for review; everything from the first of them on is dropped (it
    chains on them), with the records those positions made current, and every
    cursor for the origin goes back so the origin's real entries are fetched
    again. A fork the thief caused no longer quarantines the origin (its evidence
    stays in ``forks``). Idempotent: with nothing distrusted held, nothing moves.
    Returns how many entries were quarantined for review."""
    if not distrusted_key_ids:
        return 0
    marks = ",".join("?" * len(distrusted_key_ids))
    rows = conn.execute(
        f"SELECT seq, hash, coalesce(payload, x''), signature, key_id, source FROM entries "
        f"WHERE origin = ? AND seq > ? AND signature IS NOT NULL AND key_id IN ({marks}) "
        f"ORDER BY seq", (origin, after_seq, *sorted(distrusted_key_ids))).fetchall()
    if not rows:
        return 0
    conn.executemany(
        "INSERT OR IGNORE INTO distrusted_entries (origin, seq, hash, payload, signature, "
        "key_id, source, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(origin, seq, h, p, sig, kid, src, now_ms) for seq, h, p, sig, kid, src in rows])
    first = rows[0][0]
    for (rec,) in conn.execute("SELECT id FROM records WHERE origin = ? AND seq >= ?",
                               (origin, first)).fetchall():
        log_tx.unindex(conn, rec)
        conn.execute("DELETE FROM records WHERE id = ?", (rec,))
    conn.execute("DELETE FROM entries WHERE origin = ? AND seq >= ?", (origin, first))
    # A seal key or TLS certificate announced there was the thief's word (or chained
    # on it): gone with it (a thief's certificate would let it connect as the center).
    conn.execute("DELETE FROM seal_keys WHERE origin = ? AND seq >= ?", (origin, first))
    conn.execute("DELETE FROM tls_certs WHERE origin = ? AND seq >= ?", (origin, first))
    conn.execute("UPDATE cursors SET seq = ? WHERE origin = ? AND seq >= ?",
                 (first - 1, origin, first))
    conn.execute("DELETE FROM quarantine WHERE origin = ?", (origin,))
    return len(rows)


def held_head(conn: sqlite3.Connection, origin: str) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM entries WHERE origin = ?",
                        (origin,)).fetchone()[0]
