"""Issue 11 item 3: an AMBER record for named centers reaches them through hubs
outside its audience as copies sealed by the origin (real daemons).

The origin seals the signed envelope to each named center's X25519 card key and
signs each copy; every hop checks that signature without opening, keeps the copy
with its placeholder and passes it on; only a named center opens one, verifies
the envelope against the origin's key like any entry and keeps the content. A
forwarding hop never holds what it could not hold in clear.
"""

from __future__ import annotations

import contextlib

from node.devnet import Node
from tests.integration.test_introductions import fast, peers
from tests.integration.test_network import home_bytes

SECRET = "SEALED-RELAY-41c9e2 stash house on Elm"


def chain(make_node) -> tuple[Node, Node, Node, Node]:
    """s1 - h1 - h2 - s2: each spoke pins its hub only, the hubs each other, all as
    introducers; every other key arrives by introduction (never dialled)."""
    s1, h1, h2, s2 = (fast(make_node, c) for c in ("s1", "h1", "h2", "s2"))
    for a, b in ((s1, h1), (h1, h2), (h2, s2)):
        a.pin(b, "--introducer")
        b.pin(a, "--introducer")
    for x, others in ((s1, {"h2", "s2"}), (s2, {"s1", "h1"}), (h1, {"s2"}), (h2, {"s1"})):
        x.wait_for(lambda x=x, o=others: o <= set(peers(x)), timeout=30,
                   what=f"{sorted(others)} introduced at {x.center}")
    return s1, h1, h2, s2


def entry_row(node: Node, origin: str, seq: int) -> tuple | None:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT payload IS NOT NULL, record_id FROM entries "
                            "WHERE origin = ? AND seq = ?", (origin, seq)).fetchone()


def copies(node: Node, origin: str, seq: int) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*) FROM sealed_copies WHERE origin = ? AND seq = ?",
                            (origin, seq)).fetchone()[0]


def test_amber_for_named_centers_crosses_hubs_sealed_and_only_they_hold_it(make_node) -> None:
    s1, h1, h2, s2 = chain(make_node)
    rec = s1.publish("--kind", "BOLO", "--title", SECRET, "--entity", "plate=SEAL 1",
                     "--tlp", "AMBER", "--audience", "s1", "--audience", "s2",
                     "--discoverability", "pointer")
    rid, seq = rec["record_id"], int(rec["seq"])

    # The named center behind two hubs holds it, verified like any entry.
    s2.wait_for(lambda: rid in s2.held_record_ids(), timeout=30, what="record at s2")
    got = s2.json("get", rid)
    assert got["title"] == SECRET and got["access"] == "FULL"
    assert got["verification"]["valid"] is True and got["verification"]["signer"] == "s1"

    # The hubs hold the position (a placeholder) and the sealed copy, never content.
    for hub in (h1, h2):
        hub.wait_for(lambda hub=hub: copies(hub, "s1", seq) == 1, what=f"copy at {hub.center}")
        row = entry_row(hub, "s1", seq)
        assert row is not None and row[0] == 0, hub.center
        assert rid not in hub.held_record_ids()
        assert SECRET.encode() not in home_bytes(hub), hub.center
        assert b"SEALED-RELAY" not in home_bytes(hub), hub.center
    assert copies(s2, "s1", seq) == 1  # s2 passes it on too

    # 28 CFR 23.20(f): the origin logged the copy made for s2, and for no hub.
    rows = s1.json_lines("disseminations", rid)
    sealed = [(r["center"], r["decision"]) for r in rows if r["channel"] == "sealed"]
    assert sealed == [("s2", "FULL")]
    assert not any(r["center"] in ("h1", "h2") and r["decision"] == "FULL" for r in rows)
