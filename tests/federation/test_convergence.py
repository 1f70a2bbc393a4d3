"""Issue 5 property: whatever order, duplication, withholding or replay the
deliveries of an origin's publish/update/retract/purge entries go through, every
node ends in the same state (same versions and states, same content held,
nothing purged ever back)."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.ingest import check_items, store_batch
from node.core.signing import entry_hash, key_id, seal_record
from node.services.egress import collapse
from node.storage import log as log_tx
from node.storage.db import open_sync
from node.wire import federation_pb2, records_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
ORIGIN = "origin"
OPS = st.lists(st.tuples(st.sampled_from(["publish", "update", "retract", "purge"]),
                         st.integers(0, 2)), min_size=1, max_size=12)


def build_log(ops: list[tuple[str, int]]) -> list[federation_pb2.LogItem]:
    """A valid origin log for the ops (impossible ones, like updating a purged
    record, are skipped as the origin would refuse them)."""
    items, prev, seq = [], b"", 0
    state: dict[int, tuple[int, str]] = {}
    for op, r in ops:
        version, st_ = state.get(r, (0, "none"))
        if (op == "publish" and st_ != "none") or (op != "publish" and st_ == "none"):
            continue
        if (op == "update" and st_ != "active") or (op == "retract" and st_ != "active"):
            continue
        if op == "purge" and st_ == "purged":
            continue
        seq += 1
        kind = {"publish": records_pb2.BOLO, "update": records_pb2.BOLO,
                "retract": records_pb2.RETRACTION, "purge": records_pb2.PURGE}[op]
        body = records_pb2.RecordBody(
            origin=ORIGIN, seq=seq, prev=prev, record_id=f"rec{r}", version=version + 1,
            created_ms=seq, expires_ms=4_000_000_000_000, kind=kind,
            title=f"title {r} v{version + 1}" if kind == records_pb2.BOLO else "",
            policy=records_pb2.AccessPolicy(tlp=2, audience=["members"], discoverability=2,
                                            relay=True))
        if kind == records_pb2.BOLO:
            body.entities.add(type="phone", value="5551234567", keys=["phone:5551234567"])
        env = seal_record(KEY, body)
        prev = entry_hash(env.payload)
        items.append(federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=prev, envelope=env))
        state[r] = (version + 1, {"publish": "active", "update": "active",
                                  "retract": "retracted", "purge": "purged"}[op])
    return items


def placeholder(item: federation_pb2.LogItem) -> federation_pb2.LogItem:
    return federation_pb2.LogItem(origin=item.origin, seq=item.seq, hash=item.hash)


def deliver(conn: sqlite3.Connection, peer: str, items: list[federation_pb2.LogItem]) -> None:
    checked = check_items(items, lambda o: KEYS if o == ORIGIN else {})
    conn.execute("BEGIN IMMEDIATE")
    store_batch(conn, peer, checked, 1, "node")
    conn.execute("COMMIT")


def exported(conn: sqlite3.Connection) -> list[federation_pb2.LogItem]:
    """What this node would serve for the origin: entries, or placeholders."""
    out = []
    for e in log_tx.items_after(conn, ORIGIN, 0, 10_000):
        item = federation_pb2.LogItem(origin=e.origin, seq=e.seq, hash=e.hash)
        if e.payload is not None:
            item.envelope.CopyFrom(e.envelope())
        out.append(item)
    return out


def check_spans(conn: sqlite3.Connection) -> None:
    """Gaps are told from withholding: the rows of the origin (single positions and
    ranges of hints) cover 1..head exactly once, and a run of unsigned hints is one
    row, so hint rows are at most one more than the origin-signed positions."""
    spans = conn.execute("SELECT coalesce(first_seq, seq), seq, payload IS NULL AND "
                         "signature IS NULL AND stub IS NULL FROM entries WHERE origin = ? "
                         "ORDER BY seq", (ORIGIN,)).fetchall()
    expect = 1
    for first, last, _ in spans:
        assert first == expect and last >= first, f"rows do not tile the log: {spans}"
        expect = last + 1
    for (_, _, a), (_, _, b) in itertools.pairwise(spans):
        assert not (a and b), f"two hint rows side by side: {spans}"
    hints = sum(1 for *_, hint in spans if hint)
    assert hints <= len(spans) - hints + 1


def snapshot(conn: sqlite3.Connection) -> tuple:
    records = sorted(conn.execute("SELECT record_id, version, state FROM records"))
    content = sorted(conn.execute("SELECT seq FROM entries WHERE payload IS NOT NULL"))
    indexed = conn.execute("SELECT count(*) FROM records_fts").fetchone()[0]
    keys = len(log_tx.indexed_keys(conn))
    return records, content, indexed, keys


plans = st.lists(st.tuples(st.sampled_from(["chunk", "withheld", "ranged", "replay"]),
                           st.integers(1, 4)), max_size=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(OPS, st.lists(plans, min_size=2, max_size=3))
def test_every_delivery_order_converges(ops, replica_plans) -> None:
    log = build_log(ops)
    with tempfile.TemporaryDirectory() as tmp:
        reference = open_sync(Path(tmp) / "ref.db", create=True)
        deliver(reference, "origin", log)
        # What the origin itself holds at the end: purged content is gone there too.
        final = exported(reference)
        want = snapshot(reference)
        for n, plan in enumerate(replica_plans):
            with contextlib.closing(open_sync(Path(tmp) / f"r{n}.db", create=True)) as conn:
                pos = 0
                for step, k in plan:
                    if step == "replay" and pos:
                        # a stale or malicious peer replays an old signed entry
                        deliver(conn, "replayer", [log[(pos + k) % pos]])
                    elif step in ("chunk", "withheld", "ranged") and pos < len(log):
                        chunk = log[pos:pos + k]
                        if step == "withheld":  # a hub that may not hold these
                            chunk = [placeholder(i) for i in chunk]
                        elif step == "ranged":  # the same, sent as one range item
                            chunk = collapse([placeholder(i) for i in chunk])
                        deliver(conn, "hub", chunk)
                        pos += len(chunk)
                # The origin's own stream eventually reaches every node.
                deliver(conn, "origin", final)
                check_spans(conn)
                got = snapshot(conn)
                assert got[0] == want[0], "records (version, state) differ"
                # The same content held as the origin: nothing purged revives, and
                # nothing withheld on the way stays missing once the origin speaks.
                assert got[1] == want[1], "content held differs"
                assert got[2:] == want[2:], "text or entity index differs"
        reference.close()


# ---------------------------------------------------------------------------
# Issue 8, items 3 and 4: whatever a peer without the origin's key sends (fake,
# replayed or recall-carrying placeholders, forged envelopes and stubs, replays
# of real entries), what a node holds is a function of the origin-signed
# entries alone: it ends exactly where the origin's stream alone takes it, and
# keeps content only of versions its own policy lets it hold.

from federation.ingest import entitled  # noqa: E402
from node.core.signing import seal_stub, stub_of  # noqa: E402

MALLORY = Ed25519PrivateKey.generate()
ME = "node"


def build_scoped_log(ops: list[tuple[str, int, bool]]) -> list[tuple[federation_pb2.LogItem,
                                                                       records_pb2.RecordBody]]:
    """Like build_log, with each version's audience either every member or a
    center other than this node (a narrowed version this node may not hold)."""
    out, prev, seq = [], b"", 0
    state: dict[int, tuple[int, str]] = {}
    for op, r, mine in ops:
        version, st_ = state.get(r, (0, "none"))
        if (op == "publish") != (st_ == "none") or (op in ("update", "retract")
                                                    and st_ != "active"):
            continue
        if op == "purge" and st_ == "purged":
            continue
        seq += 1
        kind = {"publish": records_pb2.BOLO, "update": records_pb2.BOLO,
                "retract": records_pb2.RETRACTION, "purge": records_pb2.PURGE}[op]
        body = records_pb2.RecordBody(
            origin=ORIGIN, seq=seq, prev=prev, record_id=f"rec{r}", version=version + 1,
            created_ms=seq, expires_ms=4_000_000_000_000, kind=kind,
            title=f"title {r} v{version + 1}" if kind == records_pb2.BOLO else "",
            contact="desk",
            policy=records_pb2.AccessPolicy(tlp=2, audience=["members"] if mine else ["other"],
                                            discoverability=2, relay=True))
        env = seal_record(KEY, body)
        prev = entry_hash(env.payload)
        out.append((federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=prev, envelope=env),
                    body))
        state[r] = (version + 1, {"publish": "active", "update": "active",
                                  "retract": "retracted", "purge": "purged"}[op])
    return out


def origin_stream(log: list[tuple[federation_pb2.LogItem, records_pb2.RecordBody]]
                  ) -> list[federation_pb2.LogItem]:
    """What the origin sends this node: the entry where it may hold it, else a
    placeholder with the origin's signed stub."""
    out = []
    for item, body in log:
        stub = seal_stub(KEY, stub_of(body, item.hash))
        if entitled(body, ME):
            sent = federation_pb2.LogItem()
            sent.CopyFrom(item)
            if body.version > 1:
                sent.stub.CopyFrom(stub)
        else:
            sent = federation_pb2.LogItem(origin=ORIGIN, seq=item.seq, hash=item.hash, stub=stub)
        out.append(sent)
    return out


