"""Rejection rows a peer's items cause are bounded per peer (red team, session 17:
a peer streaming bad batches wrote a row a batch without bound); rows a count
depends on (contradicted hints, federation/ingest.MAX_REWINDS) are never refused
nor displaced by the peer's other rows, or flooding would reset that count."""

from __future__ import annotations

import contextlib
from pathlib import Path

from node.storage import federation as fed_tx
from node.storage.db import immediate, open_sync


def test_rows_a_minute_and_in_all_per_peer(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fed_tx, "MAX_REJECTIONS_PER_PEER", 100)
    with contextlib.closing(open_sync(tmp_path / "n.db", create=True)) as conn, immediate(conn):
        for i in range(3):  # rows that a count depends on: kept, whatever comes after
            assert fed_tx.reject(conn, 1_000 + i, "rogue", "o", i, "contradicted",
                                 bounded=False)
        kept = [fed_tx.reject(conn, 10_000, "rogue", "o", 9, "bad signature")
                for _ in range(100)]
        assert sum(kept) == fed_tx.MAX_REJECTIONS_PER_MINUTE - 3  # the minute's share
        assert fed_tx.reject(conn, 10_000, "honest", "o", 9, "bad signature")  # its own
        for minute in range(1, 5):  # later minutes: the oldest leave beyond the cap
            for _ in range(60):
                fed_tx.reject(conn, 10_000 + minute * 60_001, "rogue", "o", 9, "bad")
        rows = conn.execute("SELECT count(*) FROM rejections WHERE peer = 'rogue' AND "
                            "bounded = 1").fetchone()[0]
        assert rows <= 100
        assert fed_tx.rejections_since(conn, "rogue", "o", "contradicted", 0) == 3
