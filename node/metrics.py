"""Prometheus metrics: `[metrics] listen` in node.toml (off by default).

Names are chosen once and kept (renaming empties dashboards, synapse #14465):
the `fcnode_` prefix, base units (seconds, bytes), `_total` on counters, and
`fcnode_build_info`. Labels carry only center ids and values from the fixed
sets below (states, reasons, channels): never record content, titles,
entities, user names or attributes.

Counters are incremented in-process at a few call sites (this module is all
they import). Gauges are read at scrape time: the database on its own read-only
connection (never the writer's), link state from the running federation, file
sizes and certificate dates from the home.

One daemon per process, so one registry per process (`REGISTRY`), separate from
prometheus_client's global one so tests and tools can import this module freely.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node import logs
from node.types import FcnodeError

log = logs.get("fcnode.metrics")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

PEER_STATES = ("connecting", "connected", "backing_off", "refused", "unreachable",
               "not_dialled", "stopped")
QUERY_STATUSES = ("answered", "timed_out", "refused", "unreachable")
NOTICE_KINDS = ("deconfliction", "recall", "retraction", "purge", "correction")
# Why an entry from a peer was refused: the ingest reasons, mapped onto a fixed
# set (the first match wins; anything new lands in "other" until it is named).
REJECT_REASONS: tuple[tuple[str, str], ...] = (
    ("bad signature", "bad_signature"),
    ("unknown origin", "unknown_origin"),
    ("signed origin/seq differ", "position_mismatch"),
    ("entry hash does not match", "hash_mismatch"),
    ("own log", "own_log"),
    ("quarantined", "quarantined"),
    ("purged", "purged"),
    ("replayed older version", "replayed_version"),
    ("recall from a non-source", "recall_not_source"),
    ("gap", "gap"),
    ("seq", "chain"),
    ("chain", "chain"),
    ("hash must be", "chain"),
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def version() -> str:
    try:
        return metadata.version("fcnode")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"


BUILD = Info("fcnode_build", "The fcnode release this daemon runs", registry=REGISTRY)
BUILD.info({"version": version()})

ENTRIES_PUBLISHED = Counter(
    "fcnode_entries_published", "Entries appended to this center's own log (publishes, "
    "updates, validations, retractions, purges)", registry=REGISTRY)
ENTRIES_INGESTED = Counter(
    "fcnode_entries_ingested", "Log entries (signed or placeholder) stored from a peer's "
    "replication stream", ["peer"], registry=REGISTRY)
ENTRIES_REJECTED = Counter(
    "fcnode_entries_rejected", "Entries from a peer refused at ingest, by reason",
    ["peer", "reason"], registry=REGISTRY)
DISSEMINATIONS = Counter(
    "fcnode_disseminations", "Records released to other centers (the dissemination log), by "
    "channel and decision", ["channel", "decision"], registry=REGISTRY)
NOTICES = Counter("fcnode_notices", "Notices written for this center's analysts, by kind",
                  ["kind"], registry=REGISTRY)
SEALED_COPIES_STORED = Counter(
    "fcnode_sealed_copies_stored", "Sealed copies of other centers' entries kept to pass on "
    "(origin signature verified)", ["peer"], registry=REGISTRY)
SEALED_COPIES_DROPPED = Counter(
    "fcnode_sealed_copies_dropped", "Sealed copies from a peer dropped, never stored, by "
    "reason", ["peer", "reason"], registry=REGISTRY)
# Why a sealed copy was dropped, mapped onto a fixed set (first match wins).
COPY_DROP_REASONS: tuple[tuple[str, str], ...] = (
    ("signature does not verify", "bad_signature"),
    ("no origin key", "unknown_key"),
    ("signing key", "unknown_key"),
    ("retired", "wrong_key"),
    ("valid only from", "wrong_key"),
    ("larger than", "too_large"),
    ("bad copies in one batch", "bad_flood"),
    ("more than", "too_many"),
    ("range placeholder", "on_range"),
    ("opened", "bad_content"),
)
QUERIES_ANSWERED = Counter(
    "fcnode_queries_answered", "Federated queries from peers, answered or refused",
    ["peer", "result"], registry=REGISTRY)
QUERY_ANSWER_SECONDS = Histogram(
    "fcnode_query_answer_duration_seconds", "Time to answer a peer's federated query",
    buckets=LATENCY_BUCKETS, registry=REGISTRY)
QUERIES_ASKED = Counter("fcnode_queries_asked", "Federated queries this node's users sent",
                        registry=REGISTRY)
QUERY_ASK_SECONDS = Histogram(
    "fcnode_query_duration_seconds", "Time from sending a federated query to its last answer",
    buckets=LATENCY_BUCKETS, registry=REGISTRY)
QUERY_PEER_OUTCOMES = Counter(
    "fcnode_query_peer_outcomes", "What each asked peer did with this node's queries",
    ["peer", "status"], registry=REGISTRY)
QUERY_PEER_SECONDS = Histogram(
    "fcnode_query_peer_duration_seconds", "Time each asked peer took to finish its answer",
    ["peer"], buckets=LATENCY_BUCKETS, registry=REGISTRY)


def reject_reason(reason: str) -> str:
    low = reason.lower()
    for needle, label in REJECT_REASONS:
        if needle in low:
            return label
    return "other"


def slug(value: str, allowed: Iterable[str]) -> str:
    """A label value from a fixed set: 'backing off' -> 'backing_off'; else 'other'."""
    s = value.strip().lower().replace(" ", "_")
    return s if s in allowed else "other"


def count_rejections(peer: str, reasons: Mapping[str, int]) -> None:
    for reason, n in reasons.items():
        ENTRIES_REJECTED.labels(peer, reject_reason(reason)).inc(n)


def count_sealed(peer: str, stored: int, dropped: Mapping[str, int]) -> None:
    if stored:
        SEALED_COPIES_STORED.labels(peer).inc(stored)
    for reason, n in dropped.items():
        label = next((lab for needle, lab in COPY_DROP_REASONS if needle in reason), "other")
        SEALED_COPIES_DROPPED.labels(peer, label).inc(n)


def count_disseminations(rows: Iterable[Any]) -> None:
    """Rows with .channel and .decision (node.egress.Dissemination)."""
    counts: dict[tuple[str, str], int] = {}
    for d in rows:
        key = (slug(d.channel, ("replication", "query", "recall", "export", "sealed")),
               slug(d.decision, ("full", "pointer", "recall")).upper())
        counts[key] = counts.get(key, 0) + 1
    for (channel, decision), n in counts.items():
        DISSEMINATIONS.labels(channel, decision).inc(n)


def count_notice(kind: str) -> None:
    NOTICES.labels(slug(kind, NOTICE_KINDS)).inc()


def count_query_summary(report: Mapping[str, Mapping[str, Any]], own_center: str) -> None:
    """Per-peer outcomes of one federated query (the summary the CLI prints)."""
    for center, outcome in report.items():
        if center == own_center:
            continue
        QUERY_PEER_OUTCOMES.labels(center, slug(str(outcome.get("status", "")),
                                                QUERY_STATUSES)).inc()
        QUERY_PEER_SECONDS.labels(center).observe(float(outcome.get("ms", 0)) / 1000)


# -- scrape-time gauges -------------------------------------------------------
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
    """HOST:PORT or [V6]:PORT (validated in node.toml by node.home.check_listen)."""
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
            from node.home import HomeError

            raise HomeError(f"cannot listen for metrics on {self.listen}: {exc.strerror or exc}"
                            ) from None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            REGISTRY.unregister(self.collector)
        self.collector.close()
