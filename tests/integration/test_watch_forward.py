"""Issue 12 item 3: network watches beyond direct peers (real daemons).

A watcher's signed standing set travels the way a federated query does (hop limit,
verified against the watcher's pinned or introduced key at every center, passed on
unchanged); each center judges its own records with its own policy and seals every
hit to the watcher, so hubs on the way back hold ciphertext only. What a watch
shows is judged independently here with the policy oracle of tests/node/core/test_policy.py.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc

from node.config.identity import parse_card
from node.core import entities
from node.core.sealing import seal_hit
from node.devnet import Node
from node.wire import federation_pb2, federation_pb2_grpc
from tests.integration.rogue import Rogue
from tests.integration.test_network import home_bytes
from tests.integration.test_watch import (
    PLATE,
    USERS,
    _standing,
    hits,
    network_expected,
    notices_expected,
    publish_all,
)

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
    want_notify = notices_expected(records, "watcher")
    assert want_notify
    assert sorted((n["records"][0], n["searched_by"]) for n in notices) == sorted(want_notify)
    sent = {(d["record_id"], d["center"], d.get("via")) for d in c.json_lines("disseminations")
            if d["channel"] == "watch"}
    assert {rid for rid, center, via in sent if (center, via) == ("watcher", "hub")} >= {
        rid for rid in want_bob if rid not in held_by_hub}

    # AMBER for {origin, watcher}: a FULL hit sealed through the hub, whose home
    # (database, WAL, log) never holds the text; the origin's does. Not relayable
    # (--no-relay): else the record itself reaches the watcher as a sealed copy
    # through the hub and the hit shows as local; this is the watch's own path.
    rec = c.publish("--kind", "BOLO", "--title", SECRET, "--entity", PLATE, "--tlp", "AMBER",
                    "--audience", "origin", "--audience", "watcher", "--no-relay")
    w.wait_for(lambda: hits(w, "ann").get(rec["record_id"]) == "FULL", 20, "sealed FULL hit")
    shown = [h for h in w.json_lines("watch", "hits", user="ann")
             if h["record_id"] == rec["record_id"]]
    assert shown[0]["title"] == SECRET and shown[0]["from"] == "origin"
    assert SECRET.encode() in home_bytes(c)
    assert SECRET.encode() not in home_bytes(hub)

    # The hub is down while the origin publishes a match: delivered once it is back.
    hub.stop()
    late = c.publish("--kind", "BOLO", "--title", "While the hub was out", "--entity", PLATE,
                     "--tlp", "AMBER", "--audience", "origin", "--audience", "watcher",
                     "--no-relay")
    time.sleep(0.5)
    hub.start()
    w.wait_for(lambda: hits(w, "ann").get(late["record_id"]) == "FULL", 30,
               "hit held at the origin while the hub was down")
    # The origin restarts: the forwarded standing query (and its way back) is kept.
    c.stop()
    c.start()
    assert {(x["center"], x.get("via")) for x in remote(c).values()} == {("watcher", "hub")}
    again = c.publish("--kind", "BOLO", "--title", "After the origin restarted", "--entity",
                      PLATE, "--tlp", "AMBER", "--audience", "origin", "--audience", "watcher",
                      "--no-relay")
    w.wait_for(lambda: hits(w, "ann").get(again["record_id"]) == "FULL", 30,
               "hit after the origin restarted")

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


def test_what_a_peer_can_push_through_a_hub_is_bounded(make_node, tmp_path: Path) -> None:
    import os

    node = make_node("hub", start=False)
    for old, new in (("max_standing_sets_per_peer = 100", "max_standing_sets_per_peer = 1"),
                     # (one watcher's sets passed on: a tenth of that, 2 a minute)
                     ("standing_sets_per_minute = 600", "standing_sets_per_minute = 20"),
                     ("max_watch_hits = 1000", "max_watch_hits = 3"),
                     ("max_relay_bytes = 16777216", "max_relay_bytes = 2500")):
        node.edit_config(old, new)
    node.start()
    aa = Rogue(tmp_path, "aa")  # a peer that passes sets on and serves hits
    x1, x2, x3 = (Rogue(tmp_path, x) for x in ("x1", "x2", "x3"))  # watchers
    aa.serve(node.card())
    for r in (aa, x1):
        node.ok("peers", "add", r.card.line())
    for r in (x2, x3):
        node.ok("peers", "add", r.card.line(), "--no-connect")  # keys only
    key = entities.match_keys("plate", "WCH 100")[0]
    now = int(time.time() * 1000)

    def call(rogue: Rogue, req: federation_pb2.SignedStandingSet):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 15
        while True:  # a new pin applies to the listener within a moment
            with rogue.channel(node.listen, node.card()) as ch:
                try:
                    return grpc.StatusCode.OK, federation_pb2_grpc.FederationStub(
                        ch).SetStanding(req, timeout=10)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        return exc.code(), exc.details()
            time.sleep(0.3)

    def via_aa(watcher: Rogue, issued: int, path: list[str] | None = None):  # type: ignore[no-untyped-def]
        req = _standing(watcher, watcher.center, issued, 1, key)
        req.hops_left = 1
        req.path.extend(path if path is not None else [watcher.center, "aa"])
        return req

    # x1's own set (direct); x2's passed on by aa; x3's would be a second watcher
    # behind aa: over max_standing_sets_per_peer.
    assert call(x1, _standing(x1, "x1", now, 1, key))[0] == grpc.StatusCode.OK
    assert call(aa, via_aa(x2, now))[0] == grpc.StatusCode.OK
    status, why = call(aa, via_aa(x3, now))
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "already brings" in why
    status, why = call(aa, via_aa(x2, now + 1, [f"c{i}" for i in range(17)]))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "path" in why
    # Sets per minute of one watcher from one peer (each refusal above counted too).
    codes = [call(aa, via_aa(x2, now + 2 + i)) for i in range(4)]
    assert codes[-1][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in codes[-1][1]
    assert {x["center"] for x in node.json_lines("watch", "list", "--remote")} == {"x1", "x2"}

    # aa serves a flood of sealed hits for x1 (whose set came directly): the hub
    # keeps at most max_watch_hits rows and max_relay_bytes for x1, counts the rest;
    # a hit for a watch x1 does not hold is not kept; one signed in the name of a
    # center whose key the hub holds, but not by it, is refused and counted.
    def sealed(n: int, watch_id: str = "w0", center: str = "zz") -> federation_pb2.WatchHit:
        return federation_pb2.WatchHit(id=n, sealed=federation_pb2.SealedWatchHit(
            watcher="x1", center=center, watch_id=watch_id, number=n,
            sealed=os.urandom(1000), signature=bytes(64), key_id="00"))

    flood = [sealed(n) for n in range(1, 11)] + [sealed(11, "nope"), sealed(12, center="x2")]
    aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=flood, last=12))

    def outbox() -> tuple[int, int, int]:
        with contextlib.closing(node.db()) as conn:
            n, size = conn.execute("SELECT count(*), coalesce(sum(length(sealed)), 0) FROM "
                                   "watch_outbox WHERE center = 'x1'").fetchone()
            row = conn.execute("SELECT dropped FROM watch_dropped WHERE who = 'center:x1'"
                               ).fetchone()
        return n, size, row[0] if row else 0

    node.wait_for(lambda: refused(node, "aa") == 1, 20, "the hit forged in x2's name")
    n, size, dropped = outbox()
    assert n == 2 and size <= 2500 and dropped == 8, (n, size, dropped)
    with contextlib.closing(node.db()) as conn:
        kept = [r[0] for r in conn.execute("SELECT seq FROM watch_outbox WHERE center = 'x1' "
                                           "ORDER BY id")]
    assert kept == [9, 10]  # the newest
    aa.stop()


def test_a_watcher_that_becomes_a_direct_peer_is_answered_directly(make_node) -> None:
    w, hub, c = make_node("watcher"), make_node("hub"), make_node("origin")
    for s in (w, c):
        hub.pin(s)
        s.pin(hub)
    w.pin(c, "--no-connect")  # keys only, at first
    c.pin(w, "--no-connect")
    w.add_user("ann", "sworn_le")
    wid = w.json("watch", "add", "--network", "--entity", PLATE, user="ann")["watch_id"]
    c.wait_for(lambda: remote(c).get(wid, {}).get("via") == "hub", 20, "set through the hub")
    first = c.publish("--kind", "BOLO", "--title", "through the hub", "--entity", PLATE,
                      "--tlp", "AMBER", "--audience", "origin", "--audience", "watcher")
    w.wait_for(lambda: hits(w, "ann").get(first["record_id"]) == "FULL", 20, "sealed hit")
    # Now they dial each other: the watcher's set (the very bytes the hub passed
    # on) arrives from the watcher itself, and the way back becomes the direct link.
    w.pin(c)
    c.pin(w)
    c.wait_for(lambda: remote(c)[wid].get("via") is None, 20, "the direct way back")
    then = c.publish("--kind", "BOLO", "--title", "direct", "--entity", PLATE, "--tlp",
                     "AMBER", "--audience", "origin", "--audience", "watcher")
    w.wait_for(lambda: hits(w, "ann").get(then["record_id"]) == "FULL", 20, "direct hit")
    sent = {d["record_id"]: d.get("via") for d in c.json_lines("disseminations")
            if d["channel"] == "watch"}
    assert sent == {first["record_id"]: "hub", then["record_id"]: None}
    # The hub keeps passing the same set on: refused there as a replay, the direct
    # way back stays.
    time.sleep(1.0)
    assert remote(c)[wid].get("via") is None


def test_a_first_hop_that_drops_hits_does_not_cut_the_watcher_off(make_node,
                                                                  tmp_path: Path) -> None:
    """The first peer to bring a watcher's set was its only way back: a hostile
    hop passing sets on at once and never pulling the hits cut the watcher off
    for as long as it liked. The same set through an honest hub is a second way
    back: the hit reaches the watcher through it; unpinning the hostile hop
    leaves the honest way as the way."""
    w, hub, c = make_node("watcher"), make_node("hub"), make_node("origin")
    bad = Rogue(tmp_path, "bad")
    bad.serve(w.card())
    w.ok("peers", "add", bad.card.line())  # the watcher sends the rogue its set
    c.ok("peers", "add", bad.card.line())  # a peer: the rogue's calls are let in
    c.ok("peers", "add", w.card(), "--no-connect")  # keys only: the watcher's set and seal
    w.ok("peers", "add", c.card(), "--no-connect")  # keys only: the origin's hits
    w.add_user("ann", "sworn_le")
    wid = w.json("watch", "add", "--network", "--entity", PLATE, user="ann")["watch_id"]
    w.wait_for(lambda: bad.standing_sets, 15, "the set at the rogue")
    first = federation_pb2.SignedStandingSet()
    first.CopyFrom(bad.standing_sets[-1])
    first.hops_left = max(0, first.hops_left - 1)
    first.path.append("bad")
    # The rogue passes it on first.
    assert bad.set_standing(c.listen, c.card(), first) == grpc.StatusCode.OK
    assert remote(c)[wid]["via"] == "bad"
    # The honest way: the watcher and the origin each pin the hub.
    for a, b in ((w, hub), (hub, c)):
        a.pin(b)
        b.pin(a)
    c.wait_for(lambda: remote(c)[wid].get("also_via") == ["hub"], 20,
               "the hub as a second way back at the origin")
    assert remote(c)[wid]["via"] == "bad"
    rec = c.publish("--kind", "BOLO", "--title", SECRET, "--entity", PLATE, "--tlp", "AMBER",
                    "--audience", "origin", "--audience", "watcher", "--no-relay")
    w.wait_for(lambda: hits(w, "ann").get(rec["record_id"]) == "FULL", 30,
               "the hit through the honest hub")
    sent = {(d["record_id"], d["center"], d.get("via")) for d in c.json_lines("disseminations")
            if d["channel"] == "watch"}
    assert (rec["record_id"], "watcher", "hub") in sent  # the rogue never pulled its copy
    assert (rec["record_id"], "watcher", "bad") not in sent
    assert SECRET.encode() not in home_bytes(hub)
    # Unpinned, the rogue is no way back at all; the hub is the way.
    c.ok("peers", "remove", "bad")
    c.wait_for(lambda: remote(c)[wid].get("via") == "hub", 10, "the hub as the way back")
    assert not remote(c)[wid].get("also_via")
    bad.stop()


def test_a_peer_is_a_way_back_for_no_more_watchers_than_it_may_bring(make_node,
                                                                     tmp_path: Path) -> None:
    """Red team (session 16): a peer that passes on the same set as another peer
    became a further way back for its hits, and ways were not counted against
    ``max_standing_sets_per_peer``. A hostile peer reflecting every set this node
    passes on to it (path stripped: unsigned) was a way back for every watcher
    here, each holding up to ``max_watch_hits`` rows and ``max_relay_bytes`` of
    sealed hits for it that it never pulls. A way back counts like a via."""
    node = make_node("hub", start=False)
    node.edit_config("max_standing_sets_per_peer = 100", "max_standing_sets_per_peer = 1")
    node.start()
    aa, bb = Rogue(tmp_path, "aa"), Rogue(tmp_path, "bb")  # peers passing sets on
    x1, x2 = Rogue(tmp_path, "x1"), Rogue(tmp_path, "x2")  # watchers beyond them
    for r in (aa, bb):
        r.serve(node.card())
        node.ok("peers", "add", r.card.line())
    for r in (x1, x2):
        node.ok("peers", "add", r.card.line(), "--no-connect")  # keys only
    key = entities.match_keys("plate", "WCH 100")[0]
    now = int(time.time() * 1000)

    def call(rogue: Rogue, req: federation_pb2.SignedStandingSet) -> grpc.StatusCode:
        return rogue.set_standing(node.listen, node.card(), req)

    def via(hop: str, watcher: Rogue) -> federation_pb2.SignedStandingSet:
        req = _standing(watcher, watcher.center, now, 1, key)
        req.path.extend([watcher.center, hop])
        return req

    def ways() -> dict[str, tuple[str | None, list[str]]]:
        return {x["center"]: (x.get("via"), x.get("also_via") or [])
                for x in node.json_lines("watch", "list", "--remote")}

    assert call(aa, via("aa", x1)) == grpc.StatusCode.OK
    assert call(bb, via("bb", x2)) == grpc.StatusCode.OK
    assert ways() == {"x1": ("aa", []), "x2": ("bb", [])}
    # aa brings x2's set again (as a reflection would: the same signed bytes).
    call(aa, via("aa", x2))
    assert ways() == {"x1": ("aa", []), "x2": ("bb", [])}, \
        "a peer at its bound of watchers became a way back for one more"
    for r in (aa, bb):
        r.stop()
