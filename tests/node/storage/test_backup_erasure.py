"""A backup never copies purged words: a copy holding a pending index erasure (a
purge from a peer that arrived after the daemon compacted for the backup, or a
stopped node's file) compacts its own indexes (review, session 17)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from node.storage import log as log_tx
from node.storage.backup import erase_pending_in_copy, vacuum_into
from node.storage.db import open_sync


def test_a_copy_with_a_pending_erasure_leaves_the_purged_words_out(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with contextlib.closing(open_sync(db, create=True)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO records_fts (rowid, title, narrative, labels, entities) "
                     "VALUES (1, 'quixotic', 'marigold', '', '')")
        conn.execute("INSERT INTO records_fts (rowid, title, narrative, labels, entities) "
                     "VALUES (2, 'kept', 'words', '', '')")
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM records_fts WHERE rowid = 1")  # purged, not compacted
        log_tx.note_erasure(conn, 1)
        conn.execute("COMMIT")
    copy = tmp_path / "copy.db"
    vacuum_into(db, copy)
    assert b"quixotic" in copy.read_bytes()  # what the copy would have kept
    assert erase_pending_in_copy(copy)
    data = copy.read_bytes()
    assert b"quixotic" not in data and b"marigold" not in data and b"kept" in data
    assert not erase_pending_in_copy(copy)  # nothing pending any more
