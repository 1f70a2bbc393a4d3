"""Network watches played by a hostile center (issue 12 item 3, red team).

Each test plays one attack with hand-driven peers (tests/integration/rogue.py)
against real daemons over mutual TLS, and shows the node holds.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc

from node.core import entities
from node.core.signing import STANDING_DOMAIN, key_id, sign
from node.devnet import Node
from node.wire import federation_pb2, federation_pb2_grpc
from tests.integration.rogue import Rogue

KEY = entities.match_keys("plate", "WCH 100")[0]


def signed_set(watcher: Rogue, issued: int, hops_left: int, path: list[str],
               extra: int = 0) -> federation_pb2.SignedStandingSet:
    """A network watch of ``watcher`` as its node signs it (hop limit 3), with the
    unsigned routing a hop sets; ``extra`` more watches make the set larger."""
    body = federation_pb2.StandingSet(center=watcher.center, issued_ms=issued, max_hops=3)
    for i in range(1 + extra):
        body.queries.add(watch_id=f"w{i}", user="ann", entity_keys=[KEY],
                         expires_ms=issued + 86_400_000)
    raw = body.SerializeToString()
    return federation_pb2.SignedStandingSet(
        body=raw, signature=sign(watcher.signing, STANDING_DOMAIN, raw),
        key_id=key_id(watcher.signing.public_key()), hops_left=hops_left, path=path)


def send(rogue: Rogue, node: Node, req: federation_pb2.SignedStandingSet
         ) -> grpc.StatusCode:
    return rogue.set_standing(node.listen, node.card(), req)


def watchers_at(node: Node) -> set[str]:
    return {x["center"] for x in node.json_lines("watch", "list", "--remote")}


def test_first_hop_cannot_stop_a_set_travelling_on_through_honest_hops(make_node,
                                                                       tmp_path: Path) -> None:
    """A hostile hop that passes a watcher's set on first, with no hops left or
    with a path naming the node's other peers, must not stop the same set, coming
    through an honest hop a moment later, from travelling on. (It did: the node
    kept the hostile copy's routing, so the set never went further.)"""
    mid, beyond = make_node("mid"), make_node("beyond")
    mid.pin(beyond)
    beyond.pin(mid)
    x1, x2, bad, good = (Rogue(tmp_path, c) for c in ("x1", "x2", "bad", "good"))
    for r in (bad, good):  # two peers of mid that pass sets on (mid dials them)
        r.serve(mid.card())
        mid.ok("peers", "add", r.card.line())
    for r in (x1, x2):  # keys only: mid and beyond verify the watchers' sets
        for n in (mid, beyond):
            n.ok("peers", "add", r.card.line(), "--no-connect")
    now = int(time.time() * 1000)

    # x1's set: the hostile hop says no hop is left; the honest one says one is.
    assert send(bad, mid, signed_set(x1, now, 0, ["x1", "bad"])) == grpc.StatusCode.OK
    send(good, mid, signed_set(x1, now, 1, ["x1", "good"]))
    # x2's set: the hostile hop claims it already passed through mid's other peer.
    assert send(bad, mid, signed_set(x2, now, 1, ["x2", "bad", "beyond"])) == grpc.StatusCode.OK
    send(good, mid, signed_set(x2, now, 1, ["x2", "good"]))
    assert watchers_at(mid) == {"x1", "x2"}
    try:
        beyond.wait_for(lambda: watchers_at(beyond) == {"x1", "x2"}, 15)
    except Exception:
        raise AssertionError(f"sets passed on to beyond: {sorted(watchers_at(beyond))}, "
                             "want x1 and x2") from None
    # The honest copy taken, the same set again is a replay (nothing to gain).
    assert send(good, mid, signed_set(x1, now, 1, ["x1", "good"])) == \
        grpc.StatusCode.ALREADY_EXISTS
    for r in (x1, x2, bad, good):
        r.stop()


def test_a_flood_of_forged_hits_costs_bounded_work_and_log(make_node, tmp_path: Path) -> None:
    """A peer serving one hit batch of a thousand hits sealed "by" a center whose
    key the node holds, none really signed: each was checked (a signature
    verification on the database writer's thread) and logged, one line per hit, so
    one message cost seconds of writer time and thousands of log lines. A batch
    holds at most what a node sends (HIT_BATCH); the rest is refused unread."""
    from federation.watch_sync import HIT_BATCH

    hub = make_node("hub")
    aa = Rogue(tmp_path, "aa")
    aa.serve(hub.card())
    hub.ok("peers", "add", aa.card.line())
    n = 1000
    kid = key_id(aa.signing.public_key())
    forged = [federation_pb2.WatchHit(id=i, sealed=federation_pb2.SealedWatchHit(
        watcher="hub", center="aa", watch_id="w0", number=i, sealed=b"x",
        signature=bytes(64), key_id=kid)) for i in range(1, n + 1)]
    aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=forged, last=n))

    def refused() -> int:
        import contextlib

        with contextlib.closing(hub.db()) as conn:
            row = conn.execute("SELECT dropped FROM watch_dropped WHERE who = 'refused:aa'"
                               ).fetchone()
        return row[0] if row else 0

    hub.wait_for(lambda: refused() == n, 20, "the forged hits refused and counted")
    lines = [x for x in hub.log_path.read_text().splitlines() if "watch hit" in x
             and "refused" in x]
    assert len(lines) == 1, f"{len(lines)} log lines for one batch"
    assert str(n) in lines[0] and str(HIT_BATCH) in lines[0], lines[0]
    # More batches with refused hits (read one a second): still one line a minute
    # from this peer, the rest counted (before the fix: a line a batch).
    for b in range(1, 6):
        aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=forged[:1], last=n + b))
    hub.wait_for(lambda: refused() == n + 5, 30, "five more batches refused and counted")
    lines = [x for x in hub.log_path.read_text().splitlines() if "watch hit" in x
             and "refused" in x]
    assert len(lines) == 1, f"{len(lines)} log lines for six batches"
    aa.stop()


