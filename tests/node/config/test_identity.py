"""node.identity: the one-line identity card round-trips, and an altered card is refused."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config.identity import IdentityCard, b64e, parse_card
from node.core.signing import raw_public
from node.core.types import ValidationError


def self_signed_der(center: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, center)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(center)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


SIGNING = Ed25519PrivateKey.generate()
DER = self_signed_der("nysic")


def card(name: str = "New York State Intelligence Center", **kw) -> IdentityCard:
    args = dict(center="nysic", address="10.0.0.2:7701",
                signing_key=raw_public(SIGNING.public_key()),
                tls_fingerprint=hashlib.sha256(DER).hexdigest(), name=name, tls_cert_der=DER)
    args.update(kw)
    return IdentityCard(**args)


def fields(line: str) -> list[str]:
    return line.split("/")


def test_card_line_round_trips():
    c = card()
    line = c.line()
    assert line.startswith("fcnode1/nysic/10.0.0.2:7701/")
    assert " " not in line
    assert parse_card(line) == c
    assert parse_card(f"  {line}\n") == c


def test_card_gives_back_keys():
    c = parse_card(card().line())
    assert raw_public(c.public_key()) == raw_public(SIGNING.public_key())
    assert x509.load_pem_x509_certificate(c.tls_cert_pem).public_bytes(
        serialization.Encoding.DER) == DER


def test_uppercase_fingerprint_accepted_and_lowered():
    parts = fields(card().line())
    parts[4] = parts[4].upper()
    assert parse_card("/".join(parts)).tls_fingerprint == hashlib.sha256(DER).hexdigest()


def test_altered_fingerprint_refused():
    parts = fields(card().line())
    fp = parts[4]
    parts[4] = ("0" if fp[0] != "0" else "1") + fp[1:]
    with pytest.raises(ValidationError, match="does not match its fingerprint"):
        parse_card("/".join(parts))


def test_truncated_cert_refused():
    parts = fields(card().line())
    cert = parts[6]
    parts[6] = cert[: len(cert) - len(cert) % 4 - 8]  # still valid base64url, shorter DER
    with pytest.raises(ValidationError, match="altered or truncated"):
        parse_card("/".join(parts))


def test_swapped_cert_refused():
    parts = fields(card().line())
    parts[6] = b64e(self_signed_der("nysic"))
    with pytest.raises(ValidationError, match="fingerprint"):
        parse_card("/".join(parts))


def test_garbage_cert_with_matching_fingerprint_refused():
    junk = b"not a certificate"
    c = card(tls_cert_der=junk, tls_fingerprint=hashlib.sha256(junk).hexdigest())
    with pytest.raises(ValidationError, match="not valid DER"):
        parse_card(c.line())


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: p[:6], "not an fcnode identity card"),
    (lambda p: ["fcnode2", *p[1:]], "not an fcnode identity card"),
    (lambda p: [p[0], "Bad Center", *p[2:]], "invalid center id"),
    (lambda p: [*p[:2], "no-port", *p[3:]], "invalid address"),
    (lambda p: [*p[:3], b64e(b"short"), *p[4:]], "32 bytes"),
    (lambda p: [*p[:3], "a", *p[4:]], "signing key is not base64url"),
    (lambda p: [*p[:3], "!!!", *p[4:]], "signing key must be 32 bytes"),
])
def test_malformed_cards_refused(mutate, needle):
    parts = fields(card().line())
    with pytest.raises(ValidationError, match=needle):
        parse_card("/".join(mutate(parts)))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_prop_any_display_name_round_trips(name):
    c = card(name=name)
    line = c.line()
    assert len(fields(line)) == 7
    assert not any(ch.isspace() for ch in line)
    assert parse_card(line) == c


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_prop_any_truncation_refused(data):
    line = card().line()
    cut = data.draw(st.integers(0, len(line) - 1))
    with pytest.raises(ValidationError):
        parse_card(line[:cut])


@pytest.mark.parametrize("seal", [bytes(32), bytes([1]) + bytes(31),
                                  bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd"
                                                "866205165f49b800")])
def test_a_low_order_seal_key_is_refused(seal: bytes):
    # HPKE cannot seal to a low-order X25519 point (no shared secret): a center (or
    # its introducer) whose card carried one made every publish, update and purge
    # of a record naming it fail at the origin with an unexpected ValueError.
    with pytest.raises(ValidationError, match="seal key"):
        parse_card(card(seal_key=seal).line())
    good = X25519PrivateKey.generate().public_key().public_bytes_raw()
    assert parse_card(card(seal_key=good).line()).seal_key == good