def hostile(draw: st.DrawFn, log: list[tuple[federation_pb2.LogItem,
                                             records_pb2.RecordBody]]
            ) -> federation_pb2.LogItem:
    n = len(log)
    seq = draw(st.integers(1, n + 1))
    what = draw(st.sampled_from(["fake", "recall", "replay", "bare", "stub", "forged",
                                 "forged-stub", "range"]))
    real = log[seq - 1] if seq <= n else None
    fake_hash = bytes([draw(st.integers(0, 3))]) * 32
    if what == "range":  # a run of positions as one unsigned item, true or false hash
        first = draw(st.integers(1, n + 1))
        last = first + draw(st.integers(1, 40))
        digest = (log[last - 1][0].hash if last <= n and draw(st.booleans()) else fake_hash)
        return federation_pb2.LogItem(origin=ORIGIN, seq=last, hash=digest, range_first=first)
    if what == "fake" or real is None:
        return federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=fake_hash)
    item, body = real
    if what == "recall":
        return federation_pb2.LogItem(
            origin=ORIGIN, seq=seq, hash=draw(st.sampled_from([fake_hash, item.hash])),
            recall_record_id=f"rec{draw(st.integers(0, 2))}",
            recall_version=draw(st.sampled_from([2, 9, 4294967295])))
    if what == "replay":
        return item
    if what == "bare":
        return federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=item.hash)
    if what == "stub":
        return federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=item.hash,
                                      stub=seal_stub(KEY, stub_of(body, item.hash)))
    lie = records_pb2.RecordBody()
    lie.CopyFrom(body)
    lie.version = 4294967295
    lie.kind = records_pb2.PURGE
    if what == "forged":
        env = seal_record(MALLORY, lie)
        env.key_id = key_id(KEY.public_key())
        return federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=entry_hash(env.payload),
                                      envelope=env)
    forged = seal_stub(MALLORY, stub_of(lie, item.hash))
    forged.key_id = key_id(KEY.public_key())
    return federation_pb2.LogItem(origin=ORIGIN, seq=seq, hash=item.hash, stub=forged)


