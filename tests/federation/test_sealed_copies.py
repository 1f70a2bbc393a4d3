"""Sealed copies (issue 11 item 3): the pure seal/open/check functions, the egress
(copies go with placeholders and are never collapsed into a range), and ingest
with storage (verified before kept, bounded per position, opened only by the
center they were sealed to, which then holds the entry as if it came in clear)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federation.ingest import check_items, store_batch
from node.core.keyhistory import KeyHistory
from node.core.sealing import COPY_OVERHEAD, SealedCopy, check_copy, open_copy, seal_copy
from node.core.signing import entry_hash, key_id, seal_record
from node.services.egress import replication_batch
from node.storage import log as log_tx
from node.storage import sealed as sealed_tx
from node.storage.db import open_sync
from node.storage.log import StoredEntry
from node.wire import federation_pb2, records_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
ORG = "origin"
READER = X25519PrivateKey.generate()   # the named center's X25519 key
OTHER = X25519PrivateKey.generate()    # a hub's
BIG = 1 << 20


def raw(k: X25519PrivateKey) -> bytes:
    return k.public_key().public_bytes_raw()


def chain(n: int, amber: set[int] = frozenset()) -> list[federation_pb2.LogItem]:
    """n entries of ORG; positions in ``amber`` are AMBER for {origin, reader}."""
    out, prev = [], b""
    for seq in range(1, n + 1):
        audience = [ORG, "reader"] if seq in amber else ["members"]
        body = records_pb2.RecordBody(
            origin=ORG, seq=seq, prev=prev, record_id=f"r{seq}", version=1, created_ms=seq,
            expires_ms=4_000_000_000_000, kind=records_pb2.BOLO, title=f"secret {seq}",
            policy=records_pb2.AccessPolicy(tlp=3 if seq in amber else 2, audience=audience,
                                            discoverability=2, relay=True))
        env = seal_record(KEY, body)
        prev = entry_hash(env.payload)
        out.append(federation_pb2.LogItem(origin=ORG, seq=seq, hash=prev, envelope=env))
    return out


def copy_of(item: federation_pb2.LogItem, to: X25519PrivateKey = READER,
            key: Ed25519PrivateKey = KEY) -> SealedCopy:
    return seal_copy(key, raw(to), item.origin, item.seq, item.hash,
                     item.envelope.SerializeToString())


def wire(c: SealedCopy) -> federation_pb2.SealedCopy:
    return federation_pb2.SealedCopy(sealed=c.sealed, signature=c.signature, key_id=c.key_id)


def placeholder(item: federation_pb2.LogItem, *copies: SealedCopy) -> federation_pb2.LogItem:
    return federation_pb2.LogItem(origin=item.origin, seq=item.seq, hash=item.hash,
                                  sealed=[wire(c) for c in copies])


# -- pure ---------------------------------------------------------------------------

def test_a_copy_opens_only_for_its_center_and_position_and_its_signature_binds_both():
    item = chain(1, {1})[0]
    c = copy_of(item)
    assert check_copy(c, KEYS, ORG, 1, item.hash, BIG) == ""
    assert open_copy(c, [READER], ORG, 1, item.hash) == item.envelope.SerializeToString()
    assert open_copy(c, [OTHER], ORG, 1, item.hash) is None           # a hub cannot read it
    assert open_copy(c, [READER], ORG, 2, item.hash) is None          # another position
    assert open_copy(c, [READER], ORG, 1, b"\x00" * 32) is None      # another hash
    assert "does not verify" in check_copy(c, KEYS, ORG, 2, item.hash, BIG)
    assert "does not verify" in check_copy(c, KEYS, "x", 1, item.hash, BIG)
    altered = SealedCopy(c.sealed[:-1] + bytes([c.sealed[-1] ^ 1]), c.signature, c.key_id)
    assert "does not verify" in check_copy(altered, KEYS, ORG, 1, item.hash, BIG)
    stranger = copy_of(item, key=Ed25519PrivateKey.generate())   # signed by a hop
    assert "no origin key" in check_copy(stranger, KEYS, ORG, 1, item.hash, BIG)
    assert "larger than" in check_copy(c, KEYS, ORG, 1, item.hash, 10)


# -- egress -------------------------------------------------------------------------

def test_copies_go_with_placeholders_to_every_peer_and_are_never_collapsed():
    items = chain(5, {3})
    entries = [StoredEntry(ORG, i.seq, i.hash, i.envelope.payload, i.envelope.signature,
                           i.envelope.key_id) for i in items]
    held = {3: [(items[2].hash, copy_of(items[2])), (b"\x01" * 32, copy_of(items[2]))]}
    for peer in ("hub", "reader"):
        # "hub": no content anywhere (evaluated as a relaying node for an outside
        # peer, the GREEN ones are sent; the AMBER one is a placeholder with its copy).
        out, _ = replication_batch(entries, peer, "relay", ranges=True,
                                   copies_of=lambda o, s: held.get(s, []))
        at3 = [i for i in out if i.seq == 3]
        assert len(at3) == 1 and len(at3[0].sealed) == 1  # only the copy for the held hash
        assert at3[0].sealed[0].sealed == held[3][0][1].sealed
        assert at3[0].HasField("envelope") is (peer == "reader")
    # Bare placeholders around it collapse; the one with a copy stays its own item.
    bare = [StoredEntry(ORG, i.seq, i.hash, None, None, None) for i in items]
    out, _ = replication_batch(bare, "hub", "relay", ranges=True,
                               copies_of=lambda o, s: held.get(s, []))
    assert [(i.range_first, i.seq, len(i.sealed)) for i in out] == [
        (1, 2, 0), (0, 3, 1), (4, 5, 0)]


# -- ingest and storage ----------------------------------------------------------------

@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(open_sync(tmp_path / "n.db", create=True)) as c:
        yield c


def deliver(conn: sqlite3.Connection, items: list[federation_pb2.LogItem], own: str,
            private: X25519PrivateKey | None, limit: int = 32, peer: str = "peer"):
    checked = check_items(items, lambda o: KEYS if o == ORG else {},
                          [private] if private is not None else None, limit)
    conn.execute("BEGIN IMMEDIATE")
    result = store_batch(conn, peer, checked, 1, own, max_copies=limit)
    conn.execute("COMMIT")
    return result


def test_a_hub_keeps_verified_copies_with_a_placeholder_row_of_its_own(conn) -> None:
    items = chain(5, {3})
    sent = [placeholder(i) for i in items[:2]] + [placeholder(items[2], copy_of(items[2]))] + [
        placeholder(i) for i in items[3:]]
    result = deliver(conn, sent, "hub", OTHER)  # the hub's key does not open it
    assert result.copies_stored == 1 and not result.copies_dropped
    assert sealed_tx.count(conn, ORG, 3) == 1
    rows = list(conn.execute("SELECT seq, first_seq, payload FROM entries ORDER BY seq"))
    # Hints 1-2 are a range; 3 stands alone (its copy goes out with it); 4-5 after it.
    assert rows == [(2, 1, None), (3, None, None), (5, 4, None)]


def test_bad_copies_are_dropped_counted_and_never_stored_the_item_still_placed(conn) -> None:
    item = chain(1, {1})[0]
    good = copy_of(item)
    forged = copy_of(item, key=Ed25519PrivateKey.generate())
    altered = SealedCopy(good.sealed[:-1] + bytes([good.sealed[-1] ^ 1]), good.signature,
                         good.key_id)
    result = deliver(conn, [placeholder(item, forged, altered)], "reader", READER)
    assert sum(result.copies_dropped.values()) == 2 and result.copies_stored == 0
    assert sealed_tx.count(conn, ORG, 1) == 0
    assert conn.execute("SELECT payload FROM entries").fetchall() == [(None,)]
    reasons = [r for (r,) in conn.execute("SELECT reason FROM rejections")]
    assert len(reasons) == 2 and all(r.startswith("sealed copy dropped") for r in reasons)


def test_copies_per_position_are_bounded(conn) -> None:
    item = chain(1, {1})[0]
    many = [copy_of(item, to=X25519PrivateKey.generate()) for _ in range(5)]
    result = deliver(conn, [placeholder(item, *many)], "hub", OTHER, limit=2)
    # 2 looked at (the bound on what one item may make this node verify), 3 not.
    assert result.copies_stored == 2 and sum(result.copies_dropped.values()) == 3
    assert sealed_tx.count(conn, ORG, 1) == 2
    # Later copies from another peer do not grow it past the bound.
    result = deliver(conn, [placeholder(item, many[3])], "hub", OTHER, limit=2, peer="p2")
    assert sealed_tx.count(conn, ORG, 1) == 2 and result.copies_stored == 0
    assert sum(result.copies_dropped.values()) == 1


def test_the_named_center_opens_its_copy_and_holds_the_entry(conn) -> None:
    items = chain(2, {2})
    sent = [placeholder(items[0]), placeholder(items[1], copy_of(items[1], to=OTHER),
                                               copy_of(items[1]))]
    result = deliver(conn, sent, "reader", READER)
    assert result.copies_stored == 2
    row = conn.execute("SELECT payload, signature FROM entries WHERE seq = 2").fetchone()
    assert row == (items[1].envelope.payload, items[1].envelope.signature)
    assert conn.execute("SELECT record_id, state FROM records").fetchall() == [("r2", "active")]


def test_a_placeholder_held_without_copies_is_upgraded_when_a_copy_arrives(conn) -> None:
    items = chain(3, {2})
    deliver(conn, [placeholder(i) for i in items], "reader", READER)  # from an old hub
    assert conn.execute("SELECT count(*) FROM entries WHERE payload IS NOT NULL"
                        ).fetchone()[0] == 0
    deliver(conn, [placeholder(items[1], copy_of(items[1]))], "reader", READER, peer="p2")
    row = conn.execute("SELECT payload FROM entries WHERE seq = 2").fetchone()
    assert row == (items[1].envelope.payload,)


def test_a_copy_not_for_this_center_or_not_its_entry_leaves_a_placeholder(conn) -> None:
    items = chain(2, {1, 2})
    # The origin sealed the entry of seq 2 under seq 1's position: it opens (the
    # info binds the position it was made for), but the envelope is not that entry.
    wrong = seal_copy(KEY, raw(READER), ORG, 1, items[0].hash,
                      items[1].envelope.SerializeToString())
    result = deliver(conn, [placeholder(items[0], wrong)], "reader", READER)
    assert result.copies_dropped == {"bad_content": 1}
    assert conn.execute("SELECT payload FROM entries").fetchall() == [(None,)]
    # A center outside the audience that could open a copy still keeps nothing:
    # its own policy decision for itself decides (here: "stranger" is not named).
    result = deliver(conn, [placeholder(items[1], copy_of(items[1]))], "stranger", READER)
    assert conn.execute("SELECT payload FROM entries WHERE seq = 2").fetchone() == (None,)


def test_a_sealed_recall_removes_the_older_copy_and_its_sealed_copies(conn) -> None:
    v1 = chain(1, {1})[0]
    body = records_pb2.RecordBody()
    body.ParseFromString(v1.envelope.payload)
    body.seq, body.prev, body.version = 2, v1.hash, 2
    del body.policy.audience[:]
    body.policy.audience.append(ORG)  # narrowed: the reader is no longer named
    env = seal_record(KEY, body)
    v2 = federation_pb2.LogItem(origin=ORG, seq=2, hash=entry_hash(env.payload), envelope=env)
    deliver(conn, [placeholder(v1, copy_of(v1))], "reader", READER)
    assert conn.execute("SELECT state FROM records").fetchall() == [("active",)]
    assert sealed_tx.count(conn, ORG, 1) == 1
    stub_only = records_pb2.Envelope(stub=env.stub, signature=env.signature, key_id=env.key_id)
    recall = seal_copy(KEY, raw(READER), ORG, 2, v2.hash, stub_only.SerializeToString())
    deliver(conn, [placeholder(v2, recall)], "reader", READER)
    assert conn.execute("SELECT version, state FROM records").fetchall() == [(2, "recalled")]
    assert conn.execute("SELECT count(*) FROM entries WHERE payload IS NOT NULL"
                        ).fetchone()[0] == 0
    assert sealed_tx.count(conn, ORG, 1) == 0  # the content's ciphertext went with it


def test_a_peer_flooding_bad_copies_buys_a_bounded_number_of_checks() -> None:
    items = chain(3, {1, 2, 3})
    junk = [copy_of(items[0], key=Ed25519PrivateKey.generate()) for _ in range(32)]
    checked = check_items([placeholder(i, *junk) for i in items],
                          lambda o: KEYS, [READER], 32)
    reasons: dict[str, int] = {}
    for c in checked:
        assert not c.error and not c.copies  # each item still judged on its own
        for why, n in c.dropped:
            reasons[why] = reasons.get(why, 0) + n
    assert sum(n for why, n in reasons.items() if "no origin key" in why) == 64
    assert sum(n for why, n in reasons.items() if "bad copies in one batch" in why) == 32


# -- hostile hops (red team, s15) -----------------------------------------------------

def narrowed(v1: federation_pb2.LogItem) -> tuple[federation_pb2.LogItem, SealedCopy]:
    """v2 of v1's record for the origin alone, and the recall sealed to the reader."""
    body = records_pb2.RecordBody()
    body.ParseFromString(v1.envelope.payload)
    body.seq, body.prev, body.version = v1.seq + 1, v1.hash, 2
    del body.policy.audience[:]
    body.policy.audience.append(ORG)
    env = seal_record(KEY, body)
    v2 = federation_pb2.LogItem(origin=ORG, seq=v1.seq + 1, hash=entry_hash(env.payload),
                                envelope=env)
    stub_only = records_pb2.Envelope(stub=env.stub, signature=env.signature, key_id=env.key_id)
    return v2, seal_copy(KEY, raw(READER), ORG, v2.seq, v2.hash, stub_only.SerializeToString())


