"""Prometheus metrics: `[metrics] listen` in node.toml (off by default).

Names are chosen once and kept (renaming empties dashboards, synapse #14465):
the `fcnode_` prefix, base units (seconds, bytes), `_total` on counters, and
`fcnode_build_info`. Labels carry only center ids and values from the fixed
sets below (states, reasons, channels): never record content, titles,
entities, user names or attributes.

Counters are incremented in-process at a few call sites (this module is all
they import, in memory: storage counts at its single write points). Gauges are
read at scrape time by node/services/scrape.py, which also serves the page.

One daemon per process, so one registry per process (`REGISTRY`), separate from
prometheus_client's global one so tests and tools can import this module freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata
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

from node.telemetry import logs

log = logs.get("fcnode.metrics")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

PEER_STATES = ("connecting", "connected", "backing_off", "refused", "unreachable",
               "not_dialled", "stopped")
QUERY_STATUSES = ("answered", "incomplete", "timed_out", "refused", "unreachable")
NOTICE_KINDS = ("deconfliction", "recall", "retraction", "purge", "correction")
# Why an entry from a peer was refused: the ingest reasons, mapped onto a fixed
# set (the first match wins; anything new lands in "other" until it is named).
REJECT_REASONS: tuple[tuple[str, str], ...] = (
    ("seal key rotation", "bad_seal_key"),
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
OWN_ENTRIES_HELD = Counter(
    "fcnode_own_entries_held", "Entries of this center's own log beyond its head, signed by "
    "its own key, that a peer sent while no restore marked the node: refused, the own log "
    "held for the administrator (an old copy of node.db, or a stolen key)", ["peer"],
    registry=REGISTRY)
ENTRIES_REJECTED = Counter(
    "fcnode_entries_rejected", "Entries from a peer refused at ingest, by reason",
    ["peer", "reason"], registry=REGISTRY)
DISSEMINATIONS = Counter(
    "fcnode_disseminations", "Records released to other centers (the dissemination log), by "
    "channel and decision", ["channel", "decision"], registry=REGISTRY)
WATCH_HITS_REFUSED = Counter(
    "fcnode_watch_hits_refused", "Watch hits a peer delivered that failed verification (a hop "
    "altered, relabelled or forged them), by the peer that delivered them", ["peer"],
    registry=REGISTRY)
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
    ("erased here", "erased"),
)
INDEX_COMPACTIONS = Counter(
    "fcnode_index_compactions", "Compactions of the text index (FTS5 optimize) run for erased "
    "records (purges from peers, superseded versions, retractions), at most one per [limits] "
    "index_compact_s: after one, their terms are gone from the database file", registry=REGISTRY)
INDEX_COMPACTION_SECONDS = Histogram(
    "fcnode_index_compaction_seconds", "Time one such compaction took (it holds the writer)",
    buckets=LATENCY_BUCKETS, registry=REGISTRY)
INTRODUCTIONS_REFUSED = Counter(
    "fcnode_introductions_refused", "Cards an introducer served that were refused, or whose "
    "seal key was dropped, by introducer and reason: seal_signature (the seal key's signature "
    "does not verify with the card's signing key: the card is refused), unsigned_seal_key "
    "(adopted for verification only, nothing sealed to it), invalid_card",
    ["peer", "reason"], registry=REGISTRY)
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


def copy_drop_label(reason: str) -> str:
    """The fixed label of why a sealed copy was dropped (the reason itself may quote
    a peer's key id or seq: never a key of anything that grows with its input)."""
    return next((lab for needle, lab in COPY_DROP_REASONS if needle in reason), "other")


def count_sealed(peer: str, stored: int, dropped: Mapping[str, int]) -> None:
    """``dropped``: label (copy_drop_label) -> copies."""
    if stored:
        SEALED_COPIES_STORED.labels(peer).inc(stored)
    for label, n in dropped.items():
        SEALED_COPIES_DROPPED.labels(peer, label).inc(n)


def count_disseminations(rows: Iterable[Any]) -> None:
    """Rows with .channel and .decision (node.services.egress.Dissemination)."""
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
