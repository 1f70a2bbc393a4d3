"""Notices for this center's analysts: corrections, retractions, purges and
recalls of records it holds, and deconfliction hits on its own records. A
notice names records and people, never content its reader may not see."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from node.core.record import kind_name
from node.telemetry import metrics
from node.wire import records_pb2


def add(conn: sqlite3.Connection, ts_ms: int, kind: str, origin: str, record_id: str,
        detail: dict[str, Any]) -> None:
    metrics.count_notice(kind)  # every notice passes here: one counting point
    conn.execute("INSERT INTO notices (ts_ms, kind, origin, record_id, detail) "
                 "VALUES (?, ?, ?, ?, ?)", (ts_ms, kind, origin, record_id,
                                            json.dumps(detail, sort_keys=True)))


def deconfliction(conn: sqlite3.Connection, ts_ms: int, origin: str,
                  detail: dict[str, Any], keep: int) -> None:
    """The one notice a query leaves for its restricted matches on this center's
    records (``detail["records"]``, non-empty). Another center's queries cause
    it, so deconfliction notices are kept within ``keep``: the oldest go."""
    add(conn, ts_ms, "deconfliction", origin, detail["records"][0], detail)
    prune(conn, "deconfliction", keep)


def prune(conn: sqlite3.Connection, kind: str, keep: int) -> int:
    """Drop the oldest notices of one kind beyond the newest ``keep``."""
    row = conn.execute("SELECT id FROM notices WHERE kind = ? ORDER BY id DESC "
                       "LIMIT 1 OFFSET ?", (kind, max(keep, 0))).fetchone()
    if row is None:
        return 0
    return conn.execute("DELETE FROM notices WHERE kind = ? AND id <= ?",
                        (kind, row[0])).rowcount


def kinds(conn: sqlite3.Connection) -> list[str]:
    return [k for (k,) in conn.execute("SELECT DISTINCT kind FROM notices")]


def lifecycle_notice(conn: sqlite3.Connection, ts_ms: int, body: records_pb2.RecordBody,
                     held_version: int) -> None:
    """Tell this center's analysts that a record they hold changed at its origin."""
    kind = {records_pb2.RETRACTION: "retraction", records_pb2.PURGE: "purge"}.get(
        body.kind, "correction")
    add(conn, ts_ms, kind, body.origin, body.record_id, {
        "version": body.version, "replaces_version": held_version, "by": body.editor or body.author,
        "reason": body.reason, "entry": kind_name(body)})


def listing(conn: sqlite3.Connection, since_ms: int, limit: int) -> list[tuple]:
    return conn.execute("SELECT ts_ms, kind, origin, record_id, detail FROM notices "
                        "WHERE ts_ms >= ? ORDER BY id DESC LIMIT ?", (since_ms, limit)).fetchall()
