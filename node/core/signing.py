"""Signing and verification as pure functions (no I/O, no storage).

Sign the bytes, ship the bytes: a receiver verifies the exact payload it got and
only then parses it. Each kind of signed object has its own domain prefix so a
signature over one can never be replayed as another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from node.core.types import FcnodeError
from node.wire import records_pb2

RECORD_DOMAIN = b"fcnode/record/v1\x00"
QUERY_DOMAIN = b"fcnode/query/v1\x00"
AUDIT_DOMAIN = b"fcnode/audit/v1\x00"
STUB_DOMAIN = b"fcnode/stub/v1\x00"
INTRODUCTIONS_DOMAIN = b"fcnode/introductions/v1\x00"
STANDING_DOMAIN = b"fcnode/standing/v1\x00"
# Entry format v2: the one signature of an entry is over its serialized EntryStub
# (which holds the payload's SHA-256), so the same signature proves the entry and,
# alone, its content-free stub (a pointer, a recall). v1 entries signed the payload
# under RECORD_DOMAIN and needed a second, separately signed stub.
ENTRY_DOMAIN = b"fcnode/entry/v2\x00"
# A center's word that an X25519 key is its seal key (what sealed copies, sealed
# answers and forwarded watch hits for it are sealed to), carried in its card.
SEAL_KEY_DOMAIN = b"fcnode/seal-key/v1\x00"


class BadSignature(FcnodeError):
    pass


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public: Ed25519PublicKey | bytes) -> str:
    raw = public if isinstance(public, bytes) else raw_public(public)
    return hashlib.sha256(raw).hexdigest()[:32]


def entry_hash(payload: bytes) -> bytes:
    """What `prev` links to: the SHA-256 of an entry's signed payload bytes."""
    return hashlib.sha256(payload).digest()


def sign(key: Ed25519PrivateKey, domain: bytes, data: bytes) -> bytes:
    return key.sign(domain + data)


def verify(public: Ed25519PublicKey, domain: bytes, data: bytes, signature: bytes) -> None:
    try:
        public.verify(signature, domain + data)
    except InvalidSignature:
        raise BadSignature("signature does not verify") from None


def seal_key_statement(center: str, seal_key: bytes) -> bytes:
    """What a center's signing key signs (after SEAL_KEY_DOMAIN) for its seal key:
    the center id, a NUL, the raw 32-byte X25519 key. No position or time: the
    seal key does not change when the signing key rotates (a card printed after a
    rotation carries the new key's signature over the same statement), and a
    statement carrying a seq would prove nothing a holder of a retired key could
    not also claim."""
    return center.encode() + b"\x00" + seal_key


def sign_seal_key(key: Ed25519PrivateKey, center: str, seal_key: bytes) -> bytes:
    return sign(key, SEAL_KEY_DOMAIN, seal_key_statement(center, seal_key))


def check_seal_key(signing_key: bytes, center: str, seal_key: bytes, signature: bytes) -> str:
    """Why ``signature`` is not ``center``'s word (by the raw Ed25519
    ``signing_key``) for ``seal_key``, or ''."""
    try:
        public = Ed25519PublicKey.from_public_bytes(signing_key)
    except ValueError:
        return "the signing key is not an Ed25519 key"
    try:
        verify(public, SEAL_KEY_DOMAIN, seal_key_statement(center, seal_key), signature)
    except BadSignature:
        return "the seal key's signature does not verify with the card's signing key"
    return ""


def usable_seal_key(raw: bytes) -> bool:
    """Whether ``raw`` is a 32-byte X25519 key an agreement with gives a shared
    secret: a low-order point gives none, and sealing to it (HPKE) would fail at
    every origin that names the center in an audience, its publish, update and
    purge included. (Cards, node.config.identity, and seal-key announcements in
    an origin's log, node.core.keyhistory.check_seal, both ask this.)"""
    if len(raw) != 32:
        return False
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return False
    return True


def seal_record(key: Ed25519PrivateKey, body: records_pb2.RecordBody,
                signer_key_id: str | None = None) -> records_pb2.Envelope:
    """A v2 envelope: one signature over the entry's stub.
    ``signer_key_id``: pass it when sealing many (it costs a hash to derive)."""
    payload = body.SerializeToString(deterministic=True)
    return seal_payload(key, body, payload, signer_key_id or key_id(key.public_key()))


def seal_payload(key: Ed25519PrivateKey, body: records_pb2.RecordBody, payload: bytes,
                 signer_key_id: str) -> records_pb2.Envelope:
    """Seal an already serialized body (``payload`` = its deterministic bytes)."""
    stub = stub_of(body, entry_hash(payload)).SerializeToString(deterministic=True)
    return records_pb2.Envelope(payload=payload, signature=key.sign(ENTRY_DOMAIN + stub),
                                key_id=signer_key_id, stub=stub)


def seal_record_v1(key: Ed25519PrivateKey, body: records_pb2.RecordBody) -> records_pb2.Envelope:
    """The format before v2 (signature over the payload): only to make the entries an
    older node would have made (tests, fixtures); nodes publish v2."""
    payload = body.SerializeToString(deterministic=True)
    return records_pb2.Envelope(payload=payload, signature=sign(key, RECORD_DOMAIN, payload),
                                key_id=key_id(key.public_key()))


