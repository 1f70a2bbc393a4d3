"""Withdrawn content stays withdrawn: only a record's newest version leaves a
node, recalls reach copies relayed by a hub, a recalled copy is not revived by a
replay, and a peer's fake placeholder cannot block the origin's real entry."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.ingest import check_items, store_batch
from node.egress import replication_batch
from node.signing import entry_hash, key_id, seal_record
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import federation_pb2, records_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
X = "xorigin"


def entry(seq: int, prev: bytes, version: int, audience: list[str],
          title: str) -> federation_pb2.LogItem:
    body = records_pb2.RecordBody(
        origin=X, seq=seq, prev=prev, record_id="rec", version=version, created_ms=seq,
        expires_ms=4_000_000_000_000, kind=records_pb2.BOLO, title=title,
        policy=records_pb2.AccessPolicy(tlp=2, audience=audience, discoverability=2,
                                        relay=True))
    env = seal_record(KEY, body)
    return federation_pb2.LogItem(origin=X, seq=seq, hash=entry_hash(env.payload),
                                  envelope=env)


def log_with_narrowing() -> list[federation_pb2.LogItem]:
    v1 = entry(1, b"", 1, ["members"], "secret words")
    v2 = entry(2, v1.hash, 2, ["nysic"], "secret words, corrected")
    return [v1, v2]


@pytest.fixture
def db() -> Iterator[callable]:
    with tempfile.TemporaryDirectory() as tmp:
        opened: list[sqlite3.Connection] = []

        def make(name: str) -> sqlite3.Connection:
            conn = open_sync(Path(tmp) / f"{name}.db", create=True)
            opened.append(conn)
            return conn

        yield make
        for c in opened:
            c.close()


def deliver(conn: sqlite3.Connection, peer: str, items: list[federation_pb2.LogItem]):
    checked = check_items(items, lambda o: KEYS if o == X else {})
    with immediate(conn):
        return store_batch(conn, peer, checked, 1)


def serve(conn: sqlite3.Connection, peer: str, evaluator: str) -> list[federation_pb2.LogItem]:
    """What this node would send ``peer`` of X's log (as the Replicate handler does)."""
    entries = log_tx.items_after(conn, X, 0, 100)
    states = log_tx.record_states(conn, X, {e.record_id for e in entries if e.record_id})
    with immediate(conn):
        items, sent = replication_batch(
            entries, peer, evaluator, lambda o, r: fed_tx.last_sent(conn, peer, o, r),
            lambda o, r: states[r][1] if r in states else None)
        fed_tx.log_disseminations(conn, sent, 1)
    return items


def payloads(conn: sqlite3.Connection) -> bytes:
    return b"".join(r[0] for r in conn.execute(
        "SELECT payload FROM entries WHERE payload IS NOT NULL"))


def test_a_late_peer_gets_no_superseded_version(db) -> None:
    hub = db("hub")  # holds both versions (it is in both audiences)
    deliver(hub, X, log_with_narrowing())
    items = serve(hub, "late", "hub")
    assert [i.HasField("envelope") for i in items] == [False, False]
    assert not any(i.recall_record_id for i in items)  # never sent: nothing to recall


def test_recall_reaches_a_copy_relayed_by_a_hub(db) -> None:
    v1, v2 = log_with_narrowing()
    hub, spoke = db("hub"), db("spoke")
    deliver(hub, X, [v1])
    deliver(spoke, "hub", serve(hub, "spoke", "hub"))
    assert b"secret" in payloads(spoke)
    # The origin narrows to nysic: the hub is recalled, and must recall the spoke.
    withheld = federation_pb2.LogItem(origin=X, seq=2, hash=v2.hash, recall_record_id="rec",
                                      recall_version=2)
    deliver(hub, X, [withheld])
    assert b"secret" not in payloads(hub)
    onward = serve(hub, "spoke", "hub")
    assert [i.recall_record_id for i in onward] == ["", "rec"]  # the newest carries it
    deliver(spoke, "hub", onward)
    assert b"secret" not in payloads(spoke)
    assert spoke.execute("SELECT state FROM records").fetchone()[0] == "recalled"


def test_a_recalled_copy_is_not_revived_by_a_replay(db) -> None:
    v1, v2 = log_with_narrowing()
    node = db("node")
    deliver(node, X, [v1])
    recall = federation_pb2.LogItem(origin=X, seq=2, hash=v2.hash, recall_record_id="rec",
                                    recall_version=2)
    deliver(node, X, [recall])
    deliver(node, "behind", [v1, recall])  # a peer that is behind replays version 1
    assert b"secret" not in payloads(node)
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "recalled")


def test_a_fake_placeholder_does_not_block_the_real_entry(db) -> None:
    v1, v2 = log_with_narrowing()
    node = db("node")
    deliver(node, X, [v1])
    fake = federation_pb2.LogItem(origin=X, seq=2, hash=b"\x00" * 32)
    deliver(node, "mallory", [fake])
    result = deliver(node, X, [v2])
    assert not result.rejected
    with contextlib.closing(node.cursor()) as cur:
        held = cur.execute("SELECT hash, payload IS NOT NULL FROM entries WHERE seq = 2"
                           ).fetchone()
    assert held == (v2.hash, 1)
