"""A watcher's outbox at a hub: relayed sealed hits are bounded in bytes, and no
one answering center can take the whole budget (red team, session 15)."""

from __future__ import annotations

from pathlib import Path

from node.storage import watches as watch_tx
from node.storage.db import open_sync


def relayed(conn, n: int, origin: str, size: int,  # type: ignore[no-untyped-def]
            access: str = "SEALED", source: str = "spoke") -> None:
    for i in range(n):
        watch_tx.add_outgoing(conn, watch_tx.Outgoing(
            0, "watcher", f"w-{origin}", origin, i + 1, f"{origin}-r{i}", 1, access,
            peer="spoke", sealed=b"x" * size, source=source), ts_ms=i)


def held(conn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for (origin,) in conn.execute("SELECT origin FROM watch_outbox"):
        out[origin] = out.get(origin, 0) + 1
    return out


def test_one_answering_center_cannot_push_the_others_hits_out(tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "node.db", create=True)
    relayed(conn, 5, "honest", 1_000)
    # A hostile origin answers with a few hits padded to the largest size: before,
    # the newest rows took the whole byte budget and every older hit went.
    relayed(conn, 4, "hostile", 4_000)
    watch_tx.prune_outbox(conn, "watcher", keep=1000, max_bytes=16_000)
    kept = held(conn)
    assert kept.get("honest") == 5
    assert 0 < kept.get("hostile", 0) < 4  # held to its share of the bytes
    total = conn.execute("SELECT sum(length(sealed)) FROM watch_outbox").fetchone()[0]
    assert total <= 16_000


def test_unverified_hits_share_the_bytes_by_the_peer_that_delivered_them(
        tmp_path: Path) -> None:
    """Hits the hub could not check name their answering center in unsigned
    words: a hostile peer spreading junk over many claimed centers, each under a
    share, pushed out real (unverifiable here) hits another peer brought."""
    conn = open_sync(tmp_path / "node.db", create=True)
    relayed(conn, 4, "far", 1_000, watch_tx.UNVERIFIED, source="honest-peer")
    for k in range(8):  # newer: kept before the honest peer's older rows
        relayed(conn, 1, f"claimed{k}", 1_900, watch_tx.UNVERIFIED, source="hostile-peer")
    watch_tx.prune_outbox(conn, "watcher", keep=1000, max_bytes=16_000)
    kept = held(conn)
    assert kept.get("far") == 4
    hostile = sum(n for origin, n in kept.items() if origin.startswith("claimed"))
    assert 0 < hostile < 8