def envelope_stub(envelope: records_pb2.Envelope) -> records_pb2.SignedStub | None:
    """A v2 entry's signed stub: its own stub bytes and signature (None for v1)."""
    if not envelope.stub:
        return None
    return records_pb2.SignedStub(stub=envelope.stub, signature=envelope.signature,
                                  key_id=envelope.key_id)


def seal_query(key: Ed25519PrivateKey, body: bytes) -> tuple[bytes, str]:
    """Sign a serialized QueryBody: (signature, key id)."""
    return sign(key, QUERY_DOMAIN, body), key_id(key.public_key())


def open_signed(domain: bytes, body: bytes, signature: bytes, signer_key_id: str,
                keys: Mapping[str, Ed25519PublicKey], what: str) -> None:
    """Verify a center's signed message (a query, a standing set, an introduction
    list) against the keys it may sign with now; ``what`` names it in the error."""
    public = keys.get(signer_key_id)
    if public is None:
        raise BadSignature(f"{what} signed by a key not pinned for that center")
    verify(public, domain, body, signature)


def open_query(body: bytes, signature: bytes, signer_key_id: str,
               keys: Mapping[str, Ed25519PublicKey]) -> None:
    open_signed(QUERY_DOMAIN, body, signature, signer_key_id, keys, "query")


def open_record(
    envelope: records_pb2.Envelope, keys: Mapping[str, Ed25519PublicKey]
) -> records_pb2.RecordBody:
    """Verify an envelope against the signer's known keys, then parse it.

    ``keys`` maps key ids to the public keys of the center the envelope claims to
    come from; the caller checks that the parsed body's origin is that center.
    """
    return open_entry(envelope, keys)[0]


def open_entry(
    envelope: records_pb2.Envelope, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[records_pb2.RecordBody, records_pb2.EntryStub | None]:
    """``open_record``, also returning a v2 entry's verified stub (None for v1).

    v2: the signature covers the stub; the stub's hash binds the payload, and the
    body must say what the stub says, so neither can be swapped under the other."""
    public = keys.get(envelope.key_id)
    if public is None:
        raise BadSignature(f"unknown signing key {envelope.key_id[:16]}")
    stub = None
    signed, payload = envelope.stub, envelope.payload  # each read once: a hot path
    if signed:
        verify(public, ENTRY_DOMAIN, signed, envelope.signature)
        stub = _parse_stub(signed)
        if stub.hash != hashlib.sha256(payload).digest():
            raise BadSignature("signed stub does not match the payload")
    else:
        verify(public, RECORD_DOMAIN, payload, envelope.signature)
    body = records_pb2.RecordBody()
    try:
        body.ParseFromString(payload)
    except DecodeError:
        raise BadSignature("signed payload is not a record body") from None
    if stub is not None and (
            stub.origin, stub.seq, stub.record_id, stub.version, stub.kind, stub.contact,
            stub.expires_ms) != (body.origin, body.seq, body.record_id, body.version,
                                 body.kind, body.contact, body.expires_ms):
        raise BadSignature("signed stub disagrees with the payload")
    return body, stub


def stub_of(body: records_pb2.RecordBody, payload_hash: bytes) -> records_pb2.EntryStub:
    """The content-free summary of an entry: position, record, version, kind,
    contact, expiry. Nothing of the title, narrative, labels or entities."""
    return records_pb2.EntryStub(
        origin=body.origin, seq=body.seq, hash=payload_hash, record_id=body.record_id,
        version=body.version, kind=body.kind, contact=body.contact,
        expires_ms=body.expires_ms)


def seal_stub(key: Ed25519PrivateKey, stub: records_pb2.EntryStub,
              signer_key_id: str | None = None) -> records_pb2.SignedStub:
    data = stub.SerializeToString(deterministic=True)
    return records_pb2.SignedStub(stub=data, signature=sign(key, STUB_DOMAIN, data),
                                  key_id=signer_key_id or key_id(key.public_key()))


def open_stub(signed: records_pb2.SignedStub,
              keys: Mapping[str, Ed25519PublicKey]) -> records_pb2.EntryStub:
    """Verify a signed stub against its origin's known keys, then parse it: a v2
    entry's own signature, or a stub signed separately (STUB_DOMAIN) for an entry
    made before v2. The caller checks that the stub's (origin, seq, hash) is the
    position it came with."""
    public = keys.get(signed.key_id)
    if public is None:
        raise BadSignature(f"stub signed by an unknown key {signed.key_id[:16]}")
    try:
        verify(public, ENTRY_DOMAIN, signed.stub, signed.signature)
    except BadSignature:
        verify(public, STUB_DOMAIN, signed.stub, signed.signature)
    return _parse_stub(signed.stub)


def _parse_stub(data: bytes) -> records_pb2.EntryStub:
    stub = records_pb2.EntryStub()
    try:
        stub.ParseFromString(data)
    except DecodeError:
        raise BadSignature("signed stub is not an entry stub") from None
    if len(stub.hash) != 32 or stub.seq < 1 or not stub.origin:
        raise BadSignature("signed stub names no log position")
    return stub


def stub_mismatch(stub: records_pb2.EntryStub, origin: str, seq: int, digest: bytes,
                  body: records_pb2.RecordBody | None = None) -> str:
    """Why a verified stub does not describe this position (and body), or ''."""
    if (stub.origin, stub.seq, stub.hash) != (origin, seq, digest):
        return "stub names another log position"
    if body is not None and (stub.record_id, stub.version, stub.kind, stub.contact) != (
            body.record_id, body.version, body.kind, body.contact):
        return "stub disagrees with the signed entry"
    return ""
