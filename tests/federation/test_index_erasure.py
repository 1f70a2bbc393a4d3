"""Purges from a peer and the text index: each record leaves search at once, but
the FTS5 'optimize' that takes its terms out of the index's segments (a rewrite of
the whole index) runs once per interval (node.services.lifecycle), not once per
purge: an origin purging its records one by one made every node rewrite its
whole index at every entry."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path

from federation.ingest import check_items, store_batch
from node.core.query import SearchParams
from node.storage import log as log_tx
from node.storage.db import open_sync
from tests.federation.test_convergence import KEYS, ORIGIN, build_log

WORDS = ["quokkaqz", "yakqz", "vicunaqz", "impalaqz", "wapitiqz"]


def deliver(conn: sqlite3.Connection, items: list, now_ms: int) -> None:
    checked = check_items(items, lambda o: KEYS if o == ORIGIN else {})
    conn.execute("BEGIN IMMEDIATE")
    store_batch(conn, "hub", checked, now_ms, "node")
    conn.execute("COMMIT")


def test_purges_from_a_peer_leave_search_at_once_and_compact_once() -> None:
    items = build_log([("publish", r) for r in range(5)] + [("purge", r) for r in range(5)])
    with tempfile.TemporaryDirectory() as d, contextlib.closing(
            open_sync(Path(d) / "node.db", create=True)) as conn:
        # Titles the test can find in the file: one distinct word per record.
        deliver(conn, items[:5], 1000)
        for r, word in enumerate(WORDS):
            conn.execute("UPDATE records_fts SET title = ? WHERE rowid = (SELECT id FROM "
                         "records WHERE record_id = ?)", (word, f"rec{r}"))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        optimizes: list[str] = []
        conn.set_trace_callback(lambda sql: optimizes.append(sql) if "optimize" in sql
                                else None)
        deliver(conn, items[5:], 2000)  # five purges, as one batch
        conn.set_trace_callback(None)
        # Before the fix: five optimizes (one per purge entry) in this one batch.
        assert optimizes == []
        assert log_tx.erasure_pending(conn) == (2000, 5)
        assert not list(log_tx.matches(conn, SearchParams(text="quokkaqz", limit=10), 3000))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = (Path(d) / "node.db").read_bytes()
        assert any(w.encode() in data for w in WORDS)  # still in the index's segments

        deliver(conn, build_log([("publish", 7)]), 2500)  # later entries: still pending
        assert log_tx.erasure_pending(conn) == (2000, 5)

        conn.execute("BEGIN IMMEDIATE")
        log_tx.compact_index(conn)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = (Path(d) / "node.db").read_bytes()
        assert not [w for w in WORDS if w.encode() in data]
        assert log_tx.erasure_pending(conn) is None


def test_this_nodes_own_purge_compacts_at_once() -> None:
    items = build_log([("publish", 0), ("purge", 0)])
    with tempfile.TemporaryDirectory() as d, contextlib.closing(
            open_sync(Path(d) / "node.db", create=True)) as conn:
        deliver(conn, items[:1], 1000)
        optimizes: list[str] = []
        conn.set_trace_callback(lambda sql: optimizes.append(sql) if "optimize" in sql
                                else None)
        with conn:
            log_tx.apply_entries(conn, [log_tx.StoredEntry(  # the origin's own path
                ORIGIN, 2, items[1].hash, items[1].envelope.payload, b"", "").body()])
        # One compaction: the text index and the entity index (migration 20), each once.
        assert [sql.split()[2] for sql in optimizes] == ["records_fts", "entity_index"]
        assert log_tx.erasure_pending(conn) is None