def test_unverifiable_relayed_hits_cannot_push_out_real_ones(make_node, tmp_path: Path) -> None:
    """A peer serving sealed hits for a watcher "answered by" a center the hub has
    no key for (so the hub cannot check them) evicted, once over max_watch_hits,
    the hits the hub itself had queued for that watcher: a way to make a watcher
    lose hits without forging anything checkable. Unverifiable hits go first."""
    import contextlib
    import os

    hub = make_node("hub", start=False)
    hub.edit_config("max_watch_hits = 1000", "max_watch_hits = 5")
    hub.start()
    aa, x1 = Rogue(tmp_path, "aa"), Rogue(tmp_path, "x1")
    for r in (aa, x1):
        r.serve(hub.card())
        hub.ok("peers", "add", r.card.line())
    now = int(time.time() * 1000)
    assert send(x1, hub, signed_set(x1, now, 0, [])) == grpc.StatusCode.OK
    # The hub's own record matches x1's watch: a hit waits in its outbox (x1, a
    # rogue, never pulls it).
    rec = hub.publish("--kind", "BOLO", "--title", "real hit", "--entity", "plate=WCH 100",
                      "--tlp", "GREEN")

    def outbox() -> list[tuple[str, str]]:
        with contextlib.closing(hub.db()) as conn:
            return conn.execute("SELECT record_id, access FROM watch_outbox WHERE "
                                "center = 'x1' ORDER BY id").fetchall()

    hub.wait_for(lambda: (rec["record_id"], "POINTER") in outbox()
                 or (rec["record_id"], "FULL") in outbox(), 20, "the hub's own hit queued")
    flood = [federation_pb2.WatchHit(id=i, sealed=federation_pb2.SealedWatchHit(
        watcher="x1", center="zz", watch_id="w0", number=i, sealed=os.urandom(100),
        signature=bytes(64), key_id="00")) for i in range(1, 21)]
    aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=flood, last=20))
    hub.wait_for(lambda: len(outbox()) == 5 and any(r.startswith("hit:") for r, _ in outbox()),
                 20, "the flood taken (up to the bound)")
    assert rec["record_id"] in {r for r, _ in outbox()}, outbox()
    for r in (aa, x1):
        r.stop()


def watcher_at(hub: Node, tmp_path: Path) -> Rogue:
    """A hand-driven watcher center pinned by the hub, with its (empty) standing
    set taken there: what the WatchHits tests pull with."""
    x1 = Rogue(tmp_path, "x1")
    x1.serve(hub.card())
    hub.ok("peers", "add", x1.card.line())
    now = int(time.time() * 1000)
    assert send(x1, hub, signed_set(x1, now, 0, [])) == grpc.StatusCode.OK
    return x1