def deliver_as(conn: sqlite3.Connection, peer: str, items: list[federation_pb2.LogItem]):
    checked = check_items(items, lambda o: KEYS if o == ORIGIN else {})
    conn.execute("BEGIN IMMEDIATE")
    result = store_batch(conn, peer, checked, 1, ME)
    conn.execute("COMMIT")
    return result


def held_state(conn: sqlite3.Connection, n: int) -> tuple:
    records = sorted(conn.execute("SELECT record_id, version, state FROM records"))
    content = sorted(conn.execute("SELECT seq, payload FROM entries WHERE payload IS NOT NULL"))
    hashes = conn.execute("SELECT seq, hash FROM entries WHERE seq <= ? ORDER BY seq",
                          (n,)).fetchall()
    indexed = conn.execute("SELECT count(*) FROM records_fts").fetchone()[0]
    keys = len(log_tx.indexed_keys(conn))
    quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return records, content, hashes, indexed, keys, quarantined


SCOPED_OPS = st.lists(st.tuples(st.sampled_from(["publish", "update", "retract", "purge"]),
                                st.integers(0, 2), st.booleans()), min_size=1, max_size=10)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(SCOPED_OPS, st.data())
def test_what_a_node_holds_is_a_function_of_origin_signed_entries(ops, data) -> None:
    log = build_scoped_log(ops)
    if not log:
        return
    stream = origin_stream(log)
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.closing(open_sync(Path(tmp) / "ref.db", create=True)) as ref:
            deliver_as(ref, ORIGIN, stream)
            want = held_state(ref, len(log))
        # Content held only where this node's own policy says FULL.
        for seq, payload in want[1]:
            body = records_pb2.RecordBody.FromString(payload)
            assert entitled(body, ME), f"content of seq {seq} held without entitlement"
        with contextlib.closing(open_sync(Path(tmp) / "n.db", create=True)) as conn:
            pos = 0
            for _ in range(data.draw(st.integers(0, 8))):
                if data.draw(st.booleans()) and pos < len(stream):
                    k = data.draw(st.integers(1, 3))
                    deliver_as(conn, ORIGIN, stream[pos:pos + k])
                    pos += k
                else:
                    batch = [hostile(data.draw, log) for _ in range(data.draw(st.integers(1, 3)))]
                    deliver_as(conn, "mallory", batch)
                check_spans(conn)
            # The origin's stream reaches the node (links fetch again after a rewind).
            for _ in range(6):
                if not deliver_as(conn, ORIGIN, stream).rewound:
                    break
            got = held_state(conn, len(log))
        assert got[5] == 0, "a peer without the origin's key got the origin quarantined"
        assert got[0] == want[0], "records (version, state) differ"
        assert got[1] == want[1], "content held differs"
        assert got[2] == want[2], "log positions differ"
        assert got[3:5] == want[3:5], "text or entity index differs"


