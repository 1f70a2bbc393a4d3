"""Node key material on disk: generation, loading, permission checks.

Two keys per node (DESIGN.md section 3): an Ed25519 signing key (the center's
identity in the data) and an ECDSA P-256 TLS key with a self-signed certificate
whose SAN is the center id (gRPC's TLS refuses Ed25519 certificates).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from node.core.types import FcnodeError

SIGNING_KEY = "signing.key"
TLS_KEY = "tls.key"
TLS_CERT = "tls.crt"
# Certificates this node makes are valid a year and renewed automatically 30 days
# before they expire ([tls] in node.toml): short enough that a lost key does not
# stay trusted for long, long enough that a node down for weeks still comes back.
CERT_DAYS = 365.0


class KeyFileError(FcnodeError):
    pass


def write_private(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only; never replace an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_private(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} is missing") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}; it must be 0600 "
            f"(run: chmod 600 {path})"
        )
    return path.read_bytes()


def signing_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    write_private(path, signing_key_pem(key))
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(read_private(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} does not hold an Ed25519 key")
    return key


def x25519_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_x25519(path: Path) -> X25519PrivateKey:
    key = serialization.load_pem_private_key(read_private(path), password=None)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path} does not hold an X25519 key")
    return key


def encryption_key(path: Path) -> X25519PrivateKey:
    """The node's X25519 key for answers sealed to it (HPKE), made on first use:
    homes made before sealed answers existed get one at their next start."""
    if not path.exists():
        key = X25519PrivateKey.generate()
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        write_private(tmp, x25519_pem(key))
        try:
            # Whole or absent, never half-written: a concurrent caller (the CLI
            # beside the daemon) that made it first wins, and both read theirs.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return load_x25519(path)


# Seal-key rotation (`keys rotate --seal`): the new key is written to
# encryption.key.next before its announcement commits, then swapped in; the key it
# replaces stays as encryption.key.retired-SEQ (SEQ: the announcement's position),
# so that what was sealed to it before (copies resting on hubs, answers in
# flight) still opens. Deleting a retired file (or `--retire`) retires that key.
def next_seal_path(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def retired_seal_paths(path: Path) -> list[Path]:
    """The retired seal keys beside ``path``, newest (highest seq) first."""
    out = []
    for p in path.parent.glob(path.name + ".retired-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if suffix.isdigit():
            out.append((int(suffix), p))
    return [p for _, p in sorted(out, reverse=True)]


def seal_keys(path: Path) -> list[X25519PrivateKey]:
    """Every private seal key this node opens with: the current one first, then
    the retired ones, newest first (what was sealed lately is tried first)."""
    return [encryption_key(path), *(load_x25519(p) for p in retired_seal_paths(path))]


def finish_seal_swap(path: Path, announced: tuple[int, bytes] | None) -> bool:
    """At start and before a rotation: encryption.key.next is swapped in if this
    center's newest seal-key announcement (seq, public key) names it (the rotation
    committed; the replaced key is kept as encryption.key.retired-SEQ), else
    removed (it never committed: the current key stays). True if it swapped."""
    nxt = next_seal_path(path)
    if not nxt.exists():
        return False
    pending = load_x25519(nxt).public_key().public_bytes_raw()
    if announced is None or announced[1] != pending:
        nxt.unlink()
        return False
    retired = path.with_name(f"{path.name}.retired-{announced[0]}")
    if path.exists() and not retired.exists():
        os.link(path, retired)
    os.replace(nxt, path)
    return True


def generate_tls(key_path: Path, cert_path: Path, center: str,
                 days: float = CERT_DAYS) -> bytes:
    """ECDSA P-256 key and a self-signed certificate with SAN = center id."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    end = now + dt.timedelta(days=days)
    start = min(now - dt.timedelta(minutes=5), end - dt.timedelta(days=1))  # days<0: expired
    # A unique subject per certificate: after a renewal a peer trusts two
    # self-signed certificates of one center at once, and TLS libraries pick an
    # issuer by subject name (measured: with two roots named CN=center, gRPC's
    # handshake verified the new certificate against the old one and failed).
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, center),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, os.urandom(8).hex())])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(center)]), critical=False)
        # Pinned self-signed certificates act as their own trust anchors.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(key_path, pem_key)
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem_cert)
    return pem_cert


def cert_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def cert_fingerprint(pem: bytes) -> str:
    """SHA-256 of the DER certificate, lower-case hex."""
    return hashlib.sha256(cert_der(pem)).hexdigest()


def cert_expiry_ms(pem: bytes) -> int:
    cert = x509.load_pem_x509_certificate(pem)
    return int(cert.not_valid_after_utc.timestamp() * 1000)


def der_to_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class TlsMaterial:
    key_pem: bytes
    cert_pem: bytes
    fingerprint: str


def load_tls(key_path: Path, cert_path: Path) -> TlsMaterial:
    key_pem = read_private(key_path)
    cert_pem = cert_path.read_bytes()
    return TlsMaterial(key_pem, cert_pem, cert_fingerprint(cert_pem))


def finish_tls_switch(key_path: Path, cert_path: Path) -> bool:
    """A renewed pair is installed key first, then certificate (federation/runtime.py
    _switch_tls): a crash in between leaves tls.next.crt without tls.next.key and a
    new key beside the old certificate. Finish the switch (at start). True if it did."""
    next_key = key_path.with_name("tls.next.key")
    next_crt = cert_path.with_name("tls.next.crt")
    if next_crt.exists() and not next_key.exists():
        os.replace(next_crt, cert_path)
        return True
    return False
