"""Network watches played by a hostile center (issue 12 item 3, red team).

Each test plays one attack with hand-driven peers (tests/integration/rogue.py)
against real daemons over mutual TLS, and shows the node holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from node.core import entities
from node.core.signing import STANDING_DOMAIN, key_id, sign
from node.devnet import Node
from node.wire import federation_pb2, federation_pb2_grpc
from tests.integration.rogue import Rogue

KEY = entities.match_keys("plate", "WCH 100")[0]


def signed_set(watcher: Rogue, issued: int, hops_left: int, path: list[str]
               ) -> federation_pb2.SignedStandingSet:
    """A network watch of ``watcher`` as its node signs it (hop limit 3), with the
    unsigned routing a hop sets."""
    body = federation_pb2.StandingSet(center=watcher.center, issued_ms=issued, max_hops=3)
    body.queries.add(watch_id="w0", user="ann", entity_keys=[KEY],
                     expires_ms=issued + 86_400_000)
    raw = body.SerializeToString()
    return federation_pb2.SignedStandingSet(
        body=raw, signature=sign(watcher.signing, STANDING_DOMAIN, raw),
        key_id=key_id(watcher.signing.public_key()), hops_left=hops_left, path=path)


def send(rogue: Rogue, node: Node, req: federation_pb2.SignedStandingSet
         ) -> grpc.StatusCode:
    deadline = time.monotonic() + 15
    while True:  # a new pin applies to the listener within a moment
        with rogue.channel(node.listen, node.card()) as ch:
            try:
                federation_pb2_grpc.FederationStub(ch).SetStanding(req, timeout=10)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    return exc.code()
        time.sleep(0.3)


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