def test_a_hole_left_by_a_rewind_below_signed_evidence_is_filled() -> None:
    """Found by the property above: a false placeholder at seq 1, then the origin's
    real stub and entry at seq 2 (relayed by the same peer). The entry contradicts the
    hint, the rewind drops it and keeps the signed evidence at 2; the origin's seq 1
    must still be taken at the hole (it was refused as a gap: the node never converged)."""
    log = build_scoped_log([("publish", 0, False), ("publish", 1, False)])
    (item1, _), (item2, body2) = log
    stream = origin_stream(log)
    with tempfile.TemporaryDirectory() as tmp, \
            contextlib.closing(open_sync(Path(tmp) / "n.db", create=True)) as conn:
        deliver_as(conn, "mallory", [federation_pb2.LogItem(origin=ORIGIN, seq=1,
                                                            hash=b"\x00" * 32)])
        deliver_as(conn, "mallory", [
            federation_pb2.LogItem(origin=ORIGIN, seq=2, hash=item2.hash,
                                   stub=seal_stub(KEY, stub_of(body2, item2.hash))),
            item2])
        for _ in range(6):
            if not deliver_as(conn, ORIGIN, stream).rewound:
                break
        held = conn.execute("SELECT seq, hash FROM entries WHERE origin = ? ORDER BY seq",
                            (ORIGIN,)).fetchall()
    assert held == [(1, item1.hash), (2, item2.hash)]
