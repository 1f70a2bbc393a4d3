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
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from node.types import FcnodeError
from node.wire import records_pb2

RECORD_DOMAIN = b"fcnode/record/v1\x00"
QUERY_DOMAIN = b"fcnode/query/v1\x00"
AUDIT_DOMAIN = b"fcnode/audit/v1\x00"


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


def seal_record(key: Ed25519PrivateKey, body: records_pb2.RecordBody,
                signer_key_id: str | None = None) -> records_pb2.Envelope:
    """``signer_key_id``: pass it when sealing many (it costs a hash to derive)."""
    payload = body.SerializeToString(deterministic=True)
    return records_pb2.Envelope(
        payload=payload,
        signature=sign(key, RECORD_DOMAIN, payload),
        key_id=signer_key_id or key_id(key.public_key()),
    )


def seal_query(key: Ed25519PrivateKey, body: bytes) -> tuple[bytes, str]:
    """Sign a serialized QueryBody: (signature, key id)."""
    return sign(key, QUERY_DOMAIN, body), key_id(key.public_key())


def open_query(body: bytes, signature: bytes, signer_key_id: str,
               keys: Mapping[str, Ed25519PublicKey]) -> None:
    public = keys.get(signer_key_id)
    if public is None:
        raise BadSignature("query signed by an unknown key")
    verify(public, QUERY_DOMAIN, body, signature)


def open_record(
    envelope: records_pb2.Envelope, keys: Mapping[str, Ed25519PublicKey]
) -> records_pb2.RecordBody:
    """Verify an envelope against the signer's known keys, then parse it.

    ``keys`` maps key ids to the public keys of the center the envelope claims to
    come from; the caller checks that the parsed body's origin is that center.
    """
    public = keys.get(envelope.key_id)
    if public is None:
        raise BadSignature(f"unknown signing key {envelope.key_id[:16]}")
    verify(public, RECORD_DOMAIN, envelope.payload, envelope.signature)
    body = records_pb2.RecordBody()
    try:
        body.ParseFromString(envelope.payload)
    except DecodeError:
        raise BadSignature("signed payload is not a record body") from None
    return body
