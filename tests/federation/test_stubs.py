"""Origin-signed entry stubs: stored only when they verify against the origin's
key and describe the position (and body) they came with; absent stubs (older
databases, bare placeholders) are handled everywhere."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.ingest import check_items, store_batch
from node.core.signing import entry_hash, key_id, open_stub, seal_stub, stub_of
from node.core.signing import seal_record_v1 as seal_record  # v1 entries with separate stubs
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import federation_pb2, records_pb2

KEY = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
X = "xorigin"


def body(seq: int, prev: bytes, version: int = 1) -> records_pb2.RecordBody:
    return records_pb2.RecordBody(
        origin=X, seq=seq, prev=prev, record_id=f"r{seq}", version=version, created_ms=seq,
        expires_ms=4_000_000_000_000, kind=records_pb2.BOLO, title="grey van",
        contact="desk", policy=records_pb2.AccessPolicy(tlp=2, audience=["members"],
                                                       discoverability=2, relay=True))


def item(b: records_pb2.RecordBody, *, envelope: bool = True, stub: bool = True,
         key: Ed25519PrivateKey = KEY) -> federation_pb2.LogItem:
    env = seal_record(KEY, b)
    out = federation_pb2.LogItem(origin=X, seq=b.seq, hash=entry_hash(env.payload))
    if envelope:
        out.envelope.CopyFrom(env)
    if stub:
        signed = seal_stub(key, stub_of(b, out.hash))
        signed.key_id = key_id(KEY.public_key())
        out.stub.CopyFrom(signed)
    return out


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    with tempfile.TemporaryDirectory() as tmp:
        c = open_sync(Path(tmp) / "n.db", create=True)
        yield c
        c.close()


def deliver(conn: sqlite3.Connection, items: list[federation_pb2.LogItem]):
    checked = check_items(items, lambda o: KEYS if o == X else {})
    with immediate(conn):
        return store_batch(conn, "peer", checked, 1, "node")


def test_a_verified_stub_is_stored_with_its_entry_and_with_a_placeholder(conn) -> None:
    one = item(body(1, b""))
    two = item(body(2, one.hash), envelope=False)
    three = item(body(3, two.hash), stub=False)
    result = deliver(conn, [one, two, three])
    assert not result.rejected and result.stored == 3
    s1 = log_tx.entry(conn, X, 1).signed_stub()
    assert s1 == one.stub and open_stub(s1, KEYS).record_id == "r1"
    assert log_tx.entry(conn, X, 2).signed_stub() == two.stub
    assert log_tx.entry(conn, X, 3).signed_stub() is None  # none came: none held


def test_a_stub_is_kept_for_a_position_held_without_one(conn) -> None:
    one = item(body(1, b""), stub=False)
    deliver(conn, [one])
    assert log_tx.entry(conn, X, 1).signed_stub() is None
    deliver(conn, [item(body(1, b""))])
    assert log_tx.entry(conn, X, 1).signed_stub() is not None


@pytest.mark.parametrize("tamper, reason", [
    ("key", "bad stub: signature does not verify"),
    ("position", "bad stub: stub names another log position"),
    ("body", "bad stub: stub disagrees with the signed entry"),
])
def test_a_stub_that_does_not_verify_or_match_stores_nothing(conn, tamper, reason) -> None:
    b = body(1, b"")
    good = item(b)
    if tamper == "key":
        bad = item(b, key=MALLORY)
    elif tamper == "position":
        other = body(1, b"")
        other.seq = 1
        signed = seal_stub(KEY, stub_of(other, b"\x07" * 32))
        bad = federation_pb2.LogItem(origin=X, seq=1, hash=good.hash, envelope=good.envelope,
                                     stub=signed)
    else:
        other = body(1, b"")
        other.contact = "subject is clear"
        signed = seal_stub(KEY, stub_of(other, good.hash))
        bad = federation_pb2.LogItem(origin=X, seq=1, hash=good.hash, envelope=good.envelope,
                                     stub=signed)
    result = deliver(conn, [bad])
    assert sum(result.rejected.values()) == 1
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
    assert conn.execute("SELECT reason FROM rejections").fetchone()[0] == reason


def v2_item(b: records_pb2.RecordBody, *, envelope: bool = True) -> federation_pb2.LogItem:
    """A v2 entry as egress sends it: the envelope carries its own signed stub; without
    the envelope (a recall) the same signature travels as the item's stub."""
    from node.core.signing import envelope_stub
    from node.core.signing import seal_record as seal_v2
    env = seal_v2(KEY, b)
    out = federation_pb2.LogItem(origin=X, seq=b.seq, hash=entry_hash(env.payload))
    if envelope:
        out.envelope.CopyFrom(env)
    else:
        out.stub.CopyFrom(envelope_stub(env))
    return out


def test_a_v2_entry_is_stored_with_its_own_stub_and_served_whole(conn) -> None:
    one = v2_item(body(1, b""))
    two_body = body(2, one.hash)
    two = v2_item(two_body)
    hint = federation_pb2.LogItem(origin=X, seq=2, hash=two.hash)  # a bare placeholder first
    result = deliver(conn, [one, hint])
    assert not result.rejected
    result = deliver(conn, [two])  # the envelope fills the placeholder
    assert not result.rejected
    for it in (one, two):
        held = log_tx.entry(conn, X, it.seq)
        assert held.envelope() == it.envelope  # stub included: verifiable downstream
        signed = held.signed_stub()
        assert signed.signature == it.envelope.signature
        assert open_stub(signed, KEYS).record_id == f"r{it.seq}"


def test_a_v2_recall_is_the_entry_signature_alone(conn) -> None:
    """A placeholder carrying a v2 entry's stub (signature of the entry itself) is a
    verified stub: its record and version are known, and it is kept."""
    one = v2_item(body(1, b""))
    two = v2_item(body(2, one.hash, version=1), envelope=False)
    result = deliver(conn, [one, two])
    assert not result.rejected
    held = log_tx.entry(conn, X, 2)
    assert held.payload is None and held.record_id == "r2"
    assert held.signed_stub() == two.stub


def test_a_v2_stub_changed_in_transit_stores_nothing(conn) -> None:
    good = v2_item(body(1, b""), envelope=False)
    lie = records_pb2.EntryStub()
    lie.ParseFromString(good.stub.stub)
    lie.contact = "subject is clear"
    good.stub.stub = lie.SerializeToString(deterministic=True)
    result = deliver(conn, [good])
    assert sum(result.rejected.values()) == 1
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 0


def test_a_v2_fork_keeps_verifiable_evidence(conn) -> None:
    """Two v2 entries at one position: the evidence kept is each one's whole
    envelope (payload and the stub its signature covers), so both verify."""
    from node.core.signing import ENTRY_DOMAIN, verify
    one = v2_item(body(1, b""))
    other = body(1, b"")
    other.title = "another entry at the same seq"
    two = v2_item(other)
    deliver(conn, [one])
    result = deliver(conn, [two])
    assert result.forks
    held_p, held_s, other_p, other_s = conn.execute(
        "SELECT held_payload, held_signature, other_payload, other_signature FROM forks"
    ).fetchone()
    for data, sig in ((held_p, held_s), (other_p, other_s)):
        env = records_pb2.Envelope()
        env.ParseFromString(data)  # the whole v2 envelope: content and the signed stub
        verify(KEY.public_key(), ENTRY_DOMAIN, env.stub, sig)
        assert env.signature == sig
    assert {held_p, other_p} == {one.envelope.SerializeToString(),
                                 two.envelope.SerializeToString()}