@pytest.mark.parametrize("had_v1", [True, False])
def test_a_replayed_copy_of_a_recalled_version_is_not_kept_again(conn, had_v1) -> None:
    # The recall erased the reader's v1 and its copies; a hop that kept v1's copy
    # (any hub holding a bare placeholder does) replays it: the reader must not
    # hold v1's content again, not even sealed to its own key.
    v1 = chain(1, {1})[0]
    v2, recall = narrowed(v1)
    deliver(conn, [placeholder(v1, copy_of(v1)) if had_v1 else placeholder(v1)],
            "reader", READER)
    deliver(conn, [placeholder(v2, recall)], "reader", READER)
    assert sealed_tx.count(conn, ORG, 1) == 0
    result = deliver(conn, [placeholder(v1, copy_of(v1))], "reader", READER, peer="rogue")
    assert sealed_tx.count(conn, ORG, 1) == 0 and result.copies_stored == 0
    assert conn.execute("SELECT count(*) FROM entries WHERE payload IS NOT NULL"
                        ).fetchone()[0] == 0
    assert conn.execute("SELECT version, state FROM records").fetchall() == [(2, "recalled")]


def test_junk_copies_on_many_items_write_a_bounded_number_of_rejection_rows(conn) -> None:
    # One cheap junk copy on each of thousands of placeholders (about 60 bytes an
    # item), each naming another key id (the reason quotes it): the drops must not
    # be a row each in `rejections`, or one 8 MiB batch writes 140,000 rows (every
    # write another's request causes is bounded).
    history = KeyHistory.pinned(KEY.public_key().public_bytes_raw())
    items = [federation_pb2.LogItem(origin=ORG, seq=i, hash=bytes(32), sealed=[
        federation_pb2.SealedCopy(sealed=b"x", signature=b"", key_id=f"k{i:015d}")])
        for i in range(1, 3001)]
    checked = check_items(items, lambda o: history, [OTHER], 32)
    conn.execute("BEGIN IMMEDIATE")
    result = store_batch(conn, "rogue", checked, 1, "hub")
    conn.execute("COMMIT")
    assert sum(result.copies_dropped.values()) == 3000  # every drop still counted
    # By kind, not by the rogue's strings: 64 checked (unknown key), then bad_flood.
    assert result.copies_dropped == {"unknown_key": 64, "bad_flood": 2936}
    rows = conn.execute("SELECT count(*) FROM rejections").fetchone()[0]
    assert rows == 2, rows  # one per origin and kind in the batch


