"""Range placeholders (issue 10 item 5): a run of withheld positions travels as one
item and is held as one row; the positions inside are hints with no hash, which
the origin's signed entries fill in; gaps are still told from withholding."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.ingest import check_items, store_batch
from node.core.chain import Held, Incoming, Verdict, classify
from node.core.signing import entry_hash, key_id, seal_record
from node.services.egress import collapse, replication_batch
from node.storage import log as log_tx
from node.storage.db import open_sync
from node.wire import federation_pb2, records_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
ORG = "origin"


def build(n: int, audience: str = "members") -> list[federation_pb2.LogItem]:
    out, prev = [], b""
    for seq in range(1, n + 1):
        body = records_pb2.RecordBody(
            origin=ORG, seq=seq, prev=prev, record_id=f"r{seq}", version=1, created_ms=seq,
            expires_ms=4_000_000_000_000, kind=records_pb2.BULLETIN, title=f"t{seq}",
            policy=records_pb2.AccessPolicy(tlp=2, audience=[audience], discoverability=2,
                                            relay=True))
        env = seal_record(KEY, body)
        prev = entry_hash(env.payload)
        out.append(federation_pb2.LogItem(origin=ORG, seq=seq, hash=prev, envelope=env))
    return out


def bare(item: federation_pb2.LogItem) -> federation_pb2.LogItem:
    return federation_pb2.LogItem(origin=item.origin, seq=item.seq, hash=item.hash)


def span(first: int, last: int, digest: bytes) -> federation_pb2.LogItem:
    return federation_pb2.LogItem(origin=ORG, seq=last, hash=digest, range_first=first)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(open_sync(tmp_path / "n.db", create=True)) as c:
        yield c


def deliver(conn: sqlite3.Connection, peer: str, items: list[federation_pb2.LogItem]):
    checked = check_items(items, lambda o: KEYS if o == ORG else {})
    conn.execute("BEGIN IMMEDIATE")
    result = store_batch(conn, peer, checked, 1, "node")
    conn.execute("COMMIT")
    return result


def rows(conn: sqlite3.Connection) -> list[tuple[int | None, int, bool]]:
    """(first, last, signed) per row of the origin."""
    return [(f, s, bool(g)) for f, s, g in conn.execute(
        "SELECT first_seq, seq, signature IS NOT NULL OR stub IS NOT NULL FROM entries "
        "WHERE origin = ? ORDER BY seq", (ORG,))]


def h(n: int) -> bytes:
    return bytes([n]) * 32


# -- chain.classify ------------------------------------------------------------

def test_range_at_the_head_appends():
    assert classify(Incoming(9, h(1), False, b"", first=3), 2, None, Held(h(2), True)
                    ).verdict is Verdict.APPEND


def test_range_overlapping_the_head_appends_the_rest():
    assert classify(Incoming(9, h(1), False, b"", first=1), 4, None, Held(h(2), True)
                    ).verdict is Verdict.APPEND


def test_range_beyond_the_head_is_a_gap():
    out = classify(Incoming(9, h(1), False, b"", first=4), 2, None, Held(h(2), True))
    assert out.verdict is Verdict.REJECT and "gap" in out.reason


def test_signed_or_inverted_range_rejected():
    assert classify(Incoming(9, h(1), True, b"", first=3), 2, None, None
                    ).verdict is Verdict.REJECT
    assert classify(Incoming(3, h(1), False, b"", first=3), 2, None, None
                    ).verdict is Verdict.REJECT


def test_signed_entry_inside_a_range_is_placed_and_any_prev_links():
    inside = Held(b"", False, False)
    assert classify(Incoming(5, h(5), True, h(4)), 9, inside, inside
                    ).verdict is Verdict.UPGRADE


def test_signed_entry_after_a_range_contradicting_its_last_rewinds():
    out = classify(Incoming(10, h(10), True, h(7)), 9, Held(b"", False, False),
                   Held(h(9), False, False))
    assert out.verdict is Verdict.REWIND  # seq 10 inside a range, 9 known: the link counts
    out = classify(Incoming(10, h(10), True, h(7)), 9, None, Held(h(9), False, False))
    assert out.verdict is Verdict.REWIND


def test_hint_inside_a_range_adds_nothing():
    assert classify(Incoming(5, h(5), False, b""), 9, Held(b"", False, False), None
                    ).verdict is Verdict.DUPLICATE


# -- storage and ingest ----------------------------------------------------------

def test_a_range_is_one_row_and_signed_entries_fill_it(conn) -> None:
    log = build(10)
    deliver(conn, "hub", [log[0], span(2, 9, log[8].hash), log[9]])
    assert rows(conn) == [(None, 1, True), (2, 9, False), (None, 10, True)]
    assert log_tx.hint_rows(conn, ORG) == (1, 8)
    # The origin's entry 5 cuts the range: 2..4 (ending in 5's prev), 5, 6..9.
    deliver(conn, ORG, [log[4]])
    assert rows(conn) == [(None, 1, True), (2, 4, False), (None, 5, True), (6, 9, False),
                          (None, 10, True)]
    assert log_tx.held(conn, ORG, 4) == Held(log[3].hash, False, False)
    assert log_tx.held(conn, ORG, 7) == Held(b"", False, False)
    # Everything from the origin: every position signed, nothing left of the range.
    deliver(conn, ORG, log)
    assert rows(conn) == [(None, s, True) for s in range(1, 11)]
    assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 10


def test_a_stub_inside_a_range_leaves_no_hash_before_it_until_the_entry_comes(conn) -> None:
    from node.core.signing import seal_stub, stub_of

    log = build(10)
    deliver(conn, "hub", [log[0], span(2, 9, log[8].hash)])
    body = records_pb2.RecordBody.FromString(log[4].envelope.payload)
    withheld = federation_pb2.LogItem(origin=ORG, seq=5, hash=log[4].hash,
                                      stub=seal_stub(KEY, stub_of(body, log[4].hash)))
    deliver(conn, ORG, [withheld])  # a stub has no prev: 2..4 end in no hash
    assert rows(conn)[:3] == [(None, 1, True), (2, 4, False), (None, 5, True)]
    assert log_tx.held(conn, ORG, 4) == Held(b"", False, False)
    deliver(conn, ORG, [log[3]])  # entry 4 fills the last position of 2..4
    assert log_tx.held(conn, ORG, 4) == Held(log[3].hash, True, True)
    deliver(conn, ORG, [log[2]])  # and 3, linking to 2 (no hash held there yet)
    deliver(conn, ORG, log)
    assert [r[2] for r in rows(conn)] == [True] * 10
    assert [bytes(r[0]) for r in conn.execute("SELECT hash FROM entries ORDER BY seq")] == [
        i.hash for i in log]


def test_single_placeholders_of_an_older_peer_are_held_as_one_row(conn) -> None:
    log = build(300)
    deliver(conn, "old", [bare(i) for i in log])
    assert rows(conn) == [(1, 300, False)]
    deliver(conn, ORG, log[:1] + log[1:])  # the origin's chain links through the range
    assert rows(conn) == [(None, s, True) for s in range(1, 301)]


def test_a_contradicted_range_end_rewinds_and_charges_its_sender(conn) -> None:
    log = build(6)
    deliver(conn, ORG, log[:1])
    deliver(conn, "mallory", [span(2, 5, h(7))])
    result = deliver(conn, ORG, log[5:6])
    assert result.rewound == {ORG}
    assert rows(conn) == [(None, 1, True)]
    assert conn.execute("SELECT peer FROM rejections WHERE reason LIKE 'placeholder "
                        "contradicted%'").fetchall() == [("mallory",)]
    deliver(conn, ORG, log[1:])
    assert rows(conn) == [(None, s, True) for s in range(1, 7)]


def test_gap_is_told_from_withholding(conn) -> None:
    log = build(6)
    deliver(conn, ORG, log[:1])
    result = deliver(conn, "hub", [span(3, 5, log[4].hash)])
    assert result.rejected and rows(conn) == [(None, 1, True)]
    deliver(conn, "hub", [span(2, 5, log[4].hash)])
    assert rows(conn) == [(None, 1, True), (2, 5, False)]


def test_a_hint_below_the_head_never_adds_a_row(conn) -> None:
    log = build(10)
    deliver(conn, "hub", [log[0], span(2, 9, log[8].hash)])
    before = rows(conn)
    deliver(conn, "mallory", [federation_pb2.LogItem(origin=ORG, seq=s, hash=h(s))
                              for s in range(2, 9)])  # inside: nothing to contradict
    deliver(conn, "mallory", [federation_pb2.LogItem(origin=ORG, seq=9, hash=h(1))])
    deliver(conn, "mallory", [span(2, 9, h(2))])
    assert rows(conn) == before
    assert log_tx.held(conn, ORG, 9) == Held(h(2), False, False)  # the newer hint, in place


def test_items_after_cuts_a_range_at_the_cursor(conn) -> None:
    log = build(10)
    deliver(conn, "hub", [log[0], span(2, 9, log[8].hash)])
    assert [(e.first, e.seq) for e in log_tx.items_after(conn, ORG, 4, 10)] == [(5, 9)]
    assert [(e.first, e.seq) for e in log_tx.items_after(conn, ORG, 8, 10)] == [(None, 9)]
    assert log_tx.first_hint(conn, ORG) == 2


# -- egress ------------------------------------------------------------------------

def test_collapse_joins_bare_runs_and_keeps_signed_items_single() -> None:
    items = [bare(i) for i in build(5, audience="someone")]
    assert [(i.range_first, i.seq) for i in collapse(items)] == [(1, 5)]
    assert collapse(items)[0].hash == items[-1].hash
    recall = federation_pb2.LogItem(origin=ORG, seq=3, hash=h(3))
    recall.stub.stub = b"x"  # a recall (the origin's stub) must travel on its own
    mixed = [bare(i) for i in build(5)]
    mixed[2] = recall
    assert [(i.range_first, i.seq) for i in collapse(mixed)] == [(1, 2), (0, 3), (4, 5)]
    other = federation_pb2.LogItem(origin="other", seq=3, hash=h(3))
    assert len(collapse([*mixed[:2], other])) == 2


def test_replication_batch_sends_ranges_only_to_peers_that_take_them(tmp_path) -> None:
    withheld = build(5, audience="someone")
    with contextlib.closing(open_sync(tmp_path / "o.db", create=True)) as c:
        deliver(c, ORG, withheld)  # held here as evidence (not entitled): hashes only leave
        entries = log_tx.items_after(c, ORG, 0, 10)
    old, _ = replication_batch(entries, "peer", "node")
    new, _ = replication_batch(entries, "peer", "node", ranges=True)
    assert [(i.range_first, i.seq) for i in old] == [(0, s) for s in range(1, 6)]
    assert [(i.range_first, i.seq, i.hash) for i in new] == [(1, 5, withheld[-1].hash)]


def test_a_hint_into_a_hole_never_moves_the_head_hint_down(conn) -> None:
    """Attack: a rewind leaves a hole below the origin's evidence; a peer's hint for
    the hole, while the head is a range of hints, made append_hint pull that head
    row down into the hole (head lost, a row with first_seq > seq)."""
    from node.core.signing import seal_stub, stub_of

    log = build(12)
    deliver(conn, ORG, log[:1])
    deliver(conn, "mallory", [federation_pb2.LogItem(origin=ORG, seq=2, hash=h(9))])
    body = records_pb2.RecordBody.FromString(log[2].envelope.payload)
    deliver(conn, ORG, [federation_pb2.LogItem(origin=ORG, seq=3, hash=log[2].hash,
                                               stub=seal_stub(KEY, stub_of(body, log[2].hash)))])
    deliver(conn, ORG, [log[2]])  # links past the false hint at 2: rewind, 2 is a hole
    assert rows(conn) == [(None, 1, True), (None, 3, True)]
    deliver(conn, "hub", [span(4, 10, log[9].hash)])
    assert rows(conn) == [(None, 1, True), (None, 3, True), (4, 10, False)]
    deliver(conn, "mallory", [federation_pb2.LogItem(origin=ORG, seq=2, hash=log[1].hash)])
    assert rows(conn) == [(None, 1, True), (None, 2, False), (None, 3, True), (4, 10, False)]
    assert log_tx.head(conn, ORG)[0] == 10
