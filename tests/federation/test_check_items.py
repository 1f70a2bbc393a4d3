"""federation.ingest.check_items: verify signatures and self-consistency before storing."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.ingest import check_items
from node.core.signing import entry_hash, key_id, seal_record
from node.wire import federation_pb2, records_pb2

NCRIC = Ed25519PrivateKey.generate()
NYSIC = Ed25519PrivateKey.generate()
PINNED = {
    "ncric": {key_id(NCRIC.public_key()): NCRIC.public_key()},
    "nysic": {key_id(NYSIC.public_key()): NYSIC.public_key()},
}


def keys_of(origin: str):
    return PINNED.get(origin, {})


def body(origin: str = "ncric", seq: int = 1) -> records_pb2.RecordBody:
    return records_pb2.RecordBody(origin=origin, seq=seq, record_id=f"r{seq}", version=1,
                                  kind=records_pb2.TIP, title=f"tip {seq}")


def item(b: records_pb2.RecordBody, key=NCRIC, **over) -> federation_pb2.LogItem:
    env = seal_record(key, b)
    fields = dict(origin=b.origin, seq=b.seq, hash=entry_hash(env.payload), envelope=env)
    fields.update(over)
    return federation_pb2.LogItem(**fields)


def one(it: federation_pb2.LogItem):
    [checked] = check_items([it], keys_of)
    return checked


def test_good_envelope_yields_body():
    b = body(seq=3)
    c = one(item(b))
    assert c.error == ""
    assert c.body == b


def test_placeholder_passes_without_body():
    it = federation_pb2.LogItem(origin="ncric", seq=2, hash=b"\x01" * 32)
    c = one(it)
    assert (c.body, c.error) == (None, "")


def test_unknown_origin():
    b = body(origin="ffc")
    c = one(item(b))
    assert c.body is None
    assert "unknown origin" in c.error
    placeholder = federation_pb2.LogItem(origin="ffc", seq=1, hash=b"\x00" * 32)
    assert "unknown origin" in one(placeholder).error


def test_bad_signature():
    it = item(body())
    it.envelope.signature = bytes(64)
    c = one(it)
    assert c.body is None
    assert c.error.startswith("bad signature")


def test_signed_by_another_pinned_center_is_refused():
    # nysic's key is pinned, but not for origin ncric.
    it = item(body("ncric"), key=NYSIC)
    c = one(it)
    assert c.body is None
    assert "bad signature" in c.error


def test_origin_mismatch_with_item():
    # ncric signs a body that says it is ncric's, but the log item claims nysic's log:
    # nysic's keys do not verify it.
    b = body("ncric")
    c = one(item(b, origin="nysic"))
    assert c.body is None
    assert c.error
    # Signed by the claimed center's own key, but the body names another origin.
    c = one(item(body("ncric"), key=NYSIC, origin="nysic"))
    assert c.body is None
    assert "origin/seq differ" in c.error


def test_seq_mismatch_with_item():
    c = one(item(body(seq=4), seq=5))
    assert c.body is None
    assert "origin/seq differ" in c.error


def test_hash_mismatch():
    c = one(item(body(), hash=b"\x00" * 32))
    assert c.body is None
    assert "hash does not match" in c.error


def test_batch_keeps_order_and_isolates_failures():
    good1, good2 = item(body(seq=1)), item(body(seq=3))
    bad = item(body(seq=2), hash=b"\x00" * 32)
    out = check_items([good1, bad, good2], keys_of)
    assert [c.item for c in out] == [good1, bad, good2]
    assert [bool(c.error) for c in out] == [False, True, False]
    assert out[0].body.seq == 1
    assert out[2].body.seq == 3


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2**32), st.data())
def test_prop_any_tampering_yields_error_never_body(seq, data):
    it = item(body(seq=seq))
    what = data.draw(st.sampled_from(["payload", "signature", "hash", "seq", "origin"]))
    if what in ("payload", "signature"):
        raw = bytearray(getattr(it.envelope, what))
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        setattr(it.envelope, what, bytes(raw))
    elif what == "hash":
        raw = bytearray(it.hash)
        raw[data.draw(st.integers(0, 31))] ^= 0xFF
        it.hash = bytes(raw)
    elif what == "seq":
        it.seq = seq + data.draw(st.integers(1, 100))
    else:
        it.origin = data.draw(st.sampled_from(["nysic", "ffc"]))
    c = one(it)
    assert c.body is None
    assert c.error


def test_ingest_result_add_folds_every_field() -> None:
    """A catch-up stored in parts (Database.run_steps) reports the sum of its parts:
    a field that add() forgets is lost for every multi-part batch (the sealed-copy
    counters were, after two branches met)."""
    import dataclasses
    from collections import Counter

    from federation.ingest import IngestResult

    part = IngestResult()
    for f in dataclasses.fields(IngestResult):
        value = getattr(part, f.name)
        if isinstance(value, bool):
            setattr(part, f.name, True)
        elif isinstance(value, int):
            setattr(part, f.name, 3)
        elif isinstance(value, Counter):
            value["x"] = 2
        elif isinstance(value, dict):
            value["o"] = 5
        elif isinstance(value, (list, set)):
            getattr(value, "append", getattr(value, "add", None))("o")
    total = IngestResult()
    total.add(part)
    empty = IngestResult()
    missed = [f.name for f in dataclasses.fields(IngestResult)
              if getattr(total, f.name) == getattr(empty, f.name)]
    assert not missed, f"IngestResult.add does not fold {missed}"


def test_own_decision_taken_where_verified_and_only_for_that_center():
    """check_items takes this node's own policy decision (FULL or not) off the
    storing thread; store_batch uses it only for the center it was taken for."""
    from federation.ingest import entitled

    shared = body(seq=1)
    shared.policy.tlp = records_pb2.GREEN
    shared.policy.audience.append("nysic")
    for center, full in (("nysic", True), ("ffc", False)):
        [c] = check_items([item(shared)], keys_of, own_center=center)
        assert c.own_decision == (center, full)
        assert c.entitled(center) is full is entitled(shared, center)
    [c] = check_items([item(shared)], keys_of, own_center="nysic")
    # A decision taken for another center says nothing about this one.
    assert c.entitled("ffc") is False
    [c] = check_items([item(shared)], keys_of)  # not taken: decided on demand
    assert c.own_decision is None and c.entitled("nysic") is True
