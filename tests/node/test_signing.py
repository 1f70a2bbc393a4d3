"""node.signing: sign the bytes, ship the bytes; verify before parse."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from node.signing import (
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
    domains = {RECORD_DOMAIN, QUERY_DOMAIN, AUDIT_DOMAIN}
    assert len(domains) == 3
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
    part = data.draw(st.sampled_from(["payload", "signature"]))
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
    from node.signing import STUB_DOMAIN, open_stub, seal_stub, stub_of
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
    from node.signing import open_stub, seal_stub, stub_of
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
