"""Identity cards: the one printable line an administrator hands to another.

    fcnode1/CENTER/HOST:PORT/SIGNING_KEY/TLS_SHA256/NAME/TLS_CERT[/SEAL_KEY[/SEAL_SIG]]

SIGNING_KEY is the raw Ed25519 public key and TLS_CERT the DER certificate, both
base64url without padding; TLS_SHA256 is the certificate's fingerprint in hex
(what two administrators read to each other to confirm a card); NAME is
percent-encoded. SEAL_KEY is the raw X25519 public key that sealed copies,
sealed answers and forwarded watch hits for the center are sealed to (HPKE);
SEAL_SIG is the center's signing key's signature over it (node.core.signing:
SEAL_KEY_DOMAIN, center id, seal key), so that whoever hands the card on (an
introducer) cannot pair the center's real signing key with a seal key of its own.
A card with a signature that does not verify is refused. Cards printed before
these fields existed still parse: without SEAL_KEY (nothing can be sealed to that
center), or with SEAL_KEY alone (unsigned: trusted only from an administrator's
own pin, never from an introducer: node.config.peers.Peer.seal_key). A release
before SEAL_SIG refuses a nine-field card as "not an fcnode identity card".
A center rotates its seal key with a SEAL_KEY_ROTATION entry in its own log: that
entry has a position, a card's SEAL_SIG has none, so a card whose seal key an
announcement replaced never overrides the log (node.core.keyhistory.seal_key_in_use).
No field contains '/', spaces or shell metacharacters.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.config.home import check_listen
from node.config.keys import der_to_pem
from node.core.signing import check_seal_key, usable_seal_key
from node.core.types import ValidationError, check_center_id

PREFIX = "fcnode1"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValidationError(f"identity card: {what} is not base64url") from None


class BadSealSignature(ValidationError):
    """A card whose seal key the center's signing key did not sign."""


@dataclass(frozen=True)
class IdentityCard:
    center: str
    address: str
    signing_key: bytes  # raw Ed25519 public key, 32 bytes
    tls_fingerprint: str
    name: str
    tls_cert_der: bytes
    seal_key: bytes = b""  # raw X25519 public key, 32 bytes (b"": an older card)
    # The signing key's signature over (center, seal key); b"": an older card.
    # Checked whenever a card is made (parsed or built): a card object never holds
    # a seal signature that does not verify.
    seal_signature: bytes = b""

    def __post_init__(self) -> None:
        if self.seal_signature:
            if not self.seal_key:
                raise BadSealSignature("identity card: a seal key signature without a seal key")
            why = _seal_key_problem(self.signing_key, self.center, self.seal_key,
                                    self.seal_signature)
            if why:
                raise BadSealSignature(
                    f"identity card for {self.center!r}: {why} (the seal key or the signing "
                    "key was replaced after the center signed the card: never pin it)")

    def line(self) -> str:
        parts = [PREFIX, self.center, self.address, b64e(self.signing_key),
                 self.tls_fingerprint, quote(self.name, safe=""), b64e(self.tls_cert_der)]
        if self.seal_key:
            parts.append(b64e(self.seal_key))
            if self.seal_signature:
                parts.append(b64e(self.seal_signature))
        return "/".join(parts)

    def without_seal_key(self) -> IdentityCard:
        return replace(self, seal_key=b"", seal_signature=b"")

    @property
    def tls_cert_pem(self) -> bytes:
        return der_to_pem(self.tls_cert_der)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.signing_key)


# Pure functions of the card's bytes, so their answers are kept (bounded): every
# node parses each introducer's whole view of ~80 cards at every poll, and a
# signature check and an X25519 agreement per card made that ~150 µs a card.
_seal_key_problem = functools.lru_cache(maxsize=4096)(check_seal_key)


_usable_seal_key = functools.lru_cache(maxsize=4096)(usable_seal_key)


def parse_card(text: str) -> IdentityCard:
    parts = text.strip().split("/")
    if len(parts) not in (7, 8, 9) or parts[0] != PREFIX:
        raise ValidationError("not an fcnode identity card (expected fcnode1/CENTER/ADDRESS/"
                              "KEY/FINGERPRINT/NAME/CERT/SEAL_KEY/SEAL_SIG; print one with "
                              "fcnode identity)")
    _, center, address, key, fingerprint, name, cert = parts[:7]
    seal = b64d(parts[7], "seal key") if len(parts) >= 8 else b""
    if len(parts) >= 8 and len(seal) != 32:
        raise ValidationError("identity card: the seal key must be 32 bytes (X25519)")
    seal_sig = b64d(parts[8], "seal key signature") if len(parts) == 9 else b""
    if len(parts) == 9 and len(seal_sig) != 64:
        raise ValidationError("identity card: the seal key signature must be 64 bytes "
                              "(Ed25519)")
    if seal and not _usable_seal_key(seal):
        raise ValidationError("identity card: the seal key is a low-order X25519 point "
                              "(nothing can be sealed to it)")
    check_center_id(center)
    check_listen(address)
    raw_key = b64d(key, "signing key")
    if len(raw_key) != 32:
        raise ValidationError("identity card: the signing key must be 32 bytes (Ed25519)")
    der = b64d(cert, "certificate")
    if hashlib.sha256(der).hexdigest() != fingerprint.lower():
        raise ValidationError("identity card: the certificate does not match its fingerprint "
                              "(the card was altered or truncated)")
    try:
        der_to_pem(der)
    except ValueError:
        raise ValidationError("identity card: the certificate is not valid DER") from None
    return IdentityCard(center, address, raw_key, fingerprint.lower(), unquote(name), der,
                        seal, seal_sig)
