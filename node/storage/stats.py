"""Read-only figures for the metrics page, taken in one snapshot on the
collector's own read-only connection (never the writer's, so a scrape never
waits behind an ingest transaction and cannot write)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage.db import open_reader


@dataclass(frozen=True)
class Snapshot:
    records: dict[str, dict[str, int]]   # origin -> state -> count
    heads: dict[str, int]                 # origin -> highest seq held
    cursors: dict[str, dict[str, int]]    # peer -> origin -> seq received
    quarantined: frozenset[str]
    erasure: tuple[int, int] | None = None  # (since_ms, purges) not compacted yet


def all_cursors(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for peer, origin, seq in conn.execute("SELECT peer, origin, seq FROM cursors"):
        out.setdefault(peer, {})[origin] = seq
    return out


def snapshot(conn: sqlite3.Connection) -> Snapshot:
    """Counts use the (origin, state) index; heads a skip-scan of the log's key."""
    conn.execute("BEGIN")
    try:
        return Snapshot(log_tx.counts(conn), log_tx.heads(conn), all_cursors(conn),
                        frozenset(fed_tx.quarantined(conn)), log_tx.erasure_pending(conn))
    finally:
        conn.execute("ROLLBACK")


__all__ = ["Snapshot", "all_cursors", "open_reader", "snapshot"]
