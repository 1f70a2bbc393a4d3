"""Issue 8, items 1 and 2, played over real mutual TLS by a hand-driven peer: a
hop can delay what it relays, never withdraw it or cut a center off from it.

1. A pinned peer's placeholder carrying an (unsigned) recall erases nothing,
   pins no version, and is not passed on: the origin's real next entry is taken
   and relayed as usual.
2. A fake placeholder sent to a hub does not cut the spokes behind it off from
   the origin: when the origin's next entry contradicts the fake, the spoke drops
   it, moves its cursors back and fetches the real entries again.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from node.devnet import Node
from node.wire import federation_pb2
from tests.integration.rogue import Rogue


def content(node: Node, origin: str) -> bytes:
    with contextlib.closing(node.db()) as conn:
        return b"".join(r[0] for r in conn.execute(
            "SELECT payload FROM entries WHERE origin = ? AND payload IS NOT NULL", (origin,)))


def test_a_pinned_peer_cannot_recall_another_centers_record(make_node, tmp_path: Path) -> None:
    origin, victim, onward = make_node("xray"), make_node("victor"), make_node("whiskey")
    origin.pin(victim)
    victim.pin(origin)
    victim.pin(onward)
    onward.pin(victim)
    onward.pin(origin, connect=False)
    rec = origin.publish("--kind", "BULLETIN", "--title", "Harbour watch v1", "--audience",
                         "members")
    rid = rec["record_id"]
    onward.wait_for(lambda: onward.record_state(rid) == (1, "active"), 20, "v1 at whiskey")
    # The attack: a pinned peer sends, for xray's next seq, a placeholder that
    # claims xray recalled the record at the highest version there is.
    rogue = Rogue(tmp_path, "mallory")
    rogue.items = [federation_pb2.LogItem(origin="xray", seq=2, hash=os.urandom(32),
                                          recall_record_id=rid, recall_version=4294967295)]
    rogue.serve(victim.card())
    victim.ok("peers", "add", rogue.card.line())
    victim.wait_for(lambda: victim.head("xray") == 2, 20, "the rogue's placeholder")
    assert victim.record_state(rid) == (1, "active")  # nothing erased, nothing pinned
    assert b"Harbour watch v1" in content(victim, "xray")
    # The origin's real next entry is taken, and relayed onward.
    origin.ok("update", rid, "--title", "Harbour watch v2", "--reason", "new sighting")
    for node in (victim, onward):
        node.wait_for(lambda n=node: n.record_state(rid) == (2, "active"), 20,
                      f"v2 at {node.center}")
        assert b"Harbour watch v2" in content(node, "xray")
    assert onward.record_state(rid) == (2, "active")
    assert [n["kind"] for n in onward.json_lines("notices")] == ["correction"]
    rogue.stop()


def test_a_fake_placeholder_at_a_hub_does_not_cut_off_its_spokes(make_node,
                                                                  tmp_path: Path) -> None:
    origin, hub, spoke = make_node("yankee"), make_node("hubzulu"), make_node("spokez")
    origin.pin(hub)
    hub.pin(origin)
    hub.pin(spoke)
    spoke.pin(hub)
    spoke.pin(origin, connect=False)
    first = origin.publish("--kind", "BULLETIN", "--title", "first", "--audience", "members")
    spoke.wait_for(lambda: spoke.head("yankee") == first["seq"], 20, "seq 1 at the spoke")
    # The attack: a peer pinned by the hub sends a fake placeholder for the
    # origin's next seq before the origin publishes it; the hub relays it.
    rogue = Rogue(tmp_path, "mallory")
    rogue.items = [federation_pb2.LogItem(origin="yankee", seq=2, hash=os.urandom(32))]
    rogue.serve(hub.card())
    hub.ok("peers", "add", rogue.card.line())
    spoke.wait_for(lambda: spoke.head("yankee") == 2, 20, "the fake relayed to the spoke")
    second = origin.publish("--kind", "BULLETIN", "--title", "second", "--audience", "members")
    third = origin.publish("--kind", "BULLETIN", "--title", "third", "--audience", "members")
    hub.wait_for(lambda: hub.record_state(third["record_id"]) == (1, "active"), 20,
                 "the real entries at the hub")
    # The spoke converges on the origin's real entries, through the hub.
    for rec in (second, third):
        spoke.wait_for(lambda r=rec: spoke.record_state(r["record_id"]) == (1, "active"), 20,
                       f"{rec['record_id'][:8]} at the spoke")
    assert b"second" in content(spoke, "yankee") and b"third" in content(spoke, "yankee")
    with contextlib.closing(spoke.db()) as conn:
        rows = conn.execute("SELECT seq, payload IS NOT NULL FROM entries WHERE origin = "
                            "'yankee' ORDER BY seq").fetchall()
    assert rows == [(1, 1), (2, 1), (3, 1)]
    with contextlib.closing(hub.db()) as conn:  # logged against the liar, naming what
        charged = conn.execute("SELECT peer, seq, reason FROM rejections").fetchall()
    assert ("mallory", 2, "placeholder contradicted by the origin's entry") in charged
    rogue.stop()


def test_replication_limits_per_peer(make_node, tmp_path: Path) -> None:
    """Item 9: a bounded number of concurrent streams per peer, restarts from seq
    0 rate-limited, and re-sending a version the peer already got writes no new
    dissemination row."""
    import grpc

    from node.wire import federation_pb2_grpc

    node = make_node("limitz")
    node.edit_config("max_streams_per_peer = 4", "max_streams_per_peer = 2")
    node.edit_config("restarts_per_minute = 6", "restarts_per_minute = 3")
    node.stop()
    node.start()
    node.publish("--kind", "BULLETIN", "--title", "one", "--audience", "members")
    peer = Rogue(tmp_path, "greedy")
    node.ok("peers", "add", peer.card.line(), "--no-connect")
    node.ok("peers", "remove", "greedy")
    node.ok("peers", "add", peer.card.line())
    with peer.channel(node.listen, node.card()) as ch:
        fed = federation_pb2_grpc.FederationStub(ch)

        def subscribe(after: int):
            stream = fed.Replicate(federation_pb2.ReplicateRequest(cursors={"limitz": after}),
                                   timeout=10)
            return stream, next(stream)

        open_ = [subscribe(1) for _ in range(2)]
        try:
            subscribe(1)
            raise AssertionError("a third stream was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many replication streams" in exc.details()
        for stream, _ in open_:
            stream.cancel()
        time.sleep(0.5)
        firsts, refused = [], ""
        for _ in range(5):  # each one starts over from seq 0: a full resend
            try:
                stream, batch = subscribe(0)
                firsts.append(len(batch.items))
                stream.cancel()
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused = exc.details()
                break
        assert firsts == [1, 1, 1] and "restarts from seq 0" in refused
    sent = [d for d in node.json_lines("disseminations") if d["center"] == "greedy"]
    assert len(sent) == 1  # sent three times in full, disseminated once


def test_a_spoke_that_missed_the_correction_rewinds_and_fetches_again(make_node,
                                                                      tmp_path: Path) -> None:
    """The spoke was offline when the hub replaced the fake: it comes back with its
    cursor past the position, and the origin's next entry contradicts the fake it
    holds. It drops the fake, moves its cursors back, subscribes again and takes
    the real entries (before: 'wrong chain link', cut off for good)."""
    origin, hub, spoke = make_node("yorigin"), make_node("yhub"), make_node("yspoke")
    origin.pin(hub)
    hub.pin(origin)
    hub.pin(spoke)
    spoke.pin(hub)
    spoke.pin(origin, connect=False)
    origin.publish("--kind", "BULLETIN", "--title", "first", "--audience", "members")
    spoke.wait_for(lambda: spoke.head("yorigin") == 1, 20, "seq 1 at the spoke")
    rogue = Rogue(tmp_path, "mallory")
    rogue.items = [federation_pb2.LogItem(origin="yorigin", seq=2, hash=os.urandom(32))]
    rogue.serve(hub.card())
    hub.ok("peers", "add", rogue.card.line())
    spoke.wait_for(lambda: spoke.head("yorigin") == 2, 20, "the fake relayed to the spoke")
    spoke.stop()
    second = origin.publish("--kind", "BULLETIN", "--title", "second", "--audience", "members")
    third = origin.publish("--kind", "BULLETIN", "--title", "third", "--audience", "members")
    hub.wait_for(lambda: hub.record_state(third["record_id"]) == (1, "active"), 20,
                 "the real entries at the hub")
    spoke.start()
    for rec in (second, third):
        spoke.wait_for(lambda r=rec: spoke.record_state(r["record_id"]) == (1, "active"), 20,
                       f"{rec['record_id'][:8]} at the spoke")
    with contextlib.closing(spoke.db()) as conn:
        charged = conn.execute("SELECT peer, seq, reason FROM rejections").fetchall()
    assert ("yhub", 2, "placeholder contradicted by the origin's entry") in charged
    rogue.stop()
