"""node.identity: the one-line identity card round-trips, and an altered card is refused."""

from __future__ import annotations

import dataclasses
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

from node.config.identity import BadSealSignature, IdentityCard, b64e, parse_card
from node.core.signing import raw_public, sign_seal_key
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


SEAL = X25519PrivateKey.generate().public_key().public_bytes_raw()


def signed_card(**kw) -> IdentityCard:
    """A card as `fcnode identity` prints it: the seal key signed by the center."""
    c = card(**kw)
    seal = kw.get("seal_key", SEAL)
    return dataclasses.replace(c, seal_key=seal,
                               seal_signature=sign_seal_key(SIGNING, c.center, seal))


def test_a_signed_seal_key_round_trips_in_a_ninth_field():
    c = signed_card()
    parts = fields(c.line())
    assert len(parts) == 9 and parse_card(c.line()) == c
    assert parse_card(c.line()).seal_signature == c.seal_signature


def test_a_seal_key_swapped_under_the_center_s_signature_is_refused():
    # An introducer keeps the center's card (its real signing key, its signature)
    # and puts its own X25519 key in: the signature no longer verifies.
    parts = fields(signed_card().line())
    parts[7] = b64e(X25519PrivateKey.generate().public_key().public_bytes_raw())
    with pytest.raises(BadSealSignature, match="seal key's signature does not verify"):
        parse_card("/".join(parts))


def test_a_seal_key_signed_by_another_key_or_for_another_center_is_refused():
    # The introducer signs its own seal key with its own key: not the card's key.
    other = Ed25519PrivateKey.generate()
    forged = card(seal_key=SEAL)
    parts = [*fields(forged.line()), b64e(sign_seal_key(other, "nysic", SEAL))]
    with pytest.raises(BadSealSignature, match="signing key"):
        parse_card("/".join(parts))
    # The center's own statement for another of its ids (or another center's) does not
    # carry over: the center id is in the signed bytes.
    parts = [*fields(forged.line()), b64e(sign_seal_key(SIGNING, "ncric", SEAL))]
    with pytest.raises(BadSealSignature):
        parse_card("/".join(parts))
    # Another signing key put in the card under the center's statement.
    parts = fields(signed_card().line())
    parts[3] = b64e(raw_public(other.public_key()))
    with pytest.raises(BadSealSignature):
        parse_card("/".join(parts))
    # Nor can such a card be built in code: the check is the card's own.
    with pytest.raises(BadSealSignature):
        dataclasses.replace(signed_card(), seal_key=X25519PrivateKey.generate()
                            .public_key().public_bytes_raw())


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: [*p[:8], b64e(b"short")], "signature must be 64 bytes"),
    (lambda p: [*p[:8], "a"], "seal key signature is not base64url"),
    (lambda p: [*p, "x"], "not an fcnode identity card"),
])
def test_malformed_seal_signatures_refused(mutate, needle):
    parts = fields(signed_card().line())
    with pytest.raises(ValidationError, match=needle):
        parse_card("/".join(mutate(parts)))


def test_cards_of_older_releases_still_parse_unsigned():
    # Seven fields (before seal keys) and eight (a seal key, before its signature):
    # they parse as before; whether such a seal key is believed is the pin's
    # business (an administrator's direct pin: yes; an introducer's: never).
    old = card(seal_key=SEAL)
    assert len(fields(old.line())) == 8
    got = parse_card(old.line())
    assert (got.seal_key, got.seal_signature) == (SEAL, b"")
    assert parse_card(card().line()).seal_key == b""


def test_own_card_signs_the_seal_key_with_the_current_signing_key(tmp_path):
    from node.config import keys
    from node.config.home import Home
    from node.config.init import init_node, own_card

    init_node(tmp_path / "home", "nysic", "NYSIC", "127.0.0.1:7701")
    home = Home(tmp_path / "home")
    c = parse_card(own_card(home, "nysic", "NYSIC", "127.0.0.1:7701").line())
    assert c.seal_signature and c.signing_key == raw_public(
        keys.load_signing_key(home.signing_key).public_key())
