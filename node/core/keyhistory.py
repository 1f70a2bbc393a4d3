"""Key history per origin: which signing key was valid at which log positions.

Pure core (no I/O). DESIGN.md section 3: a center rotates its signing key with a
KEY_ROTATION entry in its own log, signed by the old key (the envelope) and by the
new one (``new_key_signature`` over ``rotation_statement``). Old public keys are
kept forever, like Matrix's ``old_verify_keys``: what they signed before the
rotation stays verifiable, and an entry they sign after it is refused.

A history is a tuple of spans (key, first seq, last seq or None = still current).
The administrator's pin (the card in peers.toml) is the root: learned rotations
only extend a history from the pinned key; a rotation that does not start from the
key current at its position is ignored, so a hand-pinned new card always wins.
``distrust_after`` (peers update after a key was stolen) ends every older key at
the named seq and makes the newly pinned key valid from the next one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.core.signing import key_id, usable_seal_key
from node.wire import records_pb2

ROTATION_DOMAIN = b"fcnode/key-rotation/v1\x00"
ENTRY_ROTATION_DOMAIN = b"fcnode/key-rotation/v2\x00"


def rotation_statement(origin: str, seq: int, old_key: bytes, new_key: bytes) -> bytes:
    """What the new key signs: domain-separated, binding origin, position and both keys."""
    return (ROTATION_DOMAIN + origin.encode() + b"\x00" + seq.to_bytes(8, "big")
            + old_key + new_key)


def entry_statement(body: records_pb2.RecordBody, old_key: bytes) -> bytes:
    """What the new key signs over the whole entry (``new_key_entry_signature``): the
    key it replaces and every field of the body but that signature, so nobody else can
    reuse the new key's word in an entry of their own at that position."""
    bare = records_pb2.RecordBody()
    bare.CopyFrom(body)
    bare.ClearField("new_key_entry_signature")
    return ENTRY_ROTATION_DOMAIN + old_key + bare.SerializeToString(deterministic=True)


def check_vouched_entry(body: records_pb2.RecordBody, old_key: bytes) -> bool:
    """Whether the new key signed this very entry (not only the key statement)."""
    try:
        Ed25519PublicKey.from_public_bytes(body.new_key).verify(
            body.new_key_entry_signature, entry_statement(body, old_key))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class KeySpan:
    key: bytes  # raw Ed25519 public key
    from_seq: int
    until_seq: int | None  # inclusive; None: the current key

    @functools.cached_property
    def key_id(self) -> str:
        # Cached: check_items asks for it once per entry it verifies (a SHA-256).
        return key_id(self.key)

    def covers(self, seq: int) -> bool:
        return self.from_seq <= seq and (self.until_seq is None or seq <= self.until_seq)


@dataclass(frozen=True)
class Rotation:
    """A verified KEY_ROTATION entry: ``old`` signed it at ``seq``; ``new`` signs after."""
    origin: str
    seq: int
    old: bytes
    new: bytes


@dataclass(frozen=True)
class Distrust:
    """``peers update --distrust-after``: ``key`` (a replaced, possibly stolen pinned
    key) and whatever was learned from it sign nothing of the center after ``after``."""
    key: bytes
    after: int


