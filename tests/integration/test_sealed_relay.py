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
from pathlib import Path

from node.config.identity import parse_card
from node.core.sealing import seal_copy
from node.devnet import Node
from node.wire import federation_pb2
from tests.integration.rogue import Rogue
from tests.integration.test_introductions import fast, peers
from tests.integration.test_metrics import scrape, with_metrics
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

    # Narrowed: s2 is no longer named. The hubs hold no copy to recall, so the origin
    # seals v2's signed stub (no content) to s2: s2's v1 goes; newest version wins.
    upd = s1.json("update", rid, "--audience", "s1", "--title", SECRET + " v2",
                  "--reason", "shared in error")
    assert upd["version"] == 2

    def state() -> tuple | None:
        with contextlib.closing(s2.db()) as conn:
            return conn.execute("SELECT version, state FROM records WHERE record_id = ?",
                                (rid,)).fetchone()

    s2.wait_for(lambda: state() == (2, "recalled"), timeout=30, what="recall at s2")
    assert rid not in s2.held_record_ids()
    assert [(n["kind"], n["record_id"]) for n in s2.json_lines("notices")] == [("recall", rid)]
    assert s2.cli("get", rid).returncode != 0
    rows = s1.json_lines("disseminations", rid)
    assert ("s2", "sealed", "RECALL", 2) in {(r["center"], r["channel"], r["decision"],
                                              r["version"]) for r in rows}


def test_hostile_hub_cannot_add_alter_or_flood_copies_and_honest_delivery_follows(
        make_node, tmp_path: Path) -> None:
    s1, h = make_node("s1"), make_node("h1")
    s2 = make_node("s2", start=False)
    url = with_metrics(s2)
    s2.start()
    s1.pin(h)
    h.pin(s1)
    h.pin(s2)
    for a, b in ((s1, s2), (s2, s1)):  # keys only: s1 seals to s2, s2 verifies s1
        a.pin(b, "--no-connect")
    rec = s1.publish("--kind", "BOLO", "--title", SECRET, "--tlp", "AMBER",
                     "--audience", "s1", "--audience", "s2")
    rid, seq = rec["record_id"], int(rec["seq"])
    h.wait_for(lambda: copies(h, "s1", seq) == 1, what="copy at the honest hub")
    with contextlib.closing(h.db()) as conn:
        digest, sealed, signature, kid = conn.execute(
            "SELECT hash, sealed, signature, key_id FROM sealed_copies").fetchone()

    def flip(b: bytes, i: int = -1) -> bytes:
        return b[:i] + bytes([b[i] ^ 1]) + (b[i + 1:] if i != -1 else b"")

    rogue = Rogue(tmp_path, "rogue")
    bad_signature = federation_pb2.SealedCopy(sealed=sealed, signature=flip(signature),
                                              key_id=kid)
    altered = federation_pb2.SealedCopy(sealed=flip(sealed, 40), signature=signature,
                                        key_id=kid)
    # Signed, but by the rogue's own key: not the origin's.
    forged = seal_copy(rogue.signing, parse_card(s2.card()).seal_key, "s1", seq, digest,
                       b"junk that is no envelope")
    own_key = federation_pb2.SealedCopy(sealed=forged.sealed, signature=forged.signature,
                                        key_id=forged.key_id)
    flood = [federation_pb2.SealedCopy(sealed=flip(sealed, i), signature=signature,
                                       key_id=kid) for i in range(40, 80)]
    rogue.items = [federation_pb2.LogItem(origin="s1", seq=seq, hash=digest, sealed=c)
                   for c in ([bad_signature, altered, own_key], flood)]
    rogue.serve(s2.card())
    try:
        s2.ok("peers", "add", rogue.card.line())

        def dropped() -> float:
            return sum(v for (name, labels), v in scrape(url)[1].items()
                       if name == "fcnode_sealed_copies_dropped_total")

        s2.wait_for(lambda: dropped() >= 43, what="copies dropped at s2")
        samples = scrape(url)[1]
        by_reason = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                     if name == "fcnode_sealed_copies_dropped_total"}
        # 32 of the flood checked (bad signatures), the 8 beyond the bound not looked at.
        assert by_reason == {"bad_signature": 2 + 32, "unknown_key": 1, "too_many": 8}
        assert copies(s2, "s1", seq) == 0  # nothing stored
        assert rid not in s2.held_record_ids()
        with contextlib.closing(s2.db()) as conn:
            reasons = {r for (r,) in conn.execute("SELECT reason FROM rejections "
                                                   "WHERE peer = 'rogue'")}
        assert any("sealed copy dropped" in r for r in reasons)

        # The honest hub delivers: the copy opens at s2, the placeholder the rogue
        # left there is upgraded to the origin's entry.
        s2.pin(h)
        s2.wait_for(lambda: rid in s2.held_record_ids(), timeout=30, what="honest delivery")
        assert s2.json("get", rid)["title"] == SECRET
        assert copies(s2, "s1", seq) == 1
    finally:
        rogue.stop()
