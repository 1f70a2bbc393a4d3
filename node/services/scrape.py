"""Metrics read at scrape time, and the HTTP endpoint that serves them.

Gauges are read when Prometheus scrapes: the database on its own read-only
connection (never the writer's), link state from the running federation, file
sizes and certificate dates from the home. The counters they sit beside are in
node/telemetry/metrics.py (the one registry, ``REGISTRY``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.core.types import FcnodeError
from node.telemetry import logs
from node.telemetry.metrics import PEER_STATES, REGISTRY, slug

log = logs.get("fcnode.metrics")


@dataclass(frozen=True)
class PeerView:
    """What the collector needs of one pinned peer: no record data."""

    center: str
    state: str                      # one of PEER_STATES (spaces allowed: 'backing off')
    heads: Mapping[str, int] = field(default_factory=dict)  # the peer's heads per origin
    last_contact_ms: int = 0
    cert_der: bytes = b""


@dataclass(frozen=True)
class _Empty:
    records: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    heads: Mapping[str, int] = field(default_factory=dict)
    cursors: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    quarantined: frozenset[str] = frozenset()
    erasure: tuple[int, int] | None = None


EMPTY = _Empty()


def _cert_expiry(der: bytes | None = None, pem: bytes | None = None) -> float | None:
    from cryptography import x509

    try:
        cert = (x509.load_der_x509_certificate(der) if der is not None
                else x509.load_pem_x509_certificate(pem or b""))
    except ValueError:
        return None
    return cert.not_valid_after_utc.timestamp()


class NodeCollector(Collector):
    """Gauges read at scrape time. ``peers`` returns the pinned peers as
    PeerViews (read from the running daemon's memory: cheap, no I/O)."""

    def __init__(self, database: Path, tls_cert: Path,
                 peers: Callable[[], list[PeerView]]) -> None:
        self.database = database
        self.tls_cert = tls_cert
        self.peers = peers
        self._lock = threading.Lock()  # scrapes may come concurrently
        self._conn: sqlite3.Connection | None = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _snapshot(self) -> Any:
        """The database figures, or None when they cannot be read now (the other
        gauges are still served; the next scrape opens a fresh connection)."""
        from node.storage import stats

        with self._lock:
            try:
                if self._conn is None:
                    self._conn = stats.open_reader(self.database)
                return stats.snapshot(self._conn)
            except (sqlite3.Error, FcnodeError) as exc:
                log.warning("metrics: database not readable", extra={"reason": str(exc)})
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                return None

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        peers = self.peers()
        yield GaugeMetricFamily("fcnode_metrics_database_up", "1 if this scrape could read the "
                                "database (else the record gauges are absent)",
                                value=0 if snap is None else 1)
        if snap is None:
            snap = EMPTY

        records = GaugeMetricFamily("fcnode_records_held", "Records this node holds, by origin "
                                    "and state", labels=["origin", "state"])
        for origin, states in sorted(snap.records.items()):
            for state, n in sorted(states.items()):
                records.add_metric([origin, state], n)
        yield records

        heads = GaugeMetricFamily("fcnode_log_head_seq", "Highest log position held, by origin",
                                  labels=["origin"])
        for origin, seq in sorted(snap.heads.items()):
            heads.add_metric([origin], seq)
        yield heads

        lag = GaugeMetricFamily("fcnode_replication_lag_entries", "Entries a dialled peer "
                                "holds that this node has not received yet, by peer and origin",
                                labels=["peer", "origin"])
        state = GaugeMetricFamily("fcnode_peer_state", "Replication link state of each pinned "
                                  "peer (1 for its current state)", labels=["peer", "state"])
        contact = GaugeMetricFamily("fcnode_peer_last_contact_timestamp_seconds",
                                    "Last message received from each dialled peer",
                                    labels=["peer"])
        expiry = GaugeMetricFamily("fcnode_peer_tls_cert_expiry_timestamp_seconds",
                                   "Expiry of the TLS certificate pinned for each peer",
                                   labels=["peer"])
        for p in sorted(peers, key=lambda p: p.center):
            cursors = snap.cursors.get(p.center, {})
            for origin, head in sorted(p.heads.items() if snap is not EMPTY else ()):
                lag.add_metric([p.center, origin], max(0, head - cursors.get(origin, 0)))
            current = slug(p.state, PEER_STATES)
            for s in PEER_STATES:
                state.add_metric([p.center, s], 1 if s == current else 0)
            if p.last_contact_ms:
                contact.add_metric([p.center], p.last_contact_ms / 1000)
            if p.cert_der and (when := _cert_expiry(der=p.cert_der)) is not None:
                expiry.add_metric([p.center], when)
        yield from (lag, state, contact, expiry)

        quarantined = GaugeMetricFamily("fcnode_origin_quarantined", "Origins whose new entries "
                                        "are refused after a fork (1 each)", labels=["origin"])
        for origin in sorted(snap.quarantined):
            quarantined.add_metric([origin], 1)
        yield quarantined

        erasure = snap.erasure
        yield GaugeMetricFamily("fcnode_index_erasure_pending", "Erased records (purges "
                                "from peers, superseded versions, retractions) out of search "
                                "whose terms are still in the text index file, until the next "
                                "compaction", value=erasure[1] if erasure else 0)
        if erasure:
            yield GaugeMetricFamily("fcnode_index_erasure_pending_since_timestamp_seconds",
                                    "The oldest of them (compacted index_compact_s after)",
                                    value=erasure[0] / 1000)

        try:
            own = _cert_expiry(pem=self.tls_cert.read_bytes())
        except OSError:
            own = None
        if own is not None:
            yield GaugeMetricFamily("fcnode_tls_cert_expiry_timestamp_seconds",
                                    "Expiry of this node's own TLS certificate", value=own)
        for suffix, name, help_ in (("", "fcnode_database_size_bytes", "Size of the database "
                                     "file"),
                                    ("-wal", "fcnode_database_wal_size_bytes",
                                     "Size of the database's write-ahead log")):
            try:
                size = Path(f"{self.database}{suffix}").stat().st_size
            except FileNotFoundError:
                size = 0
            yield GaugeMetricFamily(name, help_, value=size)


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT (validated in node.toml by node.config.home.check_listen)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """The metrics page on its own HTTP listener (prometheus_client's threaded
    WSGI server): a slow scrape never touches the event loop or the writer."""

    def __init__(self, listen: str, collector: NodeCollector) -> None:
        self.listen = listen
        self.collector = collector
        self._server: Any = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        host, port = parse_listen(self.listen)
        REGISTRY.register(self.collector)
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            REGISTRY.unregister(self.collector)
            raise FcnodeError(f"cannot listen for metrics on {self.listen}: {exc.strerror or exc}"
                            ) from None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            REGISTRY.unregister(self.collector)
        self.collector.close()
