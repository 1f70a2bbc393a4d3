"""Issue 12 items 1-3: watches with real daemons.

What a watch shows is judged independently here with the policy oracle of
tests/node/core/test_policy.py (as tests/integration/test_query.py does), never by
asking the code under test."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path

from node.core.record import parse_draft
from node.core.types import Decision, Discoverability, Policy, Requester, Tlp, ValidationError
from node.devnet import Node, mesh
from tests.node.core.test_policy import oracle

PLATE = "plate=WCH 100"
USERS = {"ann": ("sworn_le",), "bob": ()}
AUDIENCES = [[], ["TARGET"], ["members"]]
TLPS = ["GREEN", "AMBER", "AMBER+STRICT"]
DISC = ["open", "pointer", "restricted"]
REQUIRES = [[], ["sworn_le"]]


def drafts(origin: str, target: str) -> list[dict]:
    out = []
    for n, (aud, tlp, disc, req) in enumerate(itertools.product(AUDIENCES, TLPS, DISC,
                                                                REQUIRES)):
        aud = [target if a == "TARGET" else a for a in aud]
        d = {"kind": "BOLO", "title": f"{origin} watch case {n}", "entities": [PLATE],
             "narrative": "ricin precursor purchase",
             "policy": {"tlp": tlp, "audience": aud, "discoverability": disc, "require": req}}
        try:
            parse_draft(d)
        except ValidationError:
            continue
        out.append(d)
    return out


def policy_of(d: dict) -> Policy:
    p = d["policy"]
    tlp = Tlp.parse(p["tlp"])
    return Policy(tlp, frozenset(p["audience"]), frozenset(p["require"]),
                  Discoverability.parse(p["discoverability"]),
                  tlp not in (Tlp.AMBER_STRICT, Tlp.RED))


def publish_all(node: Node, tmp_path: Path, target: str) -> dict[str, Policy]:
    ds = drafts(node.center, target)
    path = tmp_path / f"{node.center}-watch.json"
    path.write_text(json.dumps(ds))
    lines = node.ok("publish", "--file", str(path), "--json").splitlines()
    return {json.loads(line)["record_id"]: policy_of(d) for line, d in zip(lines, ds,
                                                                           strict=True)}


def local_expected(records: dict[str, tuple[str, Policy]], at: str, user: str,
                   attrs: tuple[str, ...], by_entity: bool) -> dict[str, str]:
    """What a local watch at ``at`` shows: records held there (the origin's own,
    or FULL for that center), judged for the user; POINTERs only by entity."""
    out = {}
    who = Requester(at, user, frozenset(attrs))
    for rid, (origin, p) in records.items():
        held = origin == at or oracle(p, origin, origin, Requester(at)) is Decision.FULL
        if not held:
            continue
        d = oracle(p, origin, at, who)
        if d is Decision.FULL or (d is Decision.POINTER and by_entity):
            out[rid] = d.name
    return out


def hits(node: Node, user: str) -> dict[str, str]:
    """`fcnode watch hits --json` as record id -> access, by the local API (polled)."""
    return {h["record_id"]: h["access"] for h in node.stream("WatchHits", {}, user=user)}


def test_local_watches_fire_only_for_what_the_owner_may_see(make_node, tmp_path: Path) -> None:
    alpha, bravo = make_node("alpha"), make_node("bravo")
    mesh(alpha, bravo)
    for u, attrs in USERS.items():
        alpha.add_user(u, *attrs)
    watches = {}
    for u in USERS:
        watches[(u, "entity")] = alpha.json("watch", "add", "--entity", "plate=wch-100",
                                            user=u)["watch_id"]
        watches[(u, "text")] = alpha.json("watch", "add", "ricin", user=u)["watch_id"]
    r = alpha.cli("watch", "add", user="ann")
    assert r.returncode == 2 and "a watch needs" in r.stderr
    r = alpha.cli("watch", "add", "--entity", PLATE, "--behavior", "BOGUS", user="ann")
    assert r.returncode == 2 and "unknown behavior" in r.stderr

    records = {rid: ("alpha", p) for rid, p in publish_all(alpha, tmp_path, "alpha").items()}
    records |= {rid: ("bravo", p) for rid, p in publish_all(bravo, tmp_path, "alpha").items()}
    want = {u: local_expected(records, "alpha", u, a, True) for u, a in USERS.items()}
    want_text = {u: {r: x for r, x in local_expected(records, "alpha", u, a, False).items()}
                 for u, a in USERS.items()}
    for u in USERS:
        alpha.wait_for(lambda u=u: hits(alpha, u) == {**want[u], **want_text[u]} or
                       len(hits(alpha, u)) >= len(want[u]), 30, f"{u}'s hits")
    time.sleep(1.5)  # anything wrongly extra would have fired by now
    for u in USERS:
        got = alpha.json_lines("watch", "hits", user=u)
        by_watch: dict[str, dict[str, str]] = {}
        for h in got:
            by_watch.setdefault(h["watch_id"], {})[h["record_id"]] = h["access"]
            if h["access"] == "POINTER":
                assert "title" not in h and "narrative" not in h
        assert by_watch.get(watches[(u, "entity")], {}) == want[u], u
        assert by_watch.get(watches[(u, "text")], {}) == want_text[u], u
    assert any(v == "POINTER" for v in want["bob"].values())  # the test covers pointers
    assert not any(v == "POINTER" for v in want_text["bob"].values())
    # Hits show in notices, only to the watch's owner.
    notes = [n for n in alpha.json_lines("notices", user="bob") if n["kind"] == "watch"]
    assert {n["watch_id"] for n in notes} <= {watches[("bob", "entity")],
                                              watches[("bob", "text")]}
    assert {n["record_id"] for n in notes} == set(want["bob"]) | set(want_text["bob"])

    # An update that now matches fires; judged with the owner's current attributes.
    plain = alpha.publish("--kind", "BOLO", "--title", "Plain", "--tlp", "AMBER",
                          "--require", "sworn_le", user="ann")
    assert plain["record_id"] not in hits(alpha, "ann")
    alpha.ok("update", plain["record_id"], "--entity", PLATE, user="ann")
    alpha.wait_for(lambda: plain["record_id"] in hits(alpha, "ann"), 20, "update hit")
    alpha.wait_for(lambda: hits(alpha, "bob").get(plain["record_id"]) == "POINTER", 20,
                   "bob's pointer")

    # Stripped of sworn_le, ann sees now what she may see now: pointers, no text hits.
    alpha.ok("users", "set", "ann")
    now_ann = local_expected(records, "alpha", "ann", (), True)
    got = {}
    for h in alpha.json_lines("watch", "hits", user="ann"):
        assert h["watch_id"] == watches[("ann", "entity")] or h["access"] == "FULL"
        if h["record_id"] in records:
            got.setdefault(h["watch_id"], {})[h["record_id"]] = h["access"]
    assert got[watches[("ann", "entity")]] == now_ann
    text_now = local_expected(records, "alpha", "ann", (), False)
    assert got.get(watches[("ann", "text")], {}) == text_now

    # A removed user's watches end with them.
    alpha.ok("users", "remove", "bob")
    with alpha.db() as conn:
        assert conn.execute("SELECT count(*) FROM watches WHERE owner = 'bob'").fetchone()[0] == 0


def test_watch_survives_restart_and_follow_streams_hits(make_node) -> None:
    alpha = make_node("alpha")
    alpha.add_user("ann", "sworn_le")
    wid = alpha.json("watch", "add", "--entity", PLATE, "--kind", "BOLO", "--expires", "7d",
                     user="ann")["watch_id"]
    alpha.stop()
    alpha.start()
    assert [w["watch_id"] for w in alpha.json_lines("watch", "list", user="ann")] == [wid]
    follow = alpha.cli_popen("watch", "hits", "--follow", "--json", user="ann",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        rec = alpha.publish("--kind", "BOLO", "--title", "Follow me", "--entity", PLATE,
                            "--tlp", "AMBER", "--require", "sworn_le")
        line = follow.stdout.readline() if follow.stdout else ""
        hit = json.loads(line)
        assert hit["record_id"] == rec["record_id"] and hit["access"] == "FULL"
        assert hit["watch_id"] == wid
    finally:
        follow.terminate()
        follow.wait(10)
    other = alpha.publish("--kind", "SAR", "--title", "Not a BOLO", "--entity", PLATE,
                          "--justification", "x")
    time.sleep(1.5)
    assert other["record_id"] not in hits(alpha, "ann")
    alpha.ok("watch", "remove", wid, user="ann")
    assert alpha.json_lines("watch", "list", user="ann") == []
    assert hits(alpha, "ann") == {}


def network_expected(records: dict[str, tuple[str, Policy]], at: str, user: str,
                     attrs: tuple[str, ...]) -> dict[str, str]:
    """A network watch by entity: the best of what this node holds (judged here)
    and what each origin answers for this user (judged at the origin)."""
    out = {}
    who = Requester(at, user, frozenset(attrs))
    for rid, (origin, p) in records.items():
        best = oracle(p, origin, origin, who)
        if oracle(p, origin, origin, Requester(at)) is Decision.FULL:
            best = max(best, oracle(p, origin, at, who))
        if best >= Decision.POINTER:
            out[rid] = best.name
    return out


def notices_expected(records: dict[str, tuple[str, Policy]], watcher: str
                     ) -> set[tuple[str, str]]:
    """(record id, watcher/user) of the deconfliction notices the origin's analysts
    get: its restricted records that matched a network watch (judged at the origin)."""
    return {(rid, f"{watcher}/{u}") for rid, (_, p) in records.items()
            for u, attrs in USERS.items()
            if oracle(p, "origin", "origin", Requester(watcher, u, frozenset(attrs)))
            is Decision.NOTIFY_ONLY}


def test_network_watches_answer_by_the_origin_policy(make_node, tmp_path: Path) -> None:
    w, o = make_node("watcher"), make_node("origin")
    mesh(w, o)
    for u, attrs in USERS.items():
        w.add_user(u, *attrs)
    ids = {u: w.json("watch", "add", "--network", "--entity", PLATE, user=u)["watch_id"]
           for u in USERS}
    r = w.cli("watch", "add", "--network", "ricin", user="ann")
    assert r.returncode == 2 and "--network watch needs at least one --entity" in r.stderr
    o.wait_for(lambda: {x["watch_id"] for x in o.json_lines("watch", "list", "--remote")}
               == set(ids.values()), 20, "standing queries registered")
    remote = o.json_lines("watch", "list", "--remote")
    assert {x["center"] for x in remote} == {"watcher"}
    assert o.cli("watch", "list", "--remote", user="admin").returncode == 0
    o.add_user("plain")
    assert o.cli("watch", "list", "--remote", user="plain").returncode != 0  # admin only

    records = {rid: ("origin", p) for rid, p in publish_all(o, tmp_path, "watcher").items()}
    for u, attrs in USERS.items():
        want = network_expected(records, "watcher", u, attrs)
        w.wait_for(lambda u=u, want=want: hits(w, u) == want, 30, f"{u}'s network hits")
    time.sleep(1.5)
    for u, attrs in USERS.items():
        got = w.json_lines("watch", "hits", user=u)
        assert {h["record_id"]: h["access"] for h in got} == network_expected(
            records, "watcher", u, attrs)
        for h in got:
            assert h["watch_id"] == ids[u]
            if h["access"] == "POINTER":
                assert "title" not in h and "narrative" not in h
    want_bob = network_expected(records, "watcher", "bob", ())
    held = w.held_record_ids()
    # The test covers hits on records the watcher does not hold (network only).
    assert any(rid not in held for rid in want_bob)
    # Restricted records matched: their origin is told who watched, once per record.
    notices = [n for n in o.json_lines("notices") if n["kind"] == "deconfliction"
               and n.get("watch_id")]
    want_notify = notices_expected(records, "watcher")
    assert want_notify
    got_notify = [(n["records"][0], n["searched_by"]) for n in notices]
    assert sorted(got_notify) == sorted(want_notify)
    # The dissemination log at the origin names what each standing query received.
    sent = {(d["record_id"], d["user"], d["decision"]) for d in o.json_lines("disseminations")
            if d["channel"] == "watch"}
    assert {(rid, "bob", a) for rid, a in want_bob.items() if rid not in held} <= sent
    # FULL hits travel too (the origin's envelope, verified at the watcher).
    assert any(u == "ann" and d == "FULL" for _, u, d in sent)
    assert not {rid for rid, _, _ in sent} - set(records)

    # The watcher is offline when a record matches: the hit arrives when it is back.
    w.stop()
    late = o.publish("--kind", "BOLO", "--title", "While you were out", "--entity", PLATE,
                     "--tlp", "AMBER", "--discoverability", "pointer")
    w.start()
    w.wait_for(lambda: hits(w, "bob").get(late["record_id"]) == "POINTER", 30, "late hit")
    # The answering node restarts: the standing query is still there.
    o.stop()
    o.start()
    again = o.publish("--kind", "BOLO", "--title", "After restart", "--entity", PLATE,
                      "--tlp", "AMBER")
    w.wait_for(lambda: hits(w, "ann").get(again["record_id"]) == "POINTER", 30,
               "hit after the origin restarted")

    # Removal withdraws the standing query at the peer; no more hits from it.
    w.ok("watch", "remove", ids["bob"], user="bob")
    o.wait_for(lambda: {x["watch_id"] for x in o.json_lines("watch", "list", "--remote")}
               == {ids["ann"]}, 20, "withdrawal")
    # Expiry: gone at both sides once it passes.
    short = w.json("watch", "add", "--network", "--entity", "phone=555-123-0000",
                   "--expires", "3s", user="ann")["watch_id"]
    o.wait_for(lambda: short in {x["watch_id"] for x in o.json_lines("watch", "list",
                                                                      "--remote")}, 20, "short")
    time.sleep(3.5)
    assert short not in {x["watch_id"] for x in o.json_lines("watch", "list", "--remote")}
    assert short not in {x["watch_id"] for x in w.json_lines("watch", "list", user="ann")}
    after = o.publish("--kind", "BOLO", "--title", "Too late", "--entity", "phone=555-123-0000",
                      "--tlp", "AMBER")
    time.sleep(2)
    assert after["record_id"] not in hits(w, "ann")


def _standing(rogue, center: str, issued: int, n: int, key: str, **q: object):  # type: ignore[no-untyped-def]
    from federation.watch_sync import seal_set  # noqa: F401 - same wire form as the node's
    from node.core.signing import STANDING_DOMAIN, key_id, sign
    from node.wire import federation_pb2

    body = federation_pb2.StandingSet(center=center, issued_ms=issued)
    for i in range(n):
        body.queries.add(watch_id=f"w{i}", user="mallory", entity_keys=[key],
                         expires_ms=issued + 10 * 365 * 86_400_000, **q)
    raw = body.SerializeToString()
    return federation_pb2.SignedStandingSet(
        body=raw, signature=sign(rogue.signing, STANDING_DOMAIN, raw),
        key_id=key_id(rogue.signing.public_key()))


def test_standing_queries_are_verified_and_bounded(make_node, tmp_path: Path) -> None:
    import grpc

    from node.core import entities
    from node.wire import federation_pb2, federation_pb2_grpc
    from tests.integration.rogue import Rogue

    node = make_node("origin", start=False)
    node.edit_config("max_watches_per_peer = 100", "max_watches_per_peer = 3")
    node.edit_config("max_watch_days = 90", "max_watch_days = 2")
    node.edit_config("max_watch_hits = 1000", "max_watch_hits = 4")
    node.start()
    rogue = Rogue(tmp_path, "echo")
    node.ok("peers", "add", rogue.card.line())
    key = entities.match_keys("plate", "WCH 100")[0]
    now = int(time.time() * 1000)

    def call(req):  # type: ignore[no-untyped-def]
        with rogue.channel(node.listen, node.card()) as ch:
            try:
                return grpc.StatusCode.OK, federation_pb2_grpc.FederationStub(ch).SetStanding(
                    req, timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()

    # Bounded: ten offered, three kept; expiry capped at max_watch_days.
    deadline = time.monotonic() + 15
    while True:  # the new pin applies to the listener within a moment
        status, reply = call(_standing(rogue, "echo", now, 10, key))
        if status != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == grpc.StatusCode.OK, reply
    assert (reply.accepted, reply.offered) == (3, 10)
    remote = node.json_lines("watch", "list", "--remote")
    assert len(remote) == 3
    # A replay (not newer than the set taken), another center's name, a bad signature.
    status, why = call(_standing(rogue, "echo", now, 1, key))
    assert status == grpc.StatusCode.ALREADY_EXISTS and "replay" in why
    status, why = call(_standing(rogue, "origin", now + 1, 1, key))
    assert status == grpc.StatusCode.PERMISSION_DENIED
    forged = _standing(rogue, "echo", now + 2, 1, key)
    forged.signature = bytes(64)
    status, why = call(forged)
    assert status == grpc.StatusCode.UNAUTHENTICATED
    status, why = call(_standing(rogue, "echo", now + 3, 1, key, behaviors=["NOPE"]))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "unknown behavior" in why
    assert len(node.json_lines("watch", "list", "--remote")) == 3  # nothing half-taken
    for r in node.json_lines("watch", "list", "--remote"):
        exp = time.mktime(time.strptime(r["expires"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert exp - time.time() < 2 * 86400 + 3600

    # The outbox for one watcher is bounded: the oldest hits go.
    for i in range(6):
        node.publish("--kind", "BOLO", "--title", f"t{i}", "--entity", "plate=WCH 100",
                     "--tlp", "GREEN", "--audience", "members")
    time.sleep(2)
    with node.db() as conn:
        n = conn.execute("SELECT count(*) FROM watch_outbox WHERE center = 'echo'").fetchone()[0]
        dropped = conn.execute("SELECT dropped FROM watch_dropped WHERE who = 'center:echo'"
                               ).fetchone()[0]
    assert n == 4 and dropped == 3 * 6 - 4
    # What echo pulls: FULL envelopes, one entry per hit, signed by the origin.
    with rogue.channel(node.listen, node.card()) as ch:
        stream = federation_pb2_grpc.FederationStub(ch).WatchHits(
            federation_pb2.WatchHitsRequest(after=0), timeout=5)
        first = next(iter(stream))
        stream.cancel()
    assert len(first.hits) == 4 and all(h.HasField("envelope") for h in first.hits)
    # An empty set withdraws everything.
    status, reply = call(_standing(rogue, "echo", now + 10, 0, key))
    assert status == grpc.StatusCode.OK and node.json_lines("watch", "list", "--remote") == []
    with node.db() as conn:
        assert conn.execute("SELECT count(*) FROM watch_outbox").fetchone()[0] == 0
