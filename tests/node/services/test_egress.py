"""node.services.egress.replication_batch: only FULL records leave, and each one is logged."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.policy import decide
from node.core.record import body_policy
from node.core.signing import entry_hash, seal_record
from node.core.types import MEMBERS, Decision, Requester
from node.services.egress import replication_batch
from node.storage.log import StoredEntry
from node.wire import records_pb2

KEY = Ed25519PrivateKey.generate()
CENTERS = ("ncric", "nysic", "ffc", "wsic")


def stored(seq: int, *, origin: str = "ncric", audience=(), tlp: int = 3, relay: bool = True,
           discoverability: int = 2, require=()) -> StoredEntry:
    body = records_pb2.RecordBody(
        origin=origin, seq=seq, record_id=f"{origin}-r{seq}", version=seq % 3 + 1,
        kind=records_pb2.SAR, title=f"record {seq}",
        policy=records_pb2.AccessPolicy(tlp=tlp, audience=sorted(audience),
                                        required_attributes=sorted(require),
                                        discoverability=discoverability, relay=relay),
    )
    env = seal_record(KEY, body)
    return StoredEntry(origin, seq, entry_hash(env.payload), env.payload, env.signature,
                       env.key_id)


def placeholder(seq: int, origin: str = "ncric") -> StoredEntry:
    return StoredEntry(origin, seq, bytes([seq % 256]) * 32, None, None, None)


def test_full_records_carry_envelope_and_row_others_are_placeholders():
    entries = [
        stored(1, audience=["nysic"]),
        stored(2, audience=["ffc"]),                      # nysic not in audience
        stored(3, audience=[]),                           # empty audience: origin only
        stored(4, audience=[MEMBERS]),
        stored(5, audience=["nysic"], tlp=5, require=["user:nysic/alice"]),  # RED, named
        stored(6, audience=["ffc"], discoverability=1),   # open, but nysic outside audience
        placeholder(7),
    ]
    items, rows = replication_batch(entries, "nysic", "ncric")
    assert [(i.origin, i.seq, i.hash) for i in items] == [
        (e.origin, e.seq, e.hash) for e in entries]
    sent = {i.seq for i in items if i.HasField("envelope")}
    assert sent == {1, 4, 5}
    for i in items:
        if i.HasField("envelope"):
            e = entries[i.seq - 1]
            assert i.envelope.payload == e.payload
            assert i.envelope.signature == e.signature
            assert i.envelope.key_id == e.key_id
    assert [(r.seq, r.center, r.user, r.channel, r.decision) for r in rows] == [
        (1, "nysic", None, "replication", "FULL"),
        (4, "nysic", None, "replication", "FULL"),
        (5, "nysic", None, "replication", "FULL"),
    ]
    assert rows[0].record_id == "ncric-r1"
    assert rows[1].version == entries[3].seq % 3 + 1


def test_relay_node_withholds_non_relayable_records():
    entries = [
        stored(1, audience=["nysic", "ffc"]),
        stored(2, audience=["nysic", "ffc"], tlp=4),          # AMBER+STRICT
        stored(3, audience=["nysic", "ffc"], relay=False),
        stored(4, audience=["nysic", "ffc"], tlp=5, require=["user:ffc/bob"]),
    ]
    # nysic holds ncric's records and serves ffc.
    items, rows = replication_batch(entries, "ffc", "nysic")
    assert [i.HasField("envelope") for i in items] == [True, False, False, False]
    assert [r.seq for r in rows] == [1]


def test_corrupt_stored_payload_never_leaves():
    good = stored(1, audience=["nysic"])
    corrupt = StoredEntry("ncric", 2, b"\x02" * 32, b"\xff\xff\xff", b"\x00" * 64, good.key_id)
    items, rows = replication_batch([good, corrupt], "nysic", "ncric")
    assert [i.HasField("envelope") for i in items] == [True, False]
    assert (items[1].seq, items[1].hash) == (2, b"\x02" * 32)
    assert [r.seq for r in rows] == [1]


def test_empty_batch():
    assert replication_batch([], "nysic", "ncric") == ([], [])


policy_kw = st.fixed_dictionaries({
    "audience": st.lists(st.sampled_from((*CENTERS, MEMBERS)), max_size=3, unique=True),
    "tlp": st.integers(1, 5),
    "relay": st.booleans(),
    "discoverability": st.integers(1, 3),
    "require": st.lists(st.sampled_from(["sworn_le", "user:nysic/alice"]), unique=True),
})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), policy_kw), min_size=1, max_size=8),
       st.sampled_from(CENTERS), st.sampled_from(CENTERS), st.sampled_from(CENTERS))
def test_prop_nothing_leaves_unless_full(kws, origin, peer, evaluator):
    entries = [placeholder(seq, origin) if kw is None else stored(seq, origin=origin, **kw)
               for seq, kw in enumerate(kws, start=1)]
    items, rows = replication_batch(entries, peer, evaluator)
    assert len(items) == len(entries)
    row_seqs = [r.seq for r in rows]
    for e, it in zip(entries, items, strict=True):
        assert (it.origin, it.seq, it.hash) == (e.origin, e.seq, e.hash)
        if e.payload is None:
            full = False
        else:
            b = records_pb2.RecordBody.FromString(e.payload)
            # Back to its origin (own-log recovery) is relayed to no one: FULL.
            full = peer == origin or decide(body_policy(b), origin, evaluator,
                                            Requester(peer)) is Decision.FULL
            if full:
                p = body_policy(b)
                assert peer == origin or MEMBERS in p.audience or peer in p.audience
        assert it.HasField("envelope") is full
        assert (e.seq in row_seqs) is full
    assert all(r.center == peer and r.user is None and r.origin == origin for r in rows)


def _with_stub(seq: int, version: int, audience) -> StoredEntry:
    from node.core.signing import seal_stub, stub_of
    body = records_pb2.RecordBody(
        origin="ncric", seq=seq, record_id="rec", version=version, kind=records_pb2.SAR,
        title="secret", policy=records_pb2.AccessPolicy(tlp=3, audience=list(audience),
                                                         discoverability=2, relay=True))
    env = seal_record(KEY, body)
    stub = seal_stub(KEY, stub_of(body, entry_hash(env.payload)))
    return StoredEntry("ncric", seq, entry_hash(env.payload), env.payload, env.signature,
                       env.key_id, "rec", version, stub.stub, stub.signature, stub.key_id)


def test_a_recall_is_the_origins_stub_and_never_a_hop_assertion():
    narrowed = _with_stub(2, 2, ["ffc"])  # nysic was sent version 1 before
    items, rows = replication_batch([narrowed], "nysic", "hub", lambda o, r: 1)
    assert not items[0].HasField("envelope")
    assert items[0].stub.stub == narrowed.stub and items[0].stub.signature == (
        narrowed.stub_signature)
    assert not items[0].recall_record_id and not items[0].recall_version  # deprecated
    assert [(r.decision, r.version) for r in rows] == [("RECALL", 2)]
    again, rows = replication_batch([narrowed], "nysic", "hub", lambda o, r: 1,
                                    recalled_before=lambda o, r: 2)
    assert again[0].HasField("stub") and rows == []  # re-sent, not a new dissemination
    # Without the origin's stub (an older database) there is no recall at all.
    bare = StoredEntry(*[getattr(narrowed, f) for f in ("origin", "seq", "hash", "payload",
                                                          "signature", "key_id")])
    items, rows = replication_batch([bare], "nysic", "hub", lambda o, r: 1)
    assert not items[0].HasField("stub") and rows == []


def test_a_version_the_peer_already_got_is_resent_without_a_new_row():
    v2 = _with_stub(2, 2, ["nysic"])
    items, rows = replication_batch([v2], "nysic", "hub", lambda o, r: 2)
    assert items[0].HasField("envelope") and items[0].HasField("stub") and rows == []
    items, rows = replication_batch([v2], "nysic", "hub", lambda o, r: 1)
    assert [(r.decision, r.version) for r in rows] == [("FULL", 2)]
