"""Issue 11: introductions across real daemons.

A spoke that exchanged cards with its hub alone adopts the hub's cards for
verification (never dialled), follows the hub's view, and can then receive and
query the other spokes; an introduction never overrides a key already pinned
and cannot name this node's own center id.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from node.devnet import Node
from tests.integration.rogue import Rogue

POLL = ("introduction_poll_s = 30.0", "introduction_poll_s = 0.3")


def fast(make_node, center: str) -> Node:
    node = make_node(center, start=False)
    node.edit_config(*POLL)
    return node.start()


def peers(node: Node) -> dict[str, dict]:
    """`fcnode peers list --json`, by the local API (polled)."""
    return {p["center"]: p for p in node.call("ListPeers")}


def link_received(node: Node, center: str) -> int:
    return next(p["received"] for p in node.json("status")["peers"] if p["center"] == center)


def test_spokes_learn_each_other_from_their_hub_and_follow_its_view(make_node) -> None:
    hub, s1, s2 = fast(make_node, "hub"), fast(make_node, "s1"), fast(make_node, "s2")
    for s in (s1, s2):  # each spoke exchanges cards with the hub alone
        hub.pin(s)
        s.pin(hub, introducer=True)
    s1.wait_for(lambda: "s2" in peers(s1), what="s2 introduced at s1")
    s2.wait_for(lambda: "s1" in peers(s2), what="s1 introduced at s2")
    p = peers(s1)["s2"]
    assert (p["introduced_by"], p["connect"], p["conflict"]) == ("hub", False, "")
    assert peers(s1)["hub"]["introducer"] is True

    # The introduced key verifies: s2's record reaches s1 through the hub, and
    # a query from s1 reaches s2 through the hub (s2 checks s1's signature with
    # the key it was introduced, and seals its answer to s1's introduced key).
    rec = s2.publish("--kind", "BULLETIN", "--title", "from s2", "--entity", "plate=INT 1",
                     "--tlp", "GREEN", "--audience", "members")
    s1.wait_for(lambda: rec["record_id"] in s1.held_record_ids(), what="s2's record at s1")
    s2.publish("--kind", "BOLO", "--title", "s2 for s1 only", "--entity", "plate=INT 1",
               "--tlp", "AMBER", "--audience", "s1")
    lines = s1.json_lines("query", "--entity", "plate=INT 1", "--timeout", "8s")
    summary = lines[-1]
    assert "s2 for s1 only" in [r.get("title") for r in lines[:-1]]
    assert summary["summary"]["s2"]["via"] == ["hub"]

    # A key rotation announced in s2's own log flows to s1 like any entry: s1
    # verifies what s2 signs with its new key, and s2's queries (signed with it)
    # are answered by s1 through the hub. The introduced card is unchanged.
    s2.json("keys", "rotate", "--signing")
    after = s2.publish("--kind", "BULLETIN", "--title", "after rotation", "--entity",
                       "plate=INT 2", "--tlp", "GREEN", "--audience", "members")
    s1.wait_for(lambda: after["record_id"] in s1.held_record_ids(), what="rotated record")
    s1.publish("--kind", "BULLETIN", "--title", "s1 on INT 2", "--entity", "plate=INT 2",
               "--tlp", "AMBER", "--audience", "s2")
    lines = s2.json_lines("query", "--entity", "plate=INT 2", "--timeout", "8s")
    assert "s1 on INT 2" in [r.get("title") for r in lines[:-1]]
    assert lines[-1]["summary"]["s1"]["via"] == ["hub"]
    assert not peers(s1)["s2"]["conflict"]

    # Removed at the introducer: removed here. The set of centers changed, so the
    # link to the hub subscribes again, on the link it has: what it received so
    # far is not reset (tearing down every link at each adoption cost the whole
    # network its connections while 80 centers were introduced).
    received = link_received(s1, "hub")
    assert received > 0
    hub.ok("peers", "remove", "s2")
    s1.wait_for(lambda: "s2" not in peers(s1), what="s2 removed at s1")
    s1.wait_for(lambda: "replication link resubscribes" in s1.log_tail(20000),
                what="the hub link resubscribed")
    assert link_received(s1, "hub") >= received
    with contextlib.closing(s1.db()) as conn:
        actions = [json.loads(d) for a, d in conn.execute(
            "SELECT action, detail FROM audit WHERE action = 'peer.introduced'")]
    assert any("s2" in d["adopted"] for d in actions)
    assert any("s2" in d["removed"] for d in actions)


def test_conflicting_key_and_own_id_are_refused_and_shown(make_node, tmp_path: Path) -> None:
    hub, s1 = fast(make_node, "hub"), fast(make_node, "s1")
    xx = make_node("xx", start=False)  # a real center, pinned at the hub
    (tmp_path / "fake").mkdir()
    fake_xx, fake_s1 = Node(tmp_path / "fake", "xx"), Node(tmp_path / "fake", "s1")
    hub.pin(s1)
    hub.pin(xx, connect=False)
    s1.pin(hub, introducer=True)
    s1.wait_for(lambda: "xx" in peers(s1), what="xx introduced at s1")
    real = peers(s1)["xx"]["tls_fingerprint"]

    # A second introducer offers another key for xx, and a card for s1 itself.
    rogue = Rogue(tmp_path, "rogue")
    rogue.introduces = [(fake_xx.card(), []), (fake_s1.card(), [])]
    rogue.serve(s1.card())
    s1.ok("peers", "add", rogue.card.line(), "--introducer")

    def conflicts() -> dict[str, str]:
        return {k["center"]: k["why"] for k in s1.json("status").get("key_conflicts", [])}

    try:
        s1.wait_for(lambda: {"xx", "s1"} <= set(conflicts()), what="conflicts in status")
        assert "own center id" in conflicts()["s1"]
        p = peers(s1)["xx"]
        # Not replaced: still the hub's card; and no longer trusted (two
        # introducers disagree) until an administrator decides.
        assert p["tls_fingerprint"] == real and p["introduced_by"] == "hub"
        assert p["conflict"]
        assert "s1" not in peers(s1)
        log = s1.log_path.read_text()
        assert "introduction conflict" in log
        # The administrator decides: pins the real card directly.
        s1.pin(xx, connect=False)
        assert not peers(s1)["xx"]["conflict"] and not peers(s1)["xx"]["introduced_by"]
        # A direct pin is never overridden: the rogue's offer is only reported.
        s1.wait_for(lambda: "pinned directly" in conflicts().get("xx", ""),
                    what="direct-pin conflict reported")
        assert peers(s1)["xx"]["tls_fingerprint"] == real
    finally:
        rogue.stop()