@dataclass(frozen=True)
class KeyHistory:
    spans: tuple[KeySpan, ...]

    @staticmethod
    def pinned(key: bytes) -> KeyHistory:
        return KeyHistory((KeySpan(key, 1, None),))

    @property
    def current(self) -> KeySpan:
        return self.spans[-1]

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every key ever valid (by key id), for signature checks; the caller then
        checks the position with ``signs``."""
        return {s.key_id: Ed25519PublicKey.from_public_bytes(s.key) for s in self.spans}

    def span_of(self, signer_key_id: str) -> KeySpan | None:
        for s in self.spans:
            if s.key_id == signer_key_id:
                return s
        return None

    def signs(self, signer_key_id: str, seq: int) -> str:
        """Why the key may not sign the entry at ``seq``, or ''."""
        span = self.span_of(signer_key_id)
        if span is None:
            return f"unknown signing key {signer_key_id[:16]}"
        if not span.covers(seq):
            if span.until_seq is not None and seq > span.until_seq:
                return (f"signed by a key retired after seq {span.until_seq} "
                        f"(entry seq {seq})")
            return f"signed by a key valid only from seq {span.from_seq} (entry seq {seq})"
        return ""

    def stub_signs(self, signer_key_id: str, seq: int) -> str:
        """Stubs: an origin signs missing stubs of old entries with its current key,
        so a later key may sign a stub of an earlier position; a retired key may
        never sign anything beyond its last seq."""
        span = self.span_of(signer_key_id)
        if span is None:
            return f"unknown signing key {signer_key_id[:16]}"
        if span.until_seq is not None and seq > span.until_seq:
            return f"stub signed by a key retired after seq {span.until_seq} (seq {seq})"
        return ""

    def rotate(self, seq: int, new_key: bytes) -> KeyHistory:
        """The current key signed a rotation at ``seq``: it ends there."""
        cur = self.current
        if seq < cur.from_seq:
            raise ValueError(f"rotation at seq {seq} precedes the current key (seq "
                             f"{cur.from_seq})")
        if any(s.key == new_key for s in self.spans):
            raise ValueError("the new key was used before (a key is never reused)")
        return KeyHistory((*self.spans[:-1], KeySpan(cur.key, cur.from_seq, seq),
                           KeySpan(new_key, seq + 1, None)))

    def distrust_after(self, seq: int, new_key: bytes) -> KeyHistory:
        """A key was stolen: every key held so far signs nothing after ``seq``;
        ``new_key`` (pinned out of band) signs from seq+1 on. If ``new_key`` is the
        current key already (a rotation to it was learned, and the administrator
        pinned the center's current card), it keeps its span: what it signed
        since its rotation stays valid."""
        cur = self.current
        if cur.key == new_key and cur.until_seq is None and cur.from_seq <= seq + 1:
            return self
        kept = []
        for s in self.spans:
            if s.key == new_key or s.from_seq > seq:
                continue
            until = seq if s.until_seq is None else min(s.until_seq, seq)
            kept.append(KeySpan(s.key, s.from_seq, until))
        return KeyHistory((*kept, KeySpan(new_key, seq + 1, None)))


def build_history(pinned_key: bytes, rotations: Iterable[Rotation],
                  distrusts: Sequence[Distrust] = ()) -> KeyHistory:
    """The history for one origin: from the administrator's pinned key, each
    learned rotation in seq order that starts from the key current there. With
    ``distrusts`` (oldest first): the history starts at the first replaced key;
    each distrust ends every key so far at its seq and the key pinned next (the
    next distrust's key, or ``pinned_key``) follows, with what was learned from it.
    Every earlier distrust is kept, so entries a key signed before it was replaced
    stay verifiable however many times the center's key was re-pinned."""
    rotations = sorted(rotations, key=lambda r: r.seq)
    keys = [d.key for d in distrusts] + [pinned_key]
    history = learn(KeyHistory.pinned(keys[0]), rotations)
    for d, next_key in zip(distrusts, keys[1:], strict=True):
        history = learn(history.distrust_after(d.after, next_key), rotations)
    return history


def learn(history: KeyHistory, rotations: Sequence[Rotation]) -> KeyHistory:
    """``history`` with each of ``rotations`` (in seq order, one origin's) that
    starts from the key current at that point; the others (known already, or not
    from the current key) change nothing."""
    for r in rotations:
        if r.old == history.current.key and r.seq >= history.current.from_seq:
            try:
                history = history.rotate(r.seq, r.new)
            except ValueError:
                continue
    return history


def check_rotation(body: records_pb2.RecordBody, signer: bytes) -> str:
    """Why a validly enveloped KEY_ROTATION entry (signed by ``signer``, the key
    valid at its seq) does not rotate the key, or ''."""
    if len(body.new_key) != 32:
        return "key rotation: the new key must be 32 bytes (Ed25519)"
    if body.new_key == signer:
        return "key rotation: the new key is the old one"
    try:
        Ed25519PublicKey.from_public_bytes(body.new_key).verify(
            body.new_key_signature,
            rotation_statement(body.origin, body.seq, signer, body.new_key))
    except (InvalidSignature, ValueError):
        return "key rotation: the new key's signature does not verify"
    return ""


# Announcements never expire: they are what makes older entries verifiable.
ANNOUNCEMENT_LIFETIME_MS = 100 * 365 * 86_400_000


def announcement(origin: str, seq: int, prev: bytes, record_id: str, now_ms: int,
                 author: str, contact: str) -> records_pb2.RecordBody:
    """The common body of KEY_ROTATION and CERT_RENEWAL entries: public keys only,
    so audience ``members``, TLP CLEAR, open and relayable, so that every center
    pinning the origin receives it in full, through hubs too. The caller sets the
    kind and the key fields."""
    return records_pb2.RecordBody(
        origin=origin, seq=seq, prev=prev, record_id=record_id, version=1,
        created_ms=now_ms, expires_ms=now_ms + ANNOUNCEMENT_LIFETIME_MS,
        title="key announcement", author=author, contact=contact,
        policy=records_pb2.AccessPolicy(
            tlp=records_pb2.CLEAR, audience=["members"],
            discoverability=records_pb2.OPEN, relay=True))


@dataclass(frozen=True)
class AnnouncedCert:
    """A TLS certificate an origin announced in a CERT_RENEWAL entry at ``seq``."""
    origin: str
    fingerprint: str
    der: bytes
    not_after_ms: int
    seq: int


def check_cert(body: records_pb2.RecordBody) -> AnnouncedCert | str:
    """The certificate a validly signed CERT_RENEWAL entry announces, or why not.
    It must be a certificate for the origin (SAN = center id), ECDSA or RSA (gRPC's
    TLS refuses Ed25519). Expiry is not checked here: the pinned set drops
    expired certificates by itself."""
    try:
        cert = x509.load_der_x509_certificate(body.new_tls_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except (ValueError, x509.ExtensionNotFound):
        return "certificate renewal: not a DER certificate with a subject alternative name"
    if body.origin not in names:
        return f"certificate renewal: the certificate is not for {body.origin!r}"
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return "certificate renewal: the certificate key must be ECDSA or RSA"
    return AnnouncedCert(body.origin, hashlib.sha256(body.new_tls_cert).hexdigest(),
                         body.new_tls_cert,
                         int(cert.not_valid_after_utc.timestamp() * 1000), body.seq)


# -- seal keys ------------------------------------------------------------------
#
# A center's X25519 seal key (what copies, answers and watch hits for it are
# sealed to) comes first from its card (SEAL_KEY, signed by SEAL_SIG: a statement
# with no position) and then from SEAL_KEY_ROTATION entries in its own log,
# signed by its signing key and ordered by the log: the newest position wins, so
# an older entry or card that an introducer or a hop replays cannot roll the key
# back. A card names a key it held at some time; it counts only while no
# announcement has replaced that key (a card printed after the newest
# announcement this node holds, pinned by hand before the log arrived, still
# wins: nothing has replaced its key yet).


@dataclass(frozen=True)
class SealAnnouncement:
    """A verified SEAL_KEY_ROTATION entry: from ``seq`` on, seal to ``new``
    (``old``: the key it replaces, b"" if the card had none)."""
    origin: str
    seq: int
    old: bytes
    new: bytes


def check_seal(body: records_pb2.RecordBody) -> SealAnnouncement | str:
    """The announcement a validly signed SEAL_KEY_ROTATION entry makes, or why not:
    the new key must be a usable X25519 key (the check cards get), not the one
    it replaces."""
    if not usable_seal_key(body.new_seal_key):
        return ("seal key rotation: the new seal key is not a usable X25519 key (32 "
                "bytes, not a low-order point)")
    if body.old_seal_key and len(body.old_seal_key) != 32:
        return "seal key rotation: the replaced seal key must be 32 bytes (X25519)"
    if body.new_seal_key == body.old_seal_key:
        return "seal key rotation: the new seal key is the old one"
    return SealAnnouncement(body.origin, body.seq, body.old_seal_key, body.new_seal_key)


@dataclass(frozen=True)
class SealKeyInUse:
    key: bytes  # b"": nothing is sealed to the center
    source: str  # "card", or "log seq N"
    seq: int = 0  # the announcement's position (0: the card)


def seal_key_in_use(card_key: bytes, announced: Iterable[SealAnnouncement],
                    after_seq: int = 0, complete: bool = True) -> SealKeyInUse:
    """Which seal key wins for one center: ``card_key`` (the card's key as far as
    it is believed; b"" if none or not believed) against the announcements of its
    log (verified, any order). Only announcements after ``after_seq`` count (the
    latest `peers update --distrust-after`: the re-pinned card is the new root).
    The newest announcement wins, unless the card's key is one no announcement
    replaced (neither an announcement's ``old`` nor an earlier announcement's
    ``new``): then the card is newer than this node's copy of the log.
    ``complete`` False: the oldest announcements were let go (a bound on memory),
    so a card key not among those held may be one they replaced: the log wins
    (a newer card waits for its announcement, never an older one comes back)."""
    ordered = sorted((a for a in announced if a.seq > after_seq), key=lambda a: a.seq)
    if not ordered:
        return SealKeyInUse(card_key, "card")
    newest = ordered[-1]
    replaced = {a.old for a in ordered} | {a.new for a in ordered[:-1]}
    if complete and card_key and card_key != newest.new and card_key not in replaced:
        return SealKeyInUse(card_key, "card")
    return SealKeyInUse(newest.new, f"log seq {newest.seq}", newest.seq)