def test_pulling_the_same_hits_again_and_again_logs_them_once(make_node,
                                                               tmp_path: Path) -> None:
    """A watcher that pulls its hits from the start over and over (never moving
    its cursor) made the origin write one dissemination row per hit per pull:
    an unbounded write any peer could cause. A hit sent again to the same
    recipient with the same decision is logged once."""
    import contextlib

    hub = make_node("hub", start=False)
    # Re-pulls are rate limited like replication restarts (the next test); this
    # one is about the dissemination log, so the hub allows them.
    hub.edit_config("restarts_per_minute = 6", "restarts_per_minute = 100")
    hub.start()
    x1 = watcher_at(hub, tmp_path)
    rec = hub.publish("--kind", "BOLO", "--title", "pulled again", "--entity",
                      "plate=WCH 100", "--tlp", "GREEN")

    def logged() -> int:
        with contextlib.closing(hub.db()) as conn:
            return conn.execute("SELECT count(*) FROM disseminations WHERE channel = 'watch' "
                                "AND record_id = ?", (rec["record_id"],)).fetchone()[0]

    def pull() -> int:
        with x1.channel(hub.listen, hub.card()) as ch:
            stream = federation_pb2_grpc.FederationStub(ch).WatchHits(
                federation_pb2.WatchHitsRequest(after=0), timeout=10)
            got = len(next(iter(stream)).hits)
            stream.cancel()
        return got

    hub.wait_for(lambda: pull() == 1, 20, "the hit in the outbox")
    for _ in range(10):
        assert pull() == 1  # sent again (the watcher did not move its cursor)
    assert logged() == 1, f"{logged()} dissemination rows for one hit sent to one center"
    x1.stop()


