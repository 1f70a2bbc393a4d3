"""Issue 12 item 3: network watches beyond direct peers (real daemons).

A watcher's signed standing set travels the way a federated query does (hop limit,
verified against the watcher's pinned or introduced key at every center, passed on
unchanged); each center judges its own records with its own policy and seals every
hit to the watcher, so hubs on the way back hold ciphertext only. What a watch
shows is judged independently here with the policy oracle of tests/node/test_policy.py.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc

from node import entities
from node.devnet import Node
from node.identity import parse_card
from node.sealing import seal_hit
from node.types import Decision, Requester
from node.wire import federation_pb2, federation_pb2_grpc
from tests.integration.rogue import Rogue
from tests.integration.test_network import home_bytes
from tests.integration.test_watch import (
    PLATE,
    USERS,
    _standing,
    hits,
    network_expected,
    publish_all,
)
from tests.node.test_policy import oracle

POLL = ("introduction_poll_s = 30.0", "introduction_poll_s = 0.3")
SECRET = "FWD-WATCH-5e1d content only the watcher may read"


def fast(make_node, center: str) -> Node:
    node = make_node(center, start=False)
    node.edit_config(*POLL)
    return node.start()


def known(node: Node) -> set[str]:
    return {p["center"] for p in node.json_lines("peers", "list")}


def remote(node: Node) -> dict[str, dict]:
    return {x["watch_id"]: x for x in node.json_lines("watch", "list", "--remote")}


def refused(node: Node, peer: str) -> int:
    with contextlib.closing(node.db()) as conn:
        row = conn.execute("SELECT dropped FROM watch_dropped WHERE who = ?",
                           (f"refused:{peer}",)).fetchone()
    return row[0] if row else 0


def test_watch_reaches_a_center_two_hops_away_sealed_across_the_hub(make_node,
                                                                      tmp_path: Path) -> None:
    hub, w, c = fast(make_node, "hub"), fast(make_node, "watcher"), fast(make_node, "origin")
    for s in (w, c):  # each exchanges cards with the hub alone; keys by introduction
        hub.pin(s)
        s.pin(hub, "--introducer")
    w.wait_for(lambda: "origin" in known(w), what="origin introduced at the watcher")
    c.wait_for(lambda: "watcher" in known(c), what="watcher introduced at the origin")
    for u, attrs in USERS.items():
        w.add_user(u, *attrs)
    ids = {u: w.json("watch", "add", "--network", "--entity", PLATE, user=u)["watch_id"]
           for u in USERS}
    # The standing queries reach the origin through the hub, which it names.
    c.wait_for(lambda: set(remote(c)) == set(ids.values()), 20, "standing queries at origin")
    assert {(x["center"], x.get("via")) for x in remote(c).values()} == {("watcher", "hub")}
    assert {(x["center"], x.get("via")) for x in remote(hub).values()} == {("watcher", None)}

    # Every policy combination, judged at the origin for each user and again at
    # the watcher; restricted records notify the origin naming the watcher.
    records = {rid: ("origin", p) for rid, p in publish_all(c, tmp_path, "watcher").items()}
    for u, attrs in USERS.items():
        want = network_expected(records, "watcher", u, attrs)
        w.wait_for(lambda u=u, want=want: hits(w, u) == want, 40, f"{u}'s hits two hops away")
    # Hits only reachable through the forwarded standing query (the hub cannot
    # relay them): records for the watcher alone, and pointers.
    held_by_hub = hub.held_record_ids()
    want_bob = network_expected(records, "watcher", "bob", ())
    assert any(rid not in held_by_hub and a == "FULL" for rid, a in
               network_expected(records, "watcher", "ann", USERS["ann"]).items())
    assert any(a == "POINTER" for a in want_bob.values())
    notices = [n for n in c.json_lines("notices") if n["kind"] == "deconfliction"
               and n.get("watch_id")]
    want_notify = {(rid, f"watcher/{u}") for rid, (_, p) in records.items()
                   for u, attrs in USERS.items()
                   if oracle(p, "origin", "origin", Requester("watcher", u, frozenset(attrs)))
                   is Decision.NOTIFY_ONLY}
    assert want_notify
    assert sorted((n["records"][0], n["searched_by"]) for n in notices) == sorted(want_notify)
    sent = {(d["record_id"], d["center"], d.get("via")) for d in c.json_lines("disseminations")
            if d["channel"] == "watch"}
    assert {rid for rid, center, via in sent if (center, via) == ("watcher", "hub")} >= {
        rid for rid in want_bob if rid not in held_by_hub}

    # AMBER for {origin, watcher}: a FULL hit sealed through the hub, whose home
    # (database, WAL, log) never holds the text; the origin's does.
    rec = c.publish("--kind", "BOLO", "--title", SECRET, "--entity", PLATE, "--tlp", "AMBER",
                    "--audience", "origin", "--audience", "watcher")
    w.wait_for(lambda: hits(w, "ann").get(rec["record_id"]) == "FULL", 20, "sealed FULL hit")
    shown = [h for h in w.json_lines("watch", "hits", user="ann")
             if h["record_id"] == rec["record_id"]]
    assert shown[0]["title"] == SECRET and shown[0]["from"] == "origin"
    assert SECRET.encode() in home_bytes(c)
    assert SECRET.encode() not in home_bytes(hub)

    # The hub is down while the origin publishes a match: delivered once it is back.
    hub.stop()
    late = c.publish("--kind", "BOLO", "--title", "While the hub was out", "--entity", PLATE,
                     "--tlp", "AMBER", "--audience", "origin", "--audience", "watcher")
    time.sleep(0.5)
    hub.start()
    w.wait_for(lambda: hits(w, "ann").get(late["record_id"]) == "FULL", 30,
               "hit held at the origin while the hub was down")

    # Removal at the watcher withdraws the standing query two hops away.
    w.ok("watch", "remove", ids["bob"], user="bob")
    c.wait_for(lambda: set(remote(c)) == {ids["ann"]}, 20, "withdrawal at the origin")
    # Expiry too.
    short = w.json("watch", "add", "--network", "--entity", "phone=555-123-0000",
                   "--expires", "3s", user="ann")["watch_id"]
    c.wait_for(lambda: short in remote(c), 20, "short watch at the origin")
    c.wait_for(lambda: short not in remote(c), 10, "short watch expired at the origin")
    assert set(remote(c)) == {ids["ann"]}


def test_hostile_hop_cannot_alter_forge_or_speak_for_a_watcher(make_node,
                                                                tmp_path: Path) -> None:
    w, c = make_node("watcher"), make_node("origin")
    hop = Rogue(tmp_path, "hop")
    w.pin(c, "--no-connect")  # keys only: each verifies the other's signatures
    c.pin(w, "--no-connect")
    c.ok("peers", "add", hop.card.line())  # the hop dials the origin
    hop.serve(w.card())
    w.ok("peers", "add", hop.card.line())  # the watcher dials the hop only
    w.add_user("ann", "sworn_le")
    wid = w.json("watch", "add", "--network", "--entity", PLATE, user="ann")["watch_id"]

    def taken() -> federation_pb2.SignedStandingSet | None:
        for s in reversed(hop.standing_sets):
            if wid in {q.watch_id for q in federation_pb2.StandingSet.FromString(s.body).queries}:
                return s
        return None

    w.wait_for(lambda: taken() is not None, 20, "the watcher's set at the hop")
    got = taken()
    assert got is not None and got.hops_left == 2

    def call(req: federation_pb2.SignedStandingSet):  # type: ignore[no-untyped-def]
        with hop.channel(c.listen, c.card()) as ch:
            try:
                return grpc.StatusCode.OK, federation_pb2_grpc.FederationStub(ch).SetStanding(
                    req, timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()

    onward = federation_pb2.SignedStandingSet()
    onward.CopyFrom(got)
    onward.hops_left = 1
    onward.path.extend(["watcher", "hop"])
    deadline = time.monotonic() + 15
    while True:  # the new pin applies to the listener within a moment
        status, reply = call(onward)
        if status != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == grpc.StatusCode.OK, reply
    assert {(k, x.get("via")) for k, x in remote(c).items()} == {(wid, "hop")}

    # A set naming another watcher, signed by the hop: refused; so is one naming a
    # center the origin has no key for. Nothing changes.
    key = entities.match_keys("plate", "WCH 100")[0]
    now = int(time.time() * 1000)
    status, why = call(_standing(hop, "watcher", now + 60_000, 1, key))
    assert status == grpc.StatusCode.PERMISSION_DENIED and "not signed by" in why
    status, why = call(_standing(hop, "zz", now, 1, key))
    assert status == grpc.StatusCode.PERMISSION_DENIED and "neither pinned" in why
    status, why = call(onward)
    assert status == grpc.StatusCode.ALREADY_EXISTS  # a replay
    assert {(k, x.get("via")) for k, x in remote(c).items()} == {(wid, "hop")}

    rec = c.publish("--kind", "BOLO", "--title", SECRET, "--entity", PLATE, "--tlp", "AMBER",
                    "--audience", "origin", "--audience", "watcher")
    with hop.channel(c.listen, c.card()) as ch:
        stream = federation_pb2_grpc.FederationStub(ch).WatchHits(
            federation_pb2.WatchHitsRequest(after=0), timeout=20)
        batch = next(b for b in stream if b.hits)
        stream.cancel()
    assert len(batch.hits) == 1 and batch.hits[0].HasField("sealed")
    sealed = batch.hits[0].sealed
    assert (sealed.watcher, sealed.center, sealed.watch_id) == ("watcher", "origin", wid)
    assert SECRET.encode() not in batch.SerializeToString()  # the hop sees ciphertext
    sent = [d for d in c.json_lines("disseminations") if d["channel"] == "watch"]
    assert [(d["record_id"], d["center"], d.get("via")) for d in sent] == [
        (rec["record_id"], "watcher", "hop")]

    def serve(hit: federation_pb2.SealedWatchHit, last: int) -> None:
        hop.hits_for("watcher").put(federation_pb2.WatchHitBatch(
            hits=[federation_pb2.WatchHit(id=last, sealed=hit)], last=last))

    # One byte of the ciphertext flipped: caught at the watcher, counted.
    flipped = federation_pb2.SealedWatchHit()
    flipped.CopyFrom(sealed)
    flipped.sealed = sealed.sealed[:-1] + bytes([sealed.sealed[-1] ^ 1])
    serve(flipped, 1)
    w.wait_for(lambda: refused(w, "hop") == 1, 20, "the altered hit refused")
    # Relabelled to another watch (the seal binds it): refused.
    relabelled = federation_pb2.SealedWatchHit()
    relabelled.CopyFrom(sealed)
    relabelled.watch_id = "0" * 16
    serve(relabelled, 2)
    # Sealed by the hop itself in the origin's name: not the origin's signature.
    forged = federation_pb2.SealedWatchHit()
    forged.CopyFrom(sealed)
    inner = federation_pb2.WatchHit(watch_id=wid)
    forged.sealed, forged.signature, forged.key_id = seal_hit(
        hop.signing, parse_card(w.card()).seal_key, "watcher", wid, "origin", sealed.number,
        inner.SerializeToString())
    serve(forged, 3)
    w.wait_for(lambda: refused(w, "hop") == 3, 20, "the relabelled and forged hits refused")
    assert rec["record_id"] not in hits(w, "ann")
    # Passed on unchanged: the watcher opens it and shows the origin's record.
    serve(sealed, 4)
    w.wait_for(lambda: hits(w, "ann").get(rec["record_id"]) == "FULL", 20, "the honest hit")
    assert refused(w, "hop") == 3
    hop.stop()
