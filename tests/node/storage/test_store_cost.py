"""Issue 10 items 2-3: what storing a record costs must not grow with the log.

A new version, a retraction or a purge erases the older versions' content
(log.erase_content) and a change starts from the newest version held
(log.latest_content): both look a record's entries up by (origin, record_id).
Without an index on that, each was a scan of every entry of the origin, so a
supersede at 200,000 entries cost ~100 times one at 2,000. Counted here in SQLite
VM instructions (a progress handler), not in time: the count is the same on every
machine and under any load, and it grows with the log only if a statement scans.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import records_pb2

ORIGIN = "ncric"
DAY = 86_400_000


def body(seq: int, record: int, version: int = 1,
         kind: int = records_pb2.BOLO) -> records_pb2.RecordBody:
    b = records_pb2.RecordBody(
        origin=ORIGIN, seq=seq, record_id=f"rec-{record:06d}", version=version, kind=kind,
        created_ms=DAY, expires_ms=1000 * DAY, title=f"title {record}",
        narrative=f"narrative of record {record} " * 20, labels=["bench"])
    b.entities.add(type="phone", value=f"555{record:07d}", keys=[f"phone:555{record:07d}"])
    return b


def envelope(b: records_pb2.RecordBody) -> records_pb2.Envelope:
    # Storage does not verify (ingest did): any signature bytes do.
    return records_pb2.Envelope(payload=b.SerializeToString(), signature=b"s" * 64, key_id="k")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Callable[[int], sqlite3.Connection]]:
    conns: list[sqlite3.Connection] = []

    def make(size: int) -> sqlite3.Connection:
        conn = open_sync(tmp_path / f"{size}.db", create=True)
        conns.append(conn)
        bodies = [body(i, i) for i in range(1, size + 1)]
        with immediate(conn):
            log_tx.insert_new_records(conn, [(envelope(b), b) for b in bodies], ORIGIN, 0)
        return conn

    yield make
    for conn in conns:
        conn.close()


def steps(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], object]) -> int:
    """SQLite VM instructions ``fn`` runs, in its own transaction (in tens)."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 10)
    try:
        with immediate(conn):
            fn(conn)
    finally:
        conn.set_progress_handler(None, 0)
    return count


def new_entry(seq: int, record: int, version: int, kind: int
              ) -> Callable[[sqlite3.Connection], object]:
    def apply(conn: sqlite3.Connection) -> object:
        b = body(seq, record, version, kind)
        log_tx.insert_entries(conn, [(envelope(b), b)], ORIGIN, 0)
        return log_tx.apply_entries(conn, [b])
    return apply


def costs(conn: sqlite3.Connection, size: int) -> dict[str, int]:
    mid = size // 2
    return {
        "supersede": steps(conn, new_entry(size + 1, mid, 2, records_pb2.BOLO)),
        "retract": steps(conn, new_entry(size + 2, mid + 1, 2, records_pb2.RETRACTION)),
        "latest": steps(conn, lambda c: log_tx.latest_content(c, ORIGIN, "rec-000001")),
    }


def test_a_change_costs_the_same_at_100_and_2000_entries(store) -> None:
    small, large = costs(store(100), 100), costs(store(2000), 2000)
    for what in small:
        # A b-tree one level deeper may cost a little more; a scan costs 20 times more.
        assert large[what] < 2 * small[what] + 50, (what, small[what], large[what])


def test_the_change_really_erased_the_older_version(store) -> None:
    """(The cost test must measure the real work: the superseded content is gone.)"""
    conn = store(100)
    costs(conn, 100)
    held = conn.execute("SELECT version, payload IS NOT NULL FROM entries WHERE origin = ? "
                        "AND record_id = ? ORDER BY seq", (ORIGIN, "rec-000050")).fetchall()
    assert held == [(1, 0), (2, 1)]
    assert log_tx.record_state(conn, ORIGIN, "rec-000051")[2] == "retracted"
