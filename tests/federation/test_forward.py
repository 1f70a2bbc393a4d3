"""Forwarding decisions (no sockets): hop limits and re-forwarding a copy that
can reach further."""

from __future__ import annotations

from types import SimpleNamespace

from federation.query_answer import QueryAnswerer
from federation.query_forward import MAX_HOPS, hops_left
from node.config.home import Limits
from node.wire import federation_pb2


def body(max_hops: int = 3) -> federation_pb2.QueryBody:
    return federation_pb2.QueryBody(center="req", query_id="ab" * 16, max_hops=max_hops,
                                    deadline_ms=2**62)


def signed(left: int) -> federation_pb2.SignedQuery:
    return federation_pb2.SignedQuery(hops_left=left)


def test_hops_left_never_exceeds_what_the_requester_signed() -> None:
    assert hops_left(signed(2), body(3)) == 2
    assert hops_left(signed(50), body(3)) == 2  # a hop raised the unsigned counter
    assert hops_left(signed(50), body(50)) == MAX_HOPS - 1
    assert hops_left(signed(2), body(0)) == 0  # an older requester: direct peers only


def test_a_copy_with_more_hops_left_is_forwarded_again_never_one_with_fewer() -> None:
    answerer = QueryAnswerer(SimpleNamespace(config=SimpleNamespace(limits=Limits())))
    b = body(3)
    assert answerer.reach_further(b, signed(0)) is False  # first arrival: answered, noted
    # The copy that came the short way may still reach this hub's spokes.
    assert answerer.reach_further(b, signed(1)) is True
    assert answerer.reach_further(b, signed(1)) is False  # the same reach again: refused
    assert answerer.reach_further(b, signed(0)) is False
    assert answerer.reach_further(b, signed(2)) is True
