"""Answers (and watch hits) sealed end to end to the requesting center (pure: no I/O).

A query answer that crosses a forwarding hop must not be readable there: the
answering center seals it to the requester's X25519 key (from the requester's
identity card, pinned or introduced) with HPKE (RFC 9180, base mode:
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), then signs the
ciphertext with its Ed25519 key. Base mode does not say who sealed, so the
signature is what makes "center X answered" X's word and not a hop's: a hop
cannot forge, alter or splice another center's answer, only drop or delay it.
The HPKE info (and so the signed bytes) binds requester, query id, answering
center, part number and (when the requester asked for it) how many parts the
center's answer has: a sealed part cannot be replayed into another query or
passed off as another center's, and a hop that drops the tail parts of an
answer cannot make the requester take the rest for the whole. The requester
checks the signature, opens, then verifies every envelope and stub inside
against their origins' keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from node.core.signing import BadSignature, key_id, sign, verify

ANSWER_DOMAIN = b"fcnode/answer/v1\x00"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def answer_info(requester: str, query_id: str, center: str, part: int,
                padded: bool = False, parts: int = 0) -> bytes:
    # A padded part's info says so: flipping the (unsigned) flag breaks the
    # signature and the seal, so no hop can make a requester read it the other way.
    # So does the count of parts (0: not counted, the info of older releases):
    # a hop cannot lower it to hide the parts it dropped.
    fields = [requester, query_id, center, str(part), *(["padded"] if padded else []),
              *([f"of {parts}"] if parts else [])]
    return ANSWER_DOMAIN + "\x00".join(fields).encode()


def seal_answer(key: Ed25519PrivateKey, seal_to: bytes, requester: str, query_id: str,
                center: str, part: int, plaintext: bytes,
                padded: bool = False, parts: int = 0) -> tuple[bytes, bytes, str]:
    """(ciphertext, signature, key id) of one answer part sealed to ``seal_to``
    (the requester's raw X25519 public key). ``padded``: the requester asked for
    padded parts (QueryBody.pad_answers): the hubs an answer crosses then see a
    size bucket (as for watch hits, below), not whether this center matched.
    ``parts``: how many parts this center's answer has (QueryBody.count_parts;
    0: not counted, for a requester of an older release)."""
    if parts and not 0 <= part < parts:
        raise ValueError(f"part {part} of an answer of {parts} parts")
    info = answer_info(requester, query_id, center, part, padded, parts)
    sealed = SUITE.encrypt(pad(plaintext) if padded else plaintext,
                           X25519PublicKey.from_public_bytes(seal_to), info=info)
    return sealed, sign(key, ANSWER_DOMAIN, info + sealed), key_id(key.public_key())


def open_answer(sealed: bytes, signature: bytes, signer_key_id: str,
                keys: Mapping[str, Ed25519PublicKey], privates: Sequence[X25519PrivateKey],
                requester: str, query_id: str, center: str, part: int,
                padded: bool = False, parts: int = 0) -> bytes:
    """Check the answering center's signature, then open: BadSignature if either
    fails (a hop changed a byte, the part number, the count of parts or the padded
    flag, or the part was not sealed for this query)."""
    public = keys.get(signer_key_id)
    if public is None:
        raise BadSignature(f"answer signed by an unknown key {signer_key_id[:16]}")
    if parts and part >= parts:
        raise BadSignature(f"answer part {part} of {parts} parts")
    info = answer_info(requester, query_id, center, part, padded, parts)
    verify(public, ANSWER_DOMAIN, info + sealed, signature)
    plain = _decrypt(sealed, privates, info)
    if plain is None:
        raise BadSignature("sealed answer does not open with this node's key")
    return unpad(plain, "sealed answer") if padded else plain


# -- padding -------------------------------------------------------------------
# What is sealed for hops to carry is padded first: a 4-byte length, the bytes,
# zeros up to a bucket (PAD bytes, or the next power of two above). Unpadded, the
# length of a watch hit told a POINTER (a stub of a few hundred bytes) from a FULL
# hit (stub and envelope), i.e. whether the watcher may read the record, and the
# length of an answer part told a hub (which sees the query) whether a center held
# anything on the entity asked about. More than PAD bytes still shows as larger.
PAD = 4096
_LEN = 4


def pad(plaintext: bytes) -> bytes:
    size = max(PAD, 1 << (len(plaintext) + _LEN - 1).bit_length())
    framed = len(plaintext).to_bytes(_LEN, "big") + plaintext
    return framed + bytes(size - len(framed))


def padded_within(limit: int) -> int:
    """The most bytes whose padding (``pad``) is at most ``limit`` bytes (at least
    PAD). Padding rounds up to a power of two, so a part sized against ``limit``
    alone could come out nearly twice as large: past the message limit."""
    return max(PAD, 1 << (max(limit, 1).bit_length() - 1)) - _LEN


def unpad(padded: bytes, what: str) -> bytes:
    n = int.from_bytes(padded[:_LEN], "big")
    if len(padded) < _LEN or n > len(padded) - _LEN or any(padded[_LEN + n:]):
        raise BadSignature(f"{what} is not padded as sealed")
    return padded[_LEN:_LEN + n]


# -- watch hits for a watcher beyond the answering center's direct peers ----------
# The same construction as a forwarded query's answer, in its own domain, so a
# sealed hit can never be passed off as an answer part (or the other way round).
# Hits are always padded.
HIT_DOMAIN = b"fcnode/watchhit/v1\x00"


def hit_info(watcher: str, watch_id: str, center: str, number: int) -> bytes:
    return HIT_DOMAIN + "\x00".join([watcher, watch_id, center, str(number)]).encode()


def seal_hit(key: Ed25519PrivateKey, seal_to: bytes, watcher: str, watch_id: str,
             center: str, number: int, plaintext: bytes) -> tuple[bytes, bytes, str]:
    """(ciphertext, signature, key id) of one watch hit sealed to ``seal_to`` (the
    watcher's raw X25519 public key): hops towards the watcher see ciphertext."""
    info = hit_info(watcher, watch_id, center, number)
    sealed = SUITE.encrypt(pad(plaintext), X25519PublicKey.from_public_bytes(seal_to),
                           info=info)
    return sealed, sign(key, HIT_DOMAIN, info + sealed), key_id(key.public_key())


def check_hit(sealed: bytes, signature: bytes, signer_key_id: str,
              keys: Mapping[str, Ed25519PublicKey], watcher: str, watch_id: str,
              center: str, number: int) -> None:
    """The answering center's signature over a sealed hit (a hop on the way back
    can check it too, without being able to open it). BadSignature if wrong."""
    public = keys.get(signer_key_id)
    if public is None:
        raise BadSignature(f"watch hit signed by an unknown key {signer_key_id[:16]}")
    verify(public, HIT_DOMAIN, hit_info(watcher, watch_id, center, number) + sealed, signature)


def open_hit(sealed: bytes, signature: bytes, signer_key_id: str,
             keys: Mapping[str, Ed25519PublicKey], privates: Sequence[X25519PrivateKey],
             watcher: str, watch_id: str, center: str, number: int) -> bytes:
    """Check the answering center's signature, then open: BadSignature if either
    fails (a hop changed a byte, or relabelled the hit's watch or center)."""
    check_hit(sealed, signature, signer_key_id, keys, watcher, watch_id, center, number)
    padded = _decrypt(sealed, privates, hit_info(watcher, watch_id, center, number))
    if padded is None:
        raise BadSignature("sealed watch hit does not open with this node's key")
    return unpad(padded, "sealed watch hit")


# -- sealed copies of entries (store-and-forward through hubs) ------------------
#
# A record whose audience names centers reaches the ones behind hubs outside
# that audience as copies the origin sealed at publish, one per named center:
# HPKE (the SUITE above) of the signed Envelope's exact bytes to that center's
# X25519 card key. The origin signs each copy over (origin, seq, entry hash,
# SHA-256 of the ciphertext) with its key valid at that position, so any hop can
# check a copy came from the origin without opening it: a hop can drop copies,
# never add (no origin signature) or alter one (the signature, and inside, the
# envelope's own hash and signature). No recipient is named: a center tries each
# copy with its own key (an X25519 agreement, cheap), so a hub learns how many
# copies a position has and their sizes, never whom the audience names.

SEALED_DOMAIN = b"fcnode/sealed/v1\x00"
# HPKE adds the encapsulated key (32 bytes for X25519) and the AEAD tag (16).
HPKE_OVERHEAD = 48
# What one copy costs in a message beside its ciphertext (signature, key id, framing):
# the bytes of a position's copies, counted the same way when a node sends them on
# and when it keeps them (copy_budget).
COPY_OVERHEAD = 128


def copy_budget(max_message_bytes: int) -> int:
    """Bytes of sealed copies one position may carry, and a node keeps: a quarter
    of a message, so that a position with its copies always fits one."""
    return max_message_bytes // 4


def copy_info(origin: str, seq: int, digest: bytes) -> bytes:
    """The HPKE info of a copy: a copy opens only as this origin's entry at this
    position with this hash (it cannot be passed off as another position's)."""
    return SEALED_DOMAIN + origin.encode() + b"\x00" + str(seq).encode() + b"\x00" + digest


def copy_statement(origin: str, seq: int, digest: bytes, sealed: bytes) -> bytes:
    """What the origin signs for a copy (after the domain): the info and the
    ciphertext's digest."""
    return copy_info(origin, seq, digest)[len(SEALED_DOMAIN):] + hashlib.sha256(sealed).digest()


@dataclass(frozen=True)
class SealedCopy:
    sealed: bytes
    signature: bytes
    key_id: str


class CopyLike(Protocol):
    """A SealedCopy, or its wire form (federation_pb2.SealedCopy)."""

    @property
    def sealed(self) -> bytes: ...
    @property
    def signature(self) -> bytes: ...
    @property
    def key_id(self) -> str: ...


def seal_copy(key: Ed25519PrivateKey, seal_to: bytes, origin: str, seq: int, digest: bytes,
              envelope: bytes) -> SealedCopy:
    """One copy of an entry (``envelope``: the serialized signed Envelope) for the
    center whose raw X25519 public key is ``seal_to``, signed by the origin's
    ``key`` (the one that signed the entry)."""
    sealed = SUITE.encrypt(envelope, X25519PublicKey.from_public_bytes(seal_to),
                           info=copy_info(origin, seq, digest))
    return SealedCopy(sealed, sign(key, SEALED_DOMAIN,
                                   copy_statement(origin, seq, digest, sealed)),
                      key_id(key.public_key()))


def check_copy(copy: CopyLike, keys: Mapping[str, Ed25519PublicKey], origin: str, seq: int,
               digest: bytes, max_bytes: int) -> str:
    """Why a copy must be dropped, or '': too large, or not signed by one of
    ``keys`` (the caller passes only the origin's keys valid at ``seq``) over
    this position and this ciphertext."""
    if len(copy.sealed) > max_bytes:
        return f"sealed copy larger than {max_bytes} bytes"
    public = keys.get(copy.key_id)
    if public is None:
        return "sealed copy signed by a key of no origin key valid at its position"
    try:
        verify(public, SEALED_DOMAIN, copy_statement(origin, seq, digest, copy.sealed),
               copy.signature)
    except BadSignature:
        return "sealed copy: the origin's signature does not verify"
    return ""


def open_copy(copy: CopyLike, privates: Sequence[X25519PrivateKey], origin: str, seq: int,
              digest: bytes) -> bytes | None:
    """The envelope bytes if the copy was sealed to one of ``privates``' public
    keys for this position, else None (another center's copy, or altered)."""
    return _decrypt(copy.sealed, privates, copy_info(origin, seq, digest))


def _decrypt(sealed: bytes, privates: Sequence[X25519PrivateKey], info: bytes) -> bytes | None:
    """Open with the first of ``privates`` that opens it (a center's current seal
    key first, then the ones it rotated away from: what was sealed to them before
    the rotation, copies resting on hubs and answers in flight, still opens)."""
    for private in privates:
        try:
            return SUITE.decrypt(sealed, private, info=info)
        except Exception:  # cryptography raises InvalidTag, ValueError and others
            continue
    return None
