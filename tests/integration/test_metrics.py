"""The metrics page of real daemons, parsed with prometheus_client's own parser
and checked against what the nodes did."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from node.devnet import Node, free_port, mesh
from node.wire import federation_pb2
from tests.integration.rogue import Rogue

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def with_metrics(node: Node) -> str:
    port = free_port()
    node.edit_config('# listen = "127.0.0.1:9464"', f'listen = "127.0.0.1:{port}"')
    return f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_what_the_nodes_did(make_node) -> None:
    a, b = make_node("ncric", start=False), make_node("nysic", start=False)
    url_a, url_b = with_metrics(a), with_metrics(b)
    a.start()
    b.start()
    mesh(a, b)
    titles = [f"Secret title number {i}" for i in range(3)]
    ids = [a.publish("--kind", "BULLETIN", "--title", t, "--tlp", "GREEN", "--audience",
                     "members", "--entity", f"plate=7ABC12{i}")["record_id"]
           for i, t in enumerate(titles)]
    b.wait_for(lambda: set(ids) <= b.held_record_ids(), what="replication of 3 records")
    a.ok("retract", ids[0], "--reason", "source recanted")
    b.wait_for(lambda: value(scrape(url_b)[1], "fcnode_notices_total",
                             kind="retraction") == 1, what="the retraction notice")
    b.ok("query", "--entity", "plate=7ABC121")

    text_a, ma = scrape(url_a)
    text_b, mb = scrape(url_b)
    # ncric published 3 records and one retraction: 4 entries of its own log.
    assert value(ma, "fcnode_entries_published_total") == 4
    assert value(ma, "fcnode_records_held", origin="ncric", state="active") == 2
    assert value(ma, "fcnode_records_held", origin="ncric", state="retracted") == 1
    assert value(ma, "fcnode_log_head_seq", origin="ncric") == 4
    assert value(ma, "fcnode_disseminations_total", channel="replication", decision="FULL") == 4
    # nysic stored those 4 entries from ncric, and holds what ncric holds.
    assert value(mb, "fcnode_entries_ingested_total", peer="ncric") == 4
    assert value(mb, "fcnode_records_held", origin="ncric", state="active") == 2
    assert value(mb, "fcnode_records_held", origin="ncric", state="retracted") == 1
    assert value(mb, "fcnode_replication_lag_entries", peer="ncric", origin="ncric") == 0
    assert value(mb, "fcnode_peer_state", peer="ncric", state="connected") == 1
    assert value(mb, "fcnode_peer_state", peer="ncric", state="unreachable") == 0
    assert value(mb, "fcnode_entries_published_total") == 0
    # One federated query: asked at nysic, answered at ncric, with a released record.
    assert value(mb, "fcnode_queries_asked_total") == 1
    assert value(mb, "fcnode_query_duration_seconds_count") == 1
    assert value(mb, "fcnode_query_peer_outcomes_total", peer="ncric", status="answered") == 1
    assert value(ma, "fcnode_queries_answered_total", peer="nysic", result="answered") == 1
    assert value(ma, "fcnode_query_answer_duration_seconds_count") == 1
    assert value(ma, "fcnode_disseminations_total", channel="query", decision="FULL") == 1
    # Static facts: build, certificate expiry (init makes 365 days), database size.
    for m in (ma, mb):
        assert value(m, "fcnode_build_info", version=_version()) == 1
        expiry = value(m, "fcnode_tls_cert_expiry_timestamp_seconds")
        assert expiry is not None and 360 * 86400 < expiry - time.time() < 366 * 86400
        assert (value(m, "fcnode_database_size_bytes") or 0) > 4096
    peer_expiry = value(mb, "fcnode_peer_tls_cert_expiry_timestamp_seconds", peer="ncric")
    assert peer_expiry == value(ma, "fcnode_tls_cert_expiry_timestamp_seconds")
    # Nothing of the records' content in any label or help text.
    for text in (text_a, text_b):
        assert not any(t in text for t in titles) and "7ABC12" not in text


def _version() -> str:
    from node.telemetry.metrics import version

    return version()


def test_metrics_off_by_default_and_bad_address_refused(make_node) -> None:
    node = make_node("ffc", start=False)
    assert "[metrics]" in (node.home / "node.toml").read_text()
    node.edit_config('# listen = "127.0.0.1:9464"', 'listen = "nowhere"')
    r = node.cli("serve")
    assert r.returncode != 0 and "invalid address 'nowhere'" in r.stderr, r.stderr
    node.edit_config('listen = "nowhere"', '# listen = "127.0.0.1:9464"')
    node.start()
    assert "metrics listening" not in node.log_tail()


class RoguePastItsHeads(Rogue):
    """A peer announcing a head beyond what it sends: the lag the node sees."""

    announced = 5

    async def Replicate(self, request, context):  # type: ignore[no-untyped-def]
        cursors = dict(request.cursors)
        yield federation_pb2.ReplicateBatch(
            items=[i for i in self.items if i.seq > cursors.get(i.origin, 0)],
            heads={self.center: self.announced})
        await asyncio.sleep(3600)


def test_rejections_and_lag_from_a_hostile_peer(make_node, tmp_path: Path) -> None:
    node = make_node("golf", start=False)
    url = with_metrics(node)
    node.start()
    rogue = RoguePastItsHeads(tmp_path, "hotel")
    items = rogue.chain(["one", "two", "three"])
    tampered = federation_pb2.LogItem()
    tampered.CopyFrom(items[2])
    tampered.envelope.payload = tampered.envelope.payload.replace(b"three", b"THREE")
    stranger = Rogue(tmp_path, "india")  # not pinned at golf: unknown origin
    rogue.items = [items[0], items[1], tampered, *stranger.chain(["alien"])]
    rogue.serve(node.card())
    try:
        node.ok("peers", "add", rogue.card.line())
        node.wait_for(lambda: value(scrape(url)[1], "fcnode_entries_rejected_total",
                                    peer="hotel", reason="unknown_origin") == 1,
                      what="the rejections")
        text, m = scrape(url)
    finally:
        rogue.stop()
    assert value(m, "fcnode_entries_ingested_total", peer="hotel") == 2
    assert value(m, "fcnode_entries_rejected_total", peer="hotel", reason="bad_signature") == 1
    assert value(m, "fcnode_records_held", origin="hotel", state="active") == 2
    # hotel says it holds 5 of its own; golf has 2 of them.
    assert value(m, "fcnode_replication_lag_entries", peer="hotel", origin="hotel") == 3
    assert value(m, "fcnode_peer_state", peer="hotel", state="connected") == 1
    assert "THREE" not in text and "alien" not in text
