"""Consistent copies of a live database, and checks of a copy.

`VACUUM INTO` on a read-only connection: one read transaction, so the copy is
a snapshot at one instant even while the daemon writes (a file copy of a live
WAL database can miss committed pages: Kavita PR #4254). It writes only live
pages, so content freed by a purge is not carried into the backup, and the
result is a single self-contained file (rollback journal, no -wal beside it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from node.storage import log as log_tx
from node.storage.db import explain, open_reader


@dataclass(frozen=True)
class CopyFacts:
    head_seq: int        # this center's own log head in the copy
    head_hash: bytes
    records: int         # records held (any origin, any state)
    schema_version: int


def vacuum_into(source: Path, target: Path) -> None:
    """Copy ``source`` into ``target``, which must not exist or be empty."""
    with contextlib.closing(open_reader(source)) as conn:
        try:
            conn.execute("VACUUM INTO ?", (str(target),))
        except sqlite3.Error as exc:
            raise explain(source, exc) from None


def erase_pending_in_copy(path: Path) -> bool:
    """A copy holding a pending index erasure (a purge from a peer that arrived
    after the daemon compacted for the backup, or a copy of a stopped node's file)
    compacts its own text and entity indexes, freed pages zeroed, so no purged
    word goes into a file kept for years. True if it had to."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        try:
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("BEGIN IMMEDIATE")
            compacted = log_tx.compact_if_pending(conn)
            conn.execute("COMMIT")
            if compacted:
                conn.execute("VACUUM")  # the copy is nobody else's: drop the freed pages
        except sqlite3.Error as exc:
            raise explain(path, exc) from None
    return compacted


def inspect_copy(path: Path, center: str) -> CopyFacts:
    """Open a copy read-only, run the full integrity check, read its own head."""
    with contextlib.closing(open_reader(path)) as conn:
        try:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("database disk image is malformed: "
                                            + "; ".join(problems[:3]))
            seq, digest = log_tx.head(conn, center)
            records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise explain(path, exc) from None
    return CopyFacts(seq, digest, records, version)
