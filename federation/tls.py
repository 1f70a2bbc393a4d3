"""Mutual TLS with pinned self-signed certificates.

The server trusts exactly the certificates of the peers it dials (connect =
true) as roots, so an unpinned or expired client certificate fails the
handshake. Peer changes reach the running server through gRPC's dynamic
credentials: the fetcher runs before each handshake, on gRPC's threads.
Measured with grpcio 1.85.1 (DESIGN.md section 6): a fetcher that builds a new
configuration on every call, unlocked, corrupts the heap under concurrent
handshakes, so it is serialized and returns None unless the pinned set changed.

A center's certificate renewal (a CERT_RENEWAL entry in its log, verified with its
signing key) adds the new certificate beside the card's: both are trusted, as
roots and as that center's identity, until each expires. This node's own renewal
replaces ``own`` (set_own): the next handshake presents the new certificate, and
client channels are made anew by their links.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import grpc

from node.config.keys import TlsMaterial, cert_fingerprint, der_to_pem
from node.config.peers import Peer
from node.core.keyhistory import AnnouncedCert


class PinnedTls:
    def __init__(self, own: TlsMaterial, peers: Iterable[Peer]) -> None:
        self.own = own
        self._lock = threading.Lock()
        self._version = 0
        self._served = -1
        self._roots = b""
        self._by_fingerprint: dict[str, str] = {}
        self._announced: dict[str, list[bytes]] = {}
        self._peers: list[Peer] = []
        self.update(peers)

    def update(self, peers: Iterable[Peer],
               announced: Mapping[str, Sequence[AnnouncedCert]] | None = None) -> None:
        """``announced``: unexpired certificates each center announced in its log."""
        dialable = [p for p in peers if p.connect]
        if announced is not None:
            self._announced = {c: [der_to_pem(a.der) for a in certs]
                               for c, certs in announced.items()}
        by_fp = {p.card.tls_fingerprint: p.center for p in dialable}
        extra = b""
        for p in dialable:
            for pem in self._announced.get(p.center, []):
                fp = cert_fingerprint(pem)
                if fp not in by_fp:
                    by_fp[fp] = p.center
                    extra += pem
        with self._lock:
            # Our own certificate is always a root, so the bundle is never empty; a
            # client presenting it is refused at the call (it maps to no peer).
            roots = self.own.cert_pem + b"".join(p.card.tls_cert_pem for p in dialable) + extra
            self._by_fingerprint = by_fp
            if roots != self._roots:
                self._roots = roots
                self._version += 1
        self._peers = dialable

    def set_own(self, own: TlsMaterial) -> None:
        """This node's renewed certificate: presented from the next handshake on."""
        with self._lock:
            self.own = own
        self.update(self._peers)
        with self._lock:
            self._version += 1  # the key pair changed even if the roots did not

    def roots_for(self, peer: Peer) -> bytes:
        """What this node accepts from ``peer`` as a server: its card's certificate
        and every unexpired certificate it announced."""
        pems = [peer.card.tls_cert_pem, *self._announced.get(peer.center, [])]
        return b"".join(dict.fromkeys(pems))

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
        with self._lock:
            own = self.own
        return grpc.ssl_channel_credentials(
            root_certificates=self.roots_for(peer),
            private_key=own.key_pem, certificate_chain=own.cert_pem)


def peer_pem(context: grpc.aio.ServicerContext) -> bytes | None:
    certs = (context.auth_context() or {}).get("x509_pem_cert") or []
    return certs[0] if certs else None
