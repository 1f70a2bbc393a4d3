"""node.signing: sign the bytes, ship the bytes; verify before parse."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.signing import (
    AUDIT_DOMAIN,
    QUERY_DOMAIN,
    RECORD_DOMAIN,
    BadSignature,
    entry_hash,
    key_id,
    open_record,
    raw_public,
    seal_record,
    sign,
    verify,
)
from node.wire import records_pb2

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}


def body(seq: int = 1, title: str = "BOLO: grey van") -> records_pb2.RecordBody:
    return records_pb2.RecordBody(
        origin="ncric", seq=seq, record_id="r1", version=1, kind=records_pb2.BOLO,
        title=title, narrative="Seen near the port.", labels=["vehicle"],
        policy=records_pb2.AccessPolicy(tlp=3, audience=["nysic"], discoverability=2,
                                        relay=True),
    )


def test_seal_open_round_trip():
    b = body()
    env = seal_record(KEY, b)
    assert env.key_id == key_id(KEY.public_key())
    assert len(env.signature) == 64
    assert open_record(env, KEYS) == b


def test_key_id_is_hex_prefix_of_sha256_of_raw_key():
    raw = raw_public(KEY.public_key())
    assert len(raw) == 32
    assert key_id(raw) == key_id(KEY.public_key()) == hashlib.sha256(raw).hexdigest()[:32]


def test_entry_hash_is_sha256_of_payload():
    env = seal_record(KEY, body())
    assert entry_hash(env.payload) == hashlib.sha256(env.payload).digest()


def test_flipped_payload_bit_refused():
    env = seal_record(KEY, body())
    payload = bytearray(env.payload)
    payload[len(payload) // 2] ^= 0x01
    env.payload = bytes(payload)
    with pytest.raises(BadSignature):
        open_record(env, KEYS)


def test_unknown_key_id_refused():
    env = seal_record(KEY, body())
    env.key_id = "0" * 32
    with pytest.raises(BadSignature, match="unknown signing key"):
        open_record(env, KEYS)


def test_signature_from_another_key_refused():
    env = seal_record(OTHER, body())
    env.key_id = key_id(KEY.public_key())  # claims to be KEY
    with pytest.raises(BadSignature, match="does not verify"):
        open_record(env, KEYS)
    # And with its true key id, OTHER is simply not a key of this center.
    with pytest.raises(BadSignature, match="unknown signing key"):
        open_record(seal_record(OTHER, body()), KEYS)


def test_record_signature_is_not_a_query_signature():
    data = body().SerializeToString(deterministic=True)
    sig = sign(KEY, RECORD_DOMAIN, data)
    verify(KEY.public_key(), RECORD_DOMAIN, data, sig)
    for domain in (QUERY_DOMAIN, AUDIT_DOMAIN):
        with pytest.raises(BadSignature):
            verify(KEY.public_key(), domain, data, sig)


def test_query_signature_does_not_open_as_record():
    env = seal_record(KEY, body())
    env.signature = sign(KEY, QUERY_DOMAIN, env.payload)
    with pytest.raises(BadSignature):
        open_record(env, KEYS)


def test_domains_are_distinct_and_terminated():
    from node.core.signing import ENTRY_DOMAIN, STANDING_DOMAIN, STUB_DOMAIN
    domains = {RECORD_DOMAIN, QUERY_DOMAIN, AUDIT_DOMAIN, STUB_DOMAIN, STANDING_DOMAIN,
               ENTRY_DOMAIN}
    assert len(domains) == 6
    assert all(d.endswith(b"\x00") for d in domains)


def test_signed_garbage_is_not_a_record_body():
    payload = b"\xff\xff\xff\xff"
    env = records_pb2.Envelope(payload=payload, signature=sign(KEY, RECORD_DOMAIN, payload),
                               key_id=key_id(KEY.public_key()))
    with pytest.raises(BadSignature, match="not a record body"):
        open_record(env, KEYS)


ENV = seal_record(KEY, body())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_prop_any_bit_flip_is_refused(data):
    part = data.draw(st.sampled_from(["payload", "signature", "stub"]))
    raw = bytearray(getattr(ENV, part))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    env = records_pb2.Envelope()
    env.CopyFrom(ENV)
    setattr(env, part, bytes(raw))
    with pytest.raises(BadSignature):
        open_record(env, KEYS)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2**40), st.text(max_size=200))
def test_prop_round_trip(seq, title):
    b = body(seq, title)
    assert open_record(seal_record(KEY, b), KEYS) == b


def test_stub_round_trip_is_content_free():
    from node.core.signing import STUB_DOMAIN, open_stub, seal_stub, stub_of
    b = body()
    b.contact = "ncric watch desk"
    env = seal_record(KEY, b)
    stub = stub_of(b, entry_hash(env.payload))
    signed = seal_stub(KEY, stub)
    assert open_stub(signed, KEYS) == stub
    assert (stub.origin, stub.seq, stub.record_id, stub.contact) == (
        "ncric", 1, "r1", "ncric watch desk")
    for secret in (b"grey van", b"Seen near", b"vehicle"):
        assert secret not in signed.stub
    # A stub signature is not a record signature (domain separation), and back.
    with pytest.raises(BadSignature):
        verify(KEY.public_key(), RECORD_DOMAIN, signed.stub, signed.signature)
    verify(KEY.public_key(), STUB_DOMAIN, signed.stub, signed.signature)


def test_stub_with_unknown_key_or_bad_bytes_refused():
    from node.core.signing import open_stub, seal_stub, stub_of
    signed = seal_stub(KEY, stub_of(body(), b"\x01" * 32))
    with pytest.raises(BadSignature, match="unknown key"):
        open_stub(signed, {})
    forged = seal_stub(OTHER, stub_of(body(), b"\x01" * 32))
    forged.key_id = signed.key_id
    with pytest.raises(BadSignature):
        open_stub(forged, KEYS)
    bad = records_pb2.SignedStub(stub=b"\xff\xff", signature=sign(KEY, b"fcnode/stub/v1\x00",
                                                                   b"\xff\xff"),
                                 key_id=signed.key_id)
    with pytest.raises(BadSignature):
        open_stub(bad, KEYS)


# Entry format v2: one signature per entry, over its stub (which holds the payload hash).

def _v2(b: records_pb2.RecordBody | None = None) -> records_pb2.Envelope:
    return seal_record(KEY, b or body())


def test_v2_entry_has_one_signature_that_is_also_its_stub():
    from node.core.signing import ENTRY_DOMAIN, envelope_stub, open_entry, open_stub
    b = body()
    b.contact = "ncric watch desk"
    env = _v2(b)
    assert env.stub
    verify(KEY.public_key(), ENTRY_DOMAIN, env.stub, env.signature)
    opened, stub = open_entry(env, KEYS)
    assert opened == b and stub is not None
    assert (stub.origin, stub.seq, stub.hash, stub.record_id, stub.contact) == (
        "ncric", 1, entry_hash(env.payload), "r1", "ncric watch desk")
    signed = envelope_stub(env)
    assert signed is not None and signed.signature == env.signature
    assert open_stub(signed, KEYS) == stub  # the entry's own signature proves its stub
    for secret in (b"grey van", b"Seen near", b"vehicle"):
        assert secret not in env.stub


def test_v2_changed_payload_refused():
    env = _v2()
    other = body(title="BOLO: red car")
    env.payload = other.SerializeToString(deterministic=True)
    with pytest.raises(BadSignature, match="does not match the payload"):
        open_record(env, KEYS)


def test_v2_changed_stub_refused():
    from node.core.signing import stub_of
    env = _v2()
    b = body()
    b.contact = "subject is clear"
    env.stub = stub_of(b, entry_hash(env.payload)).SerializeToString(deterministic=True)
    with pytest.raises(BadSignature, match="does not verify"):
        open_record(env, KEYS)


@pytest.mark.parametrize("field, value", [
    ("origin", "nysic"), ("seq", 7), ("record_id", "r9"), ("version", 2),
    ("kind", records_pb2.SAR), ("contact", "subject is clear"), ("expires_ms", 5)])
def test_v2_stub_body_mismatch_refused(field, value):
    """The origin's key signed a stub that disagrees with the body it ships with
    (a buggy or hostile signer): refused, whichever field differs."""
    from node.core.signing import ENTRY_DOMAIN, stub_of
    b = body()
    payload = b.SerializeToString(deterministic=True)
    stub = stub_of(b, entry_hash(payload))
    setattr(stub, field, value)
    data = stub.SerializeToString(deterministic=True)
    env = records_pb2.Envelope(payload=payload, signature=sign(KEY, ENTRY_DOMAIN, data),
                               key_id=key_id(KEY.public_key()), stub=data)
    with pytest.raises(BadSignature, match="disagrees"):
        open_record(env, KEYS)


def test_v2_signature_is_not_a_v1_record_signature_and_back():
    from node.core.signing import seal_record_v1
    env = _v2()
    v1 = records_pb2.Envelope(payload=env.payload, signature=env.signature, key_id=env.key_id)
    with pytest.raises(BadSignature):
        open_record(v1, KEYS)  # stub dropped: the v2 signature is not over the payload
    old = seal_record_v1(KEY, body())
    old.stub = env.stub  # a v1 signature offered as a v2 one
    with pytest.raises(BadSignature):
        open_record(old, KEYS)


def test_v1_entries_still_verify():
    from node.core.signing import open_entry, seal_record_v1
    b = body()
    env = seal_record_v1(KEY, b)
    assert not env.stub
    verify(KEY.public_key(), RECORD_DOMAIN, env.payload, env.signature)
    assert open_entry(env, KEYS) == (b, None)


# -- a center's word for its seal key (the card's SEAL_SIG) ----------------------

def _seal_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


def test_a_seal_key_statement_verifies_only_for_its_key_center_and_seal_key() -> None:
    from node.core.signing import SEAL_KEY_DOMAIN, check_seal_key, seal_key_statement, sign_seal_key

    seal, other_seal = _seal_key(), _seal_key()
    signing = raw_public(KEY.public_key())
    sig = sign_seal_key(KEY, "nysic", seal)
    assert check_seal_key(signing, "nysic", seal, sig) == ""
    # exact bytes: domain, center id, NUL, the raw seal key
    assert seal_key_statement("nysic", seal) == b"nysic\x00" + seal
    KEY.public_key().verify(sig, SEAL_KEY_DOMAIN + b"nysic\x00" + seal)
    # another center's key (an introducer signing for the center), another center
    # id, a swapped seal key, a flipped bit: each refused, with a reason
    assert check_seal_key(raw_public(OTHER.public_key()), "nysic", seal, sig)
    assert check_seal_key(signing, "ncric", seal, sig)
    assert check_seal_key(signing, "nysic", other_seal, sig)
    assert check_seal_key(signing, "nysic", seal, bytes([sig[0] ^ 1]) + sig[1:])
    # the same signature bytes under another domain (a record, a query) do not count
    assert check_seal_key(signing, "nysic", seal,
                          sign(KEY, QUERY_DOMAIN, seal_key_statement("nysic", seal)))
