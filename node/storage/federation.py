"""Federation transactions: disseminations, cursors, rejections, forks, quarantine."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from node.core.types import Dissemination
from node.telemetry import metrics


def log_disseminations(conn: sqlite3.Connection, rows: Iterable[Dissemination],
                       ts_ms: int) -> None:
    rows = list(rows)
    metrics.count_disseminations(rows)  # every release passes here: one counting point
    conn.executemany(
        "INSERT INTO disseminations (ts_ms, center, user, origin, record_id, version, seq, "
        "channel, decision, via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(ts_ms, d.center, d.user, d.origin, d.record_id, d.version, d.seq, d.channel,
          d.decision, d.via) for d in rows])


def last_sent(conn: sqlite3.Connection, center: str, origin: str,
              record_id: str, decision: str = "FULL") -> int | None:
    """The newest version of a record this node sent a center in full (or, with
    ``decision='RECALL'``, recalled from it), if any."""
    row = conn.execute(
        "SELECT max(version) FROM disseminations WHERE center = ? AND origin = ? "
        "AND record_id = ? AND decision = ?", (center, origin, record_id, decision)).fetchone()
    return row[0] if row else None


def last_sent_many(conn: sqlite3.Connection, center: str, origin: str,
                   record_ids: Iterable[str], decision: str = "FULL") -> dict[str, int]:
    """``last_sent`` for many records of one origin, in one query per 500 ids:
    record id -> newest version sent (absent: never). Serving a batch asked once
    per entry (a query each, ~15 % of the serving reader's time)."""
    ids = sorted(set(record_ids))
    out: dict[str, int] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out.update(conn.execute(
            "SELECT record_id, max(version) FROM disseminations WHERE center = ? AND "
            f"origin = ? AND decision = ? AND record_id IN ({','.join('?' * len(chunk))}) "
            "GROUP BY record_id", (center, origin, decision, *chunk)).fetchall())
    return out


def sealed_to(conn: sqlite3.Connection, origin: str, record_id: str) -> set[str]:
    """The centers some version of this record was sealed to in full."""
    return {c for (c,) in conn.execute(
        "SELECT DISTINCT center FROM disseminations WHERE origin = ? AND record_id = ? "
        "AND channel = 'sealed' AND decision = 'FULL'", (origin, record_id))}


def disseminations(conn: sqlite3.Connection, record_id: str | None,
                   limit: int) -> list[tuple]:
    sql = ("SELECT ts_ms, center, user, origin, record_id, version, seq, channel, decision, "
           "via FROM disseminations")
    args: list[object] = []
    if record_id:
        sql += " WHERE record_id = ?"
        args.append(record_id)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return conn.execute(sql, args).fetchall()


def remember_query(conn: sqlite3.Connection, query_id: str, center: str, deadline_ms: int,
                   now_ms: int) -> bool:
    """Note a query id until its deadline; False if this center sent it before
    (a replay). Ids are unique per requesting center: another center's query
    with the same id is not a replay (a peer that saw an id cannot use it to
    get the real requester's query refused)."""
    conn.execute("DELETE FROM seen_queries WHERE expires_ms < ?", (now_ms,))
    return conn.execute("INSERT OR IGNORE INTO seen_queries (center, query_id, expires_ms) "
                        "VALUES (?, ?, ?)", (center, query_id, deadline_ms)).rowcount == 1


def cursors(conn: sqlite3.Connection, peer: str) -> dict[str, int]:
    return dict(conn.execute("SELECT origin, seq FROM cursors WHERE peer = ?", (peer,)))


def set_cursor(conn: sqlite3.Connection, peer: str, origin: str, seq: int) -> None:
    conn.execute(
        "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT (peer, origin) "
        "DO UPDATE SET seq = max(seq, excluded.seq)", (peer, origin, seq))


def rewind_cursors(conn: sqlite3.Connection, origin: str, to: int) -> int:
    """Every peer's cursor for ``origin`` goes back to ``to`` at most: the
    positions beyond are fetched again (from whichever peer has them right)."""
    return conn.execute("UPDATE cursors SET seq = ? WHERE origin = ? AND seq > ?",
                        (to, origin, to)).rowcount


def rejections_since(conn: sqlite3.Connection, peer: str, origin: str, reason: str,
                     since_ms: int) -> int:
    return conn.execute("SELECT count(*) FROM rejections WHERE peer = ? AND origin = ? AND "
                        "reason = ? AND ts_ms >= ?", (peer, origin, reason, since_ms)
                        ).fetchone()[0]


# Rejection rows a peer's items cause (for review; the metric counts every one):
# a peer may stream bad batches as fast as this node verifies them, each a row.
MAX_REJECTIONS_PER_MINUTE = 60  # per peer; beyond, counted only
MAX_REJECTIONS_PER_PEER = 10_000  # kept per peer, the oldest dropped first


def reject(conn: sqlite3.Connection, ts_ms: int, peer: str, origin: str, seq: int,
           reason: str, bounded: bool = True) -> bool:
    """Keep a rejection for review; False if not kept (the peer's share of rows
    for this minute is used up). ``bounded`` False: a row that a count depends on
    (a contradicted hint, MAX_REWINDS in federation/ingest.py), bounded by that
    rule itself, never dropped nor displaced by the peer's other rows."""
    if bounded:
        recent = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM rejections WHERE peer = ? AND ts_ms >= ? "
            "LIMIT ?)", (peer, ts_ms - 60_000, MAX_REJECTIONS_PER_MINUTE)).fetchone()[0]
        if recent >= MAX_REJECTIONS_PER_MINUTE:
            return False
    conn.execute("INSERT INTO rejections (ts_ms, peer, origin, seq, reason, bounded) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (ts_ms, peer, origin, seq, reason, int(bounded)))
    if bounded:
        conn.execute(
            "DELETE FROM rejections WHERE peer = ? AND bounded = 1 AND ts_ms <= (SELECT ts_ms "
            "FROM rejections WHERE peer = ? AND bounded = 1 ORDER BY ts_ms DESC LIMIT 1 "
            "OFFSET ?)", (peer, peer, MAX_REJECTIONS_PER_PEER))
    return True


def rejection_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT reason, count(*) FROM rejections GROUP BY reason"))


def record_fork(conn: sqlite3.Connection, origin: str, seq: int, held: tuple | None,
                other: tuple[bytes, bytes], source: str, ts_ms: int, reason: str) -> None:
    conn.execute("INSERT INTO forks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (origin, seq, held[0] if held else None, held[1] if held else None,
                  other[0], other[1], source, ts_ms))
    conn.execute("INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?)",
                 (origin, f"fork at seq {seq}: {reason}", ts_ms))


def quarantined(conn: sqlite3.Connection) -> dict[str, tuple[str, int]]:
    rows = conn.execute("SELECT origin, reason, since_ms FROM quarantine")
    return {o: (r, t) for o, r, t in rows}