def test_a_bare_hint_does_not_displace_a_position_the_origin_signed_copies_for(conn) -> None:
    # A hub got a position with its copy from another hub (not from the origin): a
    # hostile peer's bare hint with another hash must not replace it, or the copy
    # (signed for the held hash) no longer goes out and every center behind the hub
    # waits for it until the origin's next entry in clear rewinds the lie.
    items = chain(3, {2})
    deliver(conn, [placeholder(items[0]), placeholder(items[1], copy_of(items[1]))], "hub",
            OTHER, peer="hub2")
    result = deliver(conn, [federation_pb2.LogItem(origin=ORG, seq=2, hash=b"\x01" * 32)],
                     "hub", OTHER, peer="rogue")
    assert conn.execute("SELECT hash, source FROM entries WHERE seq = 2").fetchone() == (
        items[1].hash, "hub2")
    assert sum(result.rejected.values()) == 1
    entries = log_tx.items_after(conn, ORG, 0, 10)
    held = sealed_tx.for_positions(conn, ORG, 1, 3)
    out, _ = replication_batch(entries, "spoke", "hub", copies_of=lambda o, s: held.get(s, []))
    assert [(i.seq, len(i.sealed)) for i in out] == [(1, 0), (2, 1)]


def test_the_same_copy_repeated_in_an_item_is_checked_once(monkeypatch) -> None:
    """A hop repeating one valid copy 32 times in an item must not buy 32
    signature checks (nor 32 stored rows)."""
    import federation.ingest as ingest

    item = chain(1, {1})[0]
    one = copy_of(item)
    calls = []
    real = ingest.check_copy
    monkeypatch.setattr(ingest, "check_copy", lambda *a, **k: calls.append(1) or real(*a, **k))
    [checked] = check_items([placeholder(item, *([one] * 32))], lambda o: KEYS, [OTHER], 32)
    assert len(checked.copies) == 1
    assert len(calls) == 1


def test_copies_kept_per_position_fit_what_is_passed_on() -> None:
    """A node keeps no more copy bytes for a position than it would send on
    (a share of max_message_bytes): a hostile origin's 32 large copies on every
    position of its log must not cost each direct peer more than the rest pay."""
    item = chain(1, {1})[0]
    many = [copy_of(item, to=X25519PrivateKey.generate()) for _ in range(6)]
    size = len(many[0].sealed) + COPY_OVERHEAD
    [checked] = check_items([placeholder(item, *many)], lambda o: KEYS, [OTHER], 32,
                            max_copy_bytes=3 * size)
    assert len(checked.copies) == 3
    assert dict(checked.dropped) and all("larger than" in why for why, _ in checked.dropped)
    assert sum(n for _, n in checked.dropped) == 3
