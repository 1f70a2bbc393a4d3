"""Mutual TLS with pinned self-signed certificates.

The server trusts exactly the certificates of the peers it dials (connect =
true) as roots, so an unpinned or expired client certificate fails the
handshake. Peer changes reach the running server through gRPC's dynamic
credentials: the fetcher runs before each handshake, on gRPC's threads.
Measured with grpcio 1.85.1 (DESIGN.md section 6): a fetcher that builds a new
configuration on every call, unlocked, corrupts the heap under concurrent
handshakes, so it is serialized and returns None unless the pinned set changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import grpc

from node.keys import TlsMaterial, cert_fingerprint
from node.peers import Peer


class PinnedTls:
    def __init__(self, own: TlsMaterial, peers: Iterable[Peer]) -> None:
        self.own = own
        self._lock = threading.Lock()
        self._version = 0
        self._served = -1
        self._roots = b""
        self._by_fingerprint: dict[str, str] = {}
        self.update(peers)

    def update(self, peers: Iterable[Peer]) -> None:
        dialable = [p for p in peers if p.connect]
        # Our own certificate is always a root, so the bundle is never empty; a
        # client presenting it is refused at the call (it maps to no peer).
        roots = self.own.cert_pem + b"".join(p.card.tls_cert_pem for p in dialable)
        with self._lock:
            self._by_fingerprint = {p.card.tls_fingerprint: p.center for p in dialable}
            if roots != self._roots:
                self._roots = roots
                self._version += 1

    def center_for_pem(self, pem: bytes) -> str | None:
        with self._lock:
            return self._by_fingerprint.get(cert_fingerprint(pem))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.own.key_pem, self.own.cert_pem)], root_certificates=self._roots)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            if self._served == self._version:
                return None
            self._served = self._version
            return self._configuration()

    def server_credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            initial = self._configuration()
            self._served = self._version
        return grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=True)

    def channel_credentials(self, peer: Peer) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=peer.card.tls_cert_pem,
            private_key=self.own.key_pem, certificate_chain=self.own.cert_pem)


def peer_pem(context: grpc.aio.ServicerContext) -> bytes | None:
    certs = (context.auth_context() or {}).get("x509_pem_cert") or []
    return certs[0] if certs else None
