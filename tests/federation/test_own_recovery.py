"""Own-log recovery, without sockets: the pure state machine (node.core.recovery) and
ingest of this node's own origin (federation.ingest.store_batch)."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.ingest import OWN_LOG, check_items, store_batch
from node.core.recovery import OwnLogRecovery
from node.core.signing import entry_hash, key_id, seal_record, seal_stub, stub_of
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import federation_pb2, records_pb2

ME = "ncric"
KEY = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}


def body(seq: int, prev: bytes, title: str = "t") -> records_pb2.RecordBody:
    return records_pb2.RecordBody(
        origin=ME, seq=seq, prev=prev, record_id=f"r{seq}-{title}", version=1, created_ms=seq,
        expires_ms=4_000_000_000_000, kind=records_pb2.BULLETIN, title=title,
        policy=records_pb2.AccessPolicy(tlp=2, audience=["members"], discoverability=2,
                                        relay=True))


def item(b: records_pb2.RecordBody, key: Ed25519PrivateKey = KEY, *, envelope: bool = True,
         stub: bool = False) -> federation_pb2.LogItem:
    env = seal_record(key, b)
    out = federation_pb2.LogItem(origin=ME, seq=b.seq, hash=entry_hash(env.payload))
    if envelope:
        out.envelope.CopyFrom(env)
    if stub:
        out.stub.CopyFrom(seal_stub(key, stub_of(b, out.hash)))
    return out


def chain(n: int, title: str = "t") -> list[federation_pb2.LogItem]:
    out, prev = [], b""
    for seq in range(1, n + 1):
        it = item(body(seq, prev, title))
        prev = it.hash
        out.append(it)
    return out


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    with tempfile.TemporaryDirectory() as tmp:
        c = open_sync(Path(tmp) / "n.db", create=True)
        yield c
        c.close()


def deliver(conn: sqlite3.Connection, items: list[federation_pb2.LogItem], recover: bool):
    checked = check_items(items, lambda o: KEYS if o == ME else {})
    with immediate(conn):
        return store_batch(conn, "nysic", checked, 1, ME, recover_own=recover)


def test_own_entries_only_while_recovering(conn: sqlite3.Connection) -> None:
    items = chain(3)
    refused = deliver(conn, items, recover=False)
    assert refused.rejected == {OWN_LOG: 1} and log_tx.head(conn, ME)[0] == 0
    taken = deliver(conn, items, recover=True)
    assert taken.stored == 3 and log_tx.head(conn, ME) == (3, items[-1].hash)
    # Echoes of what is held are duplicates even when not recovering, never rejections.
    echoed = deliver(conn, items, recover=False)
    assert echoed.duplicates == 3 and not echoed.rejected


def test_recovery_takes_only_this_nodes_signature_and_never_overwrites(
        conn: sqlite3.Connection) -> None:
    deliver(conn, chain(2), recover=True)
    forged = item(body(3, log_tx.head(conn, ME)[1]), key=MALLORY)
    assert deliver(conn, [forged], recover=True).rejected
    assert log_tx.head(conn, ME)[0] == 2
    # A different entry signed by this node at a held position: a fork, never a
    # replacement; the own origin is quarantined (nothing more is signed).
    other = item(body(2, chain(1)[0].hash, "other"))
    result = deliver(conn, [other], recover=True)
    assert result.forks and ME in fed_tx.quarantined(conn)
    assert log_tx.entry(conn, ME, 2).hash == chain(2)[1].hash


def test_a_stub_brings_back_a_position_whose_content_is_gone(conn: sqlite3.Connection) -> None:
    items = chain(2)
    deliver(conn, items[:1], recover=True)
    b2 = body(2, items[0].hash)
    stub_only = item(b2, envelope=False, stub=True)
    assert deliver(conn, [stub_only], recover=True).stored == 1
    held = log_tx.held(conn, ME, 2)
    assert held is not None and held.signed and not held.content


def test_state_machine() -> None:
    r = OwnLogRecovery(started=0.0, settle_s=10.0)
    r.set_dialled({"nysic", "ffc"})
    assert not r.settled(1.0) and "asking peers ffc, nysic" in r.refusal(5, 1.0)
    assert r.settled(10.0)  # a peer that never answers: unreachable after settle_s
    assert not r.heard("nysic", 5, 5)
    r.down("ffc")
    assert r.settled(1.0) and r.refusal(5, 1.0) == ""
    # Recovering (a restore): a peer ahead blocks; confirmations end it.
    r.begin("restored")
    assert r.heard("nysic", 9, 5) and r.behind(5) == 4
    assert "recovering own log: 4 entries" in r.refusal(5, 1.0)
    assert not r.caught_up(5)
    assert not r.heard("nysic", 9, 9)
    # ffc is unreachable: it may hold the newest own entries, and no other peer's
    # word stands for it (a hostile peer would say "nothing newer"): still waiting.
    assert not r.caught_up(9)
    assert not r.heard("ffc", 9, 9)
    assert r.caught_up(9)  # every dialled peer confirmed
    # A peer known to be ahead blocks even while it is unreachable.
    r.begin("restored")
    r.heard("ffc", 12, 9)
    r.down("ffc")
    r.heard("nysic", 9, 9)
    assert not r.caught_up(9)
    # Without any confirmation (no peer answered), never caught up by itself.
    alone = OwnLogRecovery(active=True)
    assert not alone.caught_up(3)


def test_a_retired_key_beyond_a_stored_rotation_is_no_proof(conn: sqlite3.Connection) -> None:
    """The stolen-key rotation committed, not installed in memory yet: the retired
    key's entries beyond it must not hold the node again (federation.links)."""
    from federation.links import _own_history_now, _own_key_signs
    from node.core.keyhistory import KeyHistory, Rotation
    from node.core.signing import raw_public
    from node.storage import keys as keys_tx

    old_raw, new_raw = raw_public(KEY.public_key()), raw_public(MALLORY.public_key())
    pinned = KeyHistory.pinned(old_raw)  # what the daemon's memory still holds
    thief = check_items(chain(3), lambda o: KEYS if o == ME else {})[2]  # seq 3, old key
    assert _own_key_signs(_own_history_now(conn, ME, pinned), thief)
    with immediate(conn):
        keys_tx.add_rotation(conn, Rotation(ME, 2, old_raw, new_raw), 1)
    assert not _own_key_signs(_own_history_now(conn, ME, pinned), thief)
    assert not _own_key_signs(None, thief)


def test_an_adopted_recovery_takes_only_the_entry_the_administrator_reviewed(
        conn: sqlite3.Connection) -> None:
    """`fcnode recovery adopt` adopts the held proof `fcnode status` showed. A key
    that signed two entries at that position (a thief's fork) must not get the
    other one taken back first because it arrived first (red team, stop 16)."""
    from node.core.recovery import Held
    from node.storage import recovery as recovery_tx

    mine = chain(3)
    deliver(conn, mine[:1], recover=True)  # this node's head: seq 1
    other = item(body(2, mine[0].hash, "thief"))  # also signed by this node's key
    with immediate(conn):
        recovery_tx.adopt(conn, Held("nysic", 2, 1, mine[1].hash, 0))
    refused = deliver(conn, [other], recover=True)
    assert refused.rejected and log_tx.head(conn, ME)[0] == 1
    taken = deliver(conn, mine[1:], recover=True)
    assert taken.stored == 2 and log_tx.head(conn, ME) == (3, mine[-1].hash)
    with immediate(conn):
        recovery_tx.finish(conn)  # recovery over: the adopted position is forgotten
    assert recovery_tx.adopted(conn) is None
