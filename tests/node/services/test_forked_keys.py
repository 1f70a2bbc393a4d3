"""A center quarantined for a fork: its key may be stolen, and what the thief's
branch announced must not count until the runbook's distrust (review, session 17):
no announced TLS certificate is pinned beside its card."""

from __future__ import annotations

from types import SimpleNamespace

from node.config.peers import Peer
from node.core.keyhistory import AnnouncedCert
from node.services.service import NodeService
from tests.node.services.test_introductions import card


def test_no_announced_certificate_counts_for_a_forked_center() -> None:
    x = card("xx")
    thief = AnnouncedCert("xx", "f" * 64, b"der", 10**15, 7)
    node = SimpleNamespace(center="me", peers={"xx": Peer(x, connect=False)},
                           _certs={"xx": {thief.fingerprint: thief}}, forked=set())
    assert NodeService.announced_certs(node) == {"xx": [thief]}  # type: ignore[arg-type]
    node.forked = {"xx"}
    assert NodeService.announced_certs(node) == {}  # type: ignore[arg-type]
