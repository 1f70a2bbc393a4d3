"""Metric labels come from fixed sets: every refusal reason the ingest path
writes maps to a named label, and nothing else can reach a label value."""

from __future__ import annotations

from node.telemetry.metrics import PEER_STATES, count_disseminations, reject_reason, slug


def test_ingest_reasons_map_to_fixed_labels() -> None:
    cases = {
        "bad signature": "bad_signature",
        "unknown origin (no pinned key)": "unknown_origin",
        "signed origin/seq differ from the log position": "position_mismatch",
        "entry hash does not match the payload": "hash_mismatch",
        "entries of this node's own log come only from itself": "own_log",
        "origin quarantined": "quarantined",
        "record was purged": "purged",
        "replayed older version": "replayed_version",
        "recall from a non-source": "recall_not_source",
        "gap": "gap",
        "seq must start at 1": "chain",
        "entry hash must be 32 bytes": "chain",
        "entry at seq 7 contradicts the one held": "chain",
        "seq 6 is not held": "chain",
        "seq 1 must not link to a previous entry": "chain",
        "wrong chain link at seq 9": "chain",
        "seal key rotation: the new seal key is not a usable X25519 key (32 bytes, not a "
        "low-order point)": "bad_seal_key",
    }
    for reason, label in cases.items():
        assert reject_reason(reason) == label, reason
    assert reject_reason("Secret title of a record") == "other"


def test_free_text_never_becomes_a_label_value() -> None:
    assert slug("backing off", PEER_STATES) == "backing_off"
    assert slug("Doe, John", PEER_STATES) == "other"

    class Row:
        channel, decision = "query; drop table", "FULL"

    from node.telemetry.metrics import DISSEMINATIONS

    before = DISSEMINATIONS.labels("other", "FULL")._value.get()
    count_disseminations([Row()])
    assert DISSEMINATIONS.labels("other", "FULL")._value.get() == before + 1


def test_an_unreadable_database_leaves_the_rest_of_the_page(tmp_path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from node.services.scrape import NodeCollector, PeerView

    registry = CollectorRegistry()
    registry.register(NodeCollector(tmp_path / "missing.db", tmp_path / "missing.crt",
                                    lambda: [PeerView("nysic", "backing off", {"nysic": 4})]))
    page = generate_latest(registry).decode()
    assert "fcnode_metrics_database_up 0.0" in page
    assert 'fcnode_peer_state{peer="nysic",state="backing_off"} 1.0' in page
    assert "fcnode_replication_lag_entries{" not in page  # no cursors: no made-up lag