def test_pulling_hits_already_sent_again_and_again_is_rate_limited(make_node,
                                                                   tmp_path: Path) -> None:
    """Each pull from before what a peer was sent re-seals and re-sends those hits:
    any peer reopening WatchHits(after=0) in a loop made the hub do that work
    without bound. Such re-pulls get the replication restart rate; pulls that
    move on are never limited."""
    hub = make_node("hub")
    x1 = watcher_at(hub, tmp_path)
    hub.publish("--kind", "BOLO", "--title", "pulled again", "--entity", "plate=WCH 100",
                "--tlp", "GREEN")

    def pull(after: int) -> tuple[grpc.StatusCode, int]:
        with x1.channel(hub.listen, hub.card()) as ch:
            stream = federation_pb2_grpc.FederationStub(ch).WatchHits(
                federation_pb2.WatchHitsRequest(after=after), timeout=10)
            try:
                batch = next(iter(stream))
            except grpc.RpcError as exc:
                return exc.code(), 0
            stream.cancel()
            return grpc.StatusCode.OK, batch.last

    hub.wait_for(lambda: pull(0)[1] > 0, 20, "the hit in the outbox")
    codes = [pull(0)[0] for _ in range(8)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert codes[:5] == [grpc.StatusCode.OK] * 5  # the restart rate (6 a minute) first
    # Moving on from what was sent is never refused.
    last = pull(10**9)
    assert last[0] == grpc.StatusCode.OK
    x1.stop()


def test_parallel_hit_streams_from_one_peer_are_capped(make_node, tmp_path: Path) -> None:
    """Parallel WatchHits calls from one cursor each re-sealed the same hits (the
    re-pull rate counts a call only once it has been served): the streams one
    peer holds open are capped like replication's (max_streams_per_peer)."""
    hub = make_node("hub")
    x1 = watcher_at(hub, tmp_path)
    codes = []
    with x1.channel(hub.listen, hub.card()) as ch:
        stub = federation_pb2_grpc.FederationStub(ch)
        streams = []
        for _ in range(6):
            stream = stub.WatchHits(federation_pb2.WatchHitsRequest(after=0), timeout=10)
            try:
                next(iter(stream))  # the first (heartbeat) batch: the stream is open
                codes.append(grpc.StatusCode.OK)
                streams.append(stream)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        for stream in streams:
            stream.cancel()
    assert codes[:4] == [grpc.StatusCode.OK] * 4  # max_streams_per_peer = 4
    assert codes[4:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    x1.stop()


def test_a_watcher_flooding_sets_cannot_starve_its_hubs_own_set(make_node,
                                                                tmp_path: Path) -> None:
    """A hostile watcher sending its hub a stream of (validly signed, ever newer)
    sets made the hub pass each on, spending the hub's whole standing-set rate at
    its other peers: the hub's own network watches were then refused there until
    the budget refilled. A peer's own set has its own budget."""
    hub, mid = make_node("hub"), make_node("mid", start=False)
    mid.edit_config("standing_sets_per_minute = 600", "standing_sets_per_minute = 4")
    mid.start()
    hub.pin(mid)
    mid.pin(hub)
    w = Rogue(tmp_path, "ww")
    w.serve(hub.card())
    hub.ok("peers", "add", w.card.line())
    mid.ok("peers", "add", w.card.line(), "--no-connect")  # keys: mid verifies w's sets
    now = int(time.time() * 1000)
    for i in range(6):  # each newer: the hub takes each and passes it on to mid
        assert send(w, hub, signed_set(w, now + i, 2, [])) == grpc.StatusCode.OK
        time.sleep(0.4)
    mid.wait_for(lambda: "ww" in watchers_at(mid), 10, "ww's set at mid")
    hub.add_user("ann", "sworn_le")
    wid = hub.json("watch", "add", "--network", "--entity", "plate=WCH 100",
                   user="ann")["watch_id"]
    mid.wait_for(lambda: wid in {x["watch_id"] for x in mid.json_lines(
        "watch", "list", "--remote") if x["center"] == "hub"}, 6, "the hub's own set at mid")
    w.stop()


def test_a_flooding_watcher_cannot_hold_back_other_watchers_sets_through_a_hub(
        make_node, tmp_path: Path) -> None:
    """A watcher behind a hub sending ever newer sets (each validly signed) had the
    hub pass every one on, spending the hub's whole passed-on budget here: every
    other watcher's set through that hub was refused until it refilled (up to a
    minute). One watcher may use a tenth of a peer's passed-on budget."""
    mid = make_node("mid", start=False)
    mid.edit_config("standing_sets_per_minute = 600", "standing_sets_per_minute = 20")
    mid.start()
    hub, ww, vv = (Rogue(tmp_path, c) for c in ("hub", "ww", "vv"))
    hub.serve(mid.card())
    mid.ok("peers", "add", hub.card.line())
    for r in (ww, vv):  # keys only: mid verifies the watchers' sets
        mid.ok("peers", "add", r.card.line(), "--no-connect")
    now = int(time.time() * 1000)
    codes = [send(hub, mid, signed_set(ww, now + i, 1, ["ww"])) for i in range(25)]
    assert send(hub, mid, signed_set(vv, now, 1, ["vv"])) == grpc.StatusCode.OK
    assert codes[:2] == [grpc.StatusCode.OK] * 2  # 20 a minute / 10
    assert set(codes[2:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    hub.stop()


def test_a_peer_sending_large_sets_is_held_to_a_byte_budget(make_node,
                                                            tmp_path: Path) -> None:
    """Sets may be up to 1 MiB each, and 600 a minute were allowed: one peer could
    make a node check and store 600 MiB a minute. The sets of one peer also have a
    byte budget a minute (its own and passed-on apart): over it, refused, while a
    small set still fits what is left."""
    hub = make_node("hub", start=False)
    hub.edit_config("standing_set_bytes_per_minute = 16777216",
                    "standing_set_bytes_per_minute = 8000")
    hub.start()
    w = Rogue(tmp_path, "ww")
    w.serve(hub.card())
    hub.ok("peers", "add", w.card.line())
    now = int(time.time() * 1000)
    large = [signed_set(w, now + i, 0, [], extra=90) for i in range(3)]
    assert 3000 < large[0].ByteSize() < 4000
    codes = [send(w, hub, s) for s in large]
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK,
                     grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert send(w, hub, signed_set(w, now + 10, 0, [])) == grpc.StatusCode.OK
    w.stop()


def relay_for_x1(make_node, tmp_path: Path, limit: str, value: int  # type: ignore[no-untyped-def]
                 ) -> tuple[Node, Rogue, Rogue, Rogue]:
    """A hub (its ``limit`` set to ``value``) holding watcher x1's set (x1 a direct
    peer), aa a peer serving it hits, cc an answering center beyond whose key the
    hub holds: (hub, aa, x1, cc)."""
    default = {"max_relay_bytes": 16777216, "max_message_bytes": 8388608}[limit]
    hub = make_node("hub", start=False)
    hub.edit_config(f"{limit} = {default}", f"{limit} = {value}")
    hub.start()
    aa, x1, cc = (Rogue(tmp_path, c) for c in ("aa", "x1", "cc"))
    for r in (aa, x1):
        r.serve(hub.card())
        hub.ok("peers", "add", r.card.line())
    hub.ok("peers", "add", cc.card.line(), "--no-connect")  # the answering center's key
    assert send(x1, hub, signed_set(x1, int(time.time() * 1000), 0, [])) == grpc.StatusCode.OK
    return hub, aa, x1, cc


def sealed_hit_of(cc: Rogue, x1: Rogue, n: int, plain: bytes,
                  via: list[str] | None = None) -> federation_pb2.WatchHit:
    """Hit number ``n`` of answering center cc for x1's watch w0, sealed to x1."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from node.core.sealing import seal_hit

    to = x1.seal.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sealed, sig, kid = seal_hit(cc.signing, to, "x1", "w0", "cc", n, plain)
    return federation_pb2.WatchHit(id=n, sealed=federation_pb2.SealedWatchHit(
        watcher="x1", center="cc", watch_id="w0", number=n, sealed=sealed,
        signature=sig, key_id=kid, via=via or []))


def test_a_hop_cannot_inflate_a_real_hit_to_push_others_out(make_node,
                                                            tmp_path: Path) -> None:
    """``via`` on a sealed hit is unsigned: a hop passing on a real hit (its
    signature checks) could pad ``via`` with long names until the hit alone filled
    the watcher's max_relay_bytes at the next hub, pushing out every other hit
    waiting there. ``via`` must be a short list of center ids."""
    import contextlib

    hub, aa, x1, cc = relay_for_x1(make_node, tmp_path, "max_relay_bytes", 30000)

    def real(n: int, via: list[str]) -> federation_pb2.WatchHit:
        return sealed_hit_of(cc, x1, n, b"hit %d" % n, via)

    def kept() -> list[str]:
        with contextlib.closing(hub.db()) as conn:
            return [r[0] for r in conn.execute(
                "SELECT record_id FROM watch_outbox WHERE center = 'x1' ORDER BY id")]

    aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=[real(1, ["cc"])], last=1))
    hub.wait_for(lambda: kept() == ["hit:1"], 20, "a real hit relayed")
    aa.hits_for("hub").put(federation_pb2.WatchHitBatch(
        hits=[real(2, ["cc", *("z" * 2000 + str(i) for i in range(12))])], last=2))
    hub.wait_for(lambda: hub.log_path.read_text().count("watch hit refused") >= 1
                 or "hit:2" in kept(), 20, "the inflated hit handled")
    assert "hit:1" in kept(), kept()
    # The same with fields the hub does not know (kept by protobuf when parsed):
    # the hit is kept as signed, without them.
    from google.protobuf.internal.encoder import _VarintBytes as varint

    padded = real(3, ["cc"]).sealed.SerializeToString() + varint((50 << 3) | 2) + \
        varint(24_000) + b"z" * 24_000
    hit = federation_pb2.WatchHit()
    hit.ParseFromString(federation_pb2.WatchHit(id=3).SerializeToString()
                        + varint((5 << 3) | 2) + varint(len(padded)) + padded)
    aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=[hit], last=3))
    hub.wait_for(lambda: "hit:3" in kept(), 20, "the padded hit relayed")
    assert kept() == ["hit:1", "hit:3"], kept()
    for r in (aa, x1, cc):
        r.stop()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))


def test_claimed_watcher_names_cost_a_node_no_memory(make_node, tmp_path: Path) -> None:
    """Red team (session 16): one watcher's share of a peer's passed-on rate was a
    rate-limit bucket keyed by the watcher name the set claims, made before the set
    was checked and never dropped. A peer sending sets that claim ever new names
    (up to the 1 MiB a set may be) made the node keep every name for ever: memory
    without bound, from one peer. Only a watcher whose key this node holds gets a
    bucket (any other set is refused anyway)."""
    hub = make_node("hub")
    bad = Rogue(tmp_path, "bad")
    bad.serve(hub.card())
    hub.ok("peers", "add", bad.card.line())
    now = int(time.time() * 1000)

    def claiming(i: int) -> federation_pb2.SignedStandingSet:
        # A name of 256 KiB: the set stays under the 1 MiB a set may be.
        body = federation_pb2.StandingSet(center=f"{i:08d}" + "x" * 262_144, issued_ms=now)
        raw = body.SerializeToString()
        return federation_pb2.SignedStandingSet(
            body=raw, signature=sign(bad.signing, STANDING_DOMAIN, raw),
            key_id=key_id(bad.signing.public_key()))

    assert send(bad, hub, claiming(0)) != grpc.StatusCode.OK  # pinned and listening
    before = _rss_kib(hub.pid)
    with bad.channel(hub.listen, hub.card()) as ch:
        stub = federation_pb2_grpc.FederationStub(ch)
        for i in range(1, 301):
            with contextlib.suppress(grpc.RpcError):
                stub.SetStanding(claiming(i), timeout=10)
    grown = _rss_kib(hub.pid) - before
    # 300 names of 256 KiB kept would be 75 MiB.
    assert grown < 30 * 1024, f"the node grew by {grown} KiB for refused sets"
    assert hub.running
    # Nor a log line each (a peer may call as fast as it likes): ten a minute.
    lines = [ln for ln in hub.log_tail(50_000_000).splitlines() if "standing set refused" in ln]
    assert 1 <= len(lines) <= 12, f"{len(lines)} lines for 301 refused sets"
    bad.stop()


def test_sets_of_unknown_watchers_share_one_watchers_share(make_node, tmp_path: Path) -> None:
    """Red team (session 16): with no bucket per unknown watcher name (above), the
    sets of watchers whose key this node does not hold (refused anyway) would each
    spend the passing peer's whole passed-on budget: a watcher known at the hub
    but not here could hold back every other watcher's set through that hub. They
    share one watcher's tenth."""
    mid = make_node("mid", start=False)
    mid.edit_config("standing_sets_per_minute = 600", "standing_sets_per_minute = 20")
    mid.start()
    hub, vv = Rogue(tmp_path, "hub"), Rogue(tmp_path, "vv")
    hub.serve(mid.card())
    mid.ok("peers", "add", hub.card.line())
    mid.ok("peers", "add", vv.card.line(), "--no-connect")  # keys only
    stranger = Rogue(tmp_path, "stranger")  # its key is not held at mid
    now = int(time.time() * 1000)
    codes = [send(hub, mid, signed_set(stranger, now + i, 1, ["stranger"])) for i in range(25)]
    assert grpc.StatusCode.OK not in codes
    assert codes.count(grpc.StatusCode.PERMISSION_DENIED) == 2  # 20 a minute / 10
    assert send(hub, mid, signed_set(vv, now, 1, ["vv"])) == grpc.StatusCode.OK
    hub.stop()


def test_large_relayed_hits_cannot_stall_a_peers_hit_stream(make_node, tmp_path: Path) -> None:
    """Red team (session 16): a hit batch held up to 128 hits whatever their size,
    and a relayed sealed hit may be up to half a message. A center beyond sending a
    few large hits (each signed and within every per-watcher bound) made the hub's
    next batch for that way larger than a message: the send failed, the peer pulled
    again from the same cursor, failed again, and no hit for any watcher on that way
    got through. A batch holds at most half a message (one hit alone may be more)."""
    hub, aa, x1, cc = relay_for_x1(make_node, tmp_path, "max_message_bytes", 1048576)

    def hit(n: int, size: int) -> federation_pb2.WatchHit:
        return sealed_hit_of(cc, x1, n, b"h" * size)

    def kept() -> int:
        with contextlib.closing(hub.db()) as conn:
            return conn.execute("SELECT count(*) FROM watch_outbox WHERE center = 'x1'"
                                ).fetchone()[0]

    # A small hit, then five that pad to 256 KiB each (under half a message
    # each, over a message together), one a batch from aa.
    for n in range(1, 7):
        size = 100 if n == 1 else 200_000
        aa.hits_for("hub").put(federation_pb2.WatchHitBatch(hits=[hit(n, size)], last=n))
    hub.wait_for(lambda: kept() == 6, 20, "the hits relayed for x1")

    got: list[int] = []
    with x1.channel(hub.listen, hub.card()) as ch:
        stream = federation_pb2_grpc.FederationStub(ch).WatchHits(
            federation_pb2.WatchHitsRequest(after=0), timeout=10)
        with contextlib.suppress(grpc.RpcError):
            for batch in stream:
                got += [h.sealed.number for h in batch.hits]
                if len(got) >= 6:
                    break
    assert got == [1, 2, 3, 4, 5, 6], got
    for r in (aa, x1, cc):
        r.stop()
