"""Red team, issue 8 item 9: the restart rate limit must not be bypassed by
asking from seq 1 instead of 0.

Before the fix only a cursor of exactly 0 counted as a restart, so a peer that
subscribed again and again with cursor 1 made the node read and send its whole
log every time, without limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from node.wire import federation_pb2, federation_pb2_grpc
from tests.integration.rogue import Rogue


def test_restarts_from_seq_1_are_rate_limited_too(make_node, tmp_path: Path) -> None:
    node = make_node("limitz", start=False)
    node.edit_config("max_batch = 256", "max_batch = 8")
    node.edit_config("restarts_per_minute = 6", "restarts_per_minute = 3")
    node.start()
    path = tmp_path / "many.json"
    path.write_text(json.dumps([{"kind": "BULLETIN", "title": f"n{i}",
                                 "policy": {"tlp": "GREEN", "audience": ["members"]}}
                                for i in range(40)]))
    node.ok("publish", "--file", str(path))
    peer = Rogue(tmp_path, "greedy")
    node.ok("peers", "add", peer.card.line())
    with peer.channel(node.listen, node.card()) as ch:
        fed = federation_pb2_grpc.FederationStub(ch)
        firsts, refused = [], ""
        for _ in range(6):  # each one asks the whole log again, from seq 1
            try:
                stream = fed.Replicate(federation_pb2.ReplicateRequest(
                    cursors={"limitz": 1}), timeout=10)
                firsts.append(len(next(stream).items))
                stream.cancel()
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                refused = exc.details()
                break
        assert firsts == [8, 8, 8] and "restarts" in refused, (firsts, refused)
        # A peer that is only a batch behind is no restart.
        for _ in range(5):
            stream = fed.Replicate(federation_pb2.ReplicateRequest(
                cursors={"limitz": 40 - 8}), timeout=10)
            assert len(next(stream).items) == 8
            stream.cancel()


def test_stream_opens_cost_one_log_line_a_minute(make_node, tmp_path: Path) -> None:
    """Red team (session 17): refusals are logged once a minute per peer, but a
    peer that is up to date may open (and drop) replication streams as fast as it
    likes, within every cap: each open was an INFO line, a log without bound."""
    node = make_node("opensz")
    node.publish("--kind", "BULLETIN", "--title", "one", "--audience", "members")
    peer = Rogue(tmp_path, "opener")
    node.ok("peers", "add", peer.card.line())
    with peer.channel(node.listen, node.card()) as ch:
        fed = federation_pb2_grpc.FederationStub(ch)
        for _ in range(40):
            stream = fed.Replicate(federation_pb2.ReplicateRequest(
                cursors={"opensz": 1}), timeout=10)
            next(stream)
            stream.cancel()
    lines = [ln for ln in node.log_tail(10_000_000).splitlines()
             if "replication stream opened" in ln and '"opener"' in ln]
    assert 1 <= len(lines) <= 2, f"{len(lines)} lines for 40 streams"  # before: 40


def test_a_flood_of_bad_entries_writes_bounded_rows_and_log(make_node, tmp_path: Path
                                                            ) -> None:
    """Red team (session 17): a pinned peer streams the same bad entry (or new ones)
    in batch after batch. Each batch wrote a rejections row per origin and a
    'rejected entries' log line: rows and lines without bound (one stream, a
    batch as fast as this node verifies). Now the rows are bounded per peer (a
    minute's share, and in all), the line is written once a minute per peer, and
    the metric still counts every one."""
    import contextlib
    import time

    node = make_node("floodz")
    rogue = Rogue(tmp_path, "flooder")
    bad = rogue.chain(["x"])[0]
    bad.envelope.signature = bytes(64)
    rogue.items = [bad]
    rogue.repeats = 400
    rogue.serve(node.card())
    try:
        node.ok("peers", "add", rogue.card.line())

        def rows() -> int:
            with contextlib.closing(node.db()) as conn:
                return conn.execute("SELECT count(*) FROM rejections WHERE peer = ?",
                                    ("flooder",)).fetchone()[0]

        node.wait_for(lambda: rows() > 0, 20, "the first rejection")
        time.sleep(5)  # the flood goes on
        lines = [ln for ln in node.log_tail(10_000_000).splitlines()
                 if "rejected entries" in ln]
        # Before the fix: a row and a line per batch (well over a hundred here).
        assert rows() <= 60 and 1 <= len(lines) <= 2, (rows(), len(lines))
    finally:
        rogue.stop()
