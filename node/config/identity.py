"""Identity cards: the one printable line an administrator hands to another.

    fcnode1/CENTER/HOST:PORT/SIGNING_KEY/TLS_SHA256/NAME/TLS_CERT[/SEAL_KEY]

SIGNING_KEY is the raw Ed25519 public key and TLS_CERT the DER certificate, both
base64url without padding; TLS_SHA256 is the certificate's fingerprint in hex
(what two administrators read to each other to confirm a card); NAME is
percent-encoded. SEAL_KEY (optional: cards made before it existed still parse)
is the raw X25519 public key that query answers crossing hubs are sealed to
(HPKE). No field contains '/', spaces or shell metacharacters.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from node.config.home import check_listen
from node.config.keys import der_to_pem
from node.core.types import ValidationError, check_center_id

PREFIX = "fcnode1"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValidationError(f"identity card: {what} is not base64url") from None


@dataclass(frozen=True)
class IdentityCard:
    center: str
    address: str
    signing_key: bytes  # raw Ed25519 public key, 32 bytes
    tls_fingerprint: str
    name: str
    tls_cert_der: bytes
    seal_key: bytes = b""  # raw X25519 public key, 32 bytes (b"": an older card)

    def line(self) -> str:
        parts = [PREFIX, self.center, self.address, b64e(self.signing_key),
                 self.tls_fingerprint, quote(self.name, safe=""), b64e(self.tls_cert_der)]
        return "/".join(parts + ([b64e(self.seal_key)] if self.seal_key else []))

    @property
    def tls_cert_pem(self) -> bytes:
        return der_to_pem(self.tls_cert_der)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.signing_key)


def _usable_seal_key(raw: bytes) -> bool:
    """Whether an agreement with ``raw`` gives a shared secret: a low-order point
    gives none, and sealing to it (HPKE) would fail at every origin that names
    the center in an audience, its publish, update and purge included."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return False
    return True


def parse_card(text: str) -> IdentityCard:
    parts = text.strip().split("/")
    if len(parts) not in (7, 8) or parts[0] != PREFIX:
        raise ValidationError("not an fcnode identity card (expected fcnode1/CENTER/ADDRESS/"
                              "KEY/FINGERPRINT/NAME/CERT; print one with fcnode identity)")
    _, center, address, key, fingerprint, name, cert = parts[:7]
    seal = b64d(parts[7], "seal key") if len(parts) == 8 else b""
    if len(parts) == 8 and len(seal) != 32:
        raise ValidationError("identity card: the seal key must be 32 bytes (X25519)")
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
                        seal)
