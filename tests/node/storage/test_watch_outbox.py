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


def test_outbox_ids_carry_on_across_the_rebuild_of_migration_14(tmp_path: Path) -> None:
    """Peers hold cursors into the outbox: the table rebuilt (its UNIQUE key now
    names the way) must not hand out an id again, even one whose row is gone."""
    import contextlib
    import sqlite3

    from node.storage.db import _statements
    from node.storage.schema import MIGRATIONS

    db = tmp_path / "node.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for migration in MIGRATIONS[:13]:
            for statement in _statements(migration):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 13")
        for i in range(5):
            conn.execute("INSERT INTO watch_outbox (center, watch_id, ts_ms, origin, seq, "
                         "record_id, version, access, peer) VALUES ('w', 'q', 0, 'o', ?, ?, 1, "
                         "'FULL', 'w')", (i, f"r{i}"))
        conn.execute("DELETE FROM watch_outbox WHERE id > 2")  # acked: gone, ids kept
    conn = open_sync(db)
    assert [r[0] for r in conn.execute("SELECT id FROM watch_outbox ORDER BY id")] == [1, 2]
    watch_tx.add_outgoing(conn, watch_tx.Outgoing(0, "w", "q", "o", 9, "r9", 1, "FULL",
                                                  "w"), 0)
    watch_tx.add_outgoing(conn, watch_tx.Outgoing(0, "w", "q", "o", 9, "r9", 1, "FULL",
                                                  "other"), 0)  # the same hit, another way
    assert [r[0] for r in conn.execute("SELECT id FROM watch_outbox ORDER BY id")] == [1, 2, 6, 7]


def test_other_ways_back_are_bounded_and_one_takes_over_from_an_unpinned_peer(
        tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "node.db", create=True)
    watch_tx.replace_standing(conn, "watcher", 100, [], "first", 2, (), b"set")
    assert [watch_tx.add_way(conn, "watcher", p, 2) for p in ("hub", "first", "hub", "third",
                                                             "fourth")] == [
        True, False, False, True, False]
    assert watch_tx.route(conn, "watcher").ways == ("first", "hub", "third")  # type: ignore
    watch_tx.drop_center(conn, "first")
    r = watch_tx.route(conn, "watcher")
    assert r is not None and r.ways == ("hub", "third")
    watch_tx.replace_standing(conn, "watcher", 200, [], "hub", 2, (), b"newer")
    assert watch_tx.route(conn, "watcher").ways == ("hub",)  # type: ignore  # learned again
    watch_tx.drop_center(conn, "hub")
    assert watch_tx.route(conn, "watcher") is None  # no way back: the set goes
    # A watcher that is a direct peer takes no other way.
    watch_tx.replace_standing(conn, "direct", 100, [], "direct", 2, (), b"set")
    assert not watch_tx.add_way(conn, "direct", "hub", 2)


def test_a_way_back_counts_as_a_set_the_peer_brings(tmp_path: Path) -> None:
    """Red team (session 16): routed_via counted only first ways, so a peer could
    be a further way back for every watcher beyond its bound (max_standing_sets_per_peer)."""
    conn = open_sync(tmp_path / "node.db", create=True)
    watch_tx.replace_standing(conn, "w1", 100, [], "hub", 2, (), b"set")
    watch_tx.replace_standing(conn, "w2", 100, [], "other", 2, (), b"set")
    assert watch_tx.routed_via(conn, "hub", "hub") == 1
    assert watch_tx.add_way(conn, "w2", "hub", 2)
    assert watch_tx.routed_via(conn, "hub", "hub") == 2  # failed before: 1
    assert watch_tx.routed_via(conn, "hub", "hub", "w2") == 1  # not counting that watcher
    # A watcher whose set goes with an unpinned peer leaves no way behind to count.
    watch_tx.replace_standing(conn, "other", 100, [], "relay", 2, (), b"set")
    assert watch_tx.add_way(conn, "other", "hub", 2)
    watch_tx.drop_center(conn, "other")
    assert watch_tx.routed_via(conn, "hub", "hub") == 2  # w1 (first way), w2 (further way)
    assert conn.execute("SELECT count(*) FROM standing_ways WHERE center = 'other'"
                        ).fetchone()[0] == 0
