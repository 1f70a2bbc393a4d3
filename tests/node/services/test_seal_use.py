"""Which seal key is in use for a center (NodeService.seal_key_for) is computed
once per change, not at every call: it is asked for every sealed answer part,
copy and hit, and a hostile center may announce a seal key at every entry of its
log (red team, session 17: 200,000 announcements sorted at each call cost 68 ms of
CPU a part; bench/bench_seal_keys.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from node.config.peers import Distrust, Peer
from node.core.keyhistory import SealAnnouncement
from node.services import service
from node.services.service import NodeService
from tests.node.services.test_introductions import card


def test_the_key_in_use_is_computed_once_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = service.seal_key_in_use
    monkeypatch.setattr(service, "seal_key_in_use",
                        lambda *a: calls.append(a) or real(*a))  # type: ignore[func-returns-value]
    x = card("xx")
    node = SimpleNamespace(peers={"xx": Peer(x, connect=False)}, _seal_use={},
                           _seal_generation=0, _seals={}, forked=set(),
                           _seals_trimmed=set())
    keys = [x.seal_key, *(os.urandom(32) for _ in range(49))]
    anns = [SealAnnouncement("xx", i, keys[i - 1], keys[i]) for i in range(1, 50)]
    NodeService.learn_seals(node, anns)  # type: ignore[arg-type]
    for _ in range(100):
        got = NodeService.seal_key_for(node, "xx")  # type: ignore[arg-type]
    assert got.key == anns[-1].new and len(calls) == 1  # before: 100 computations
    newer = SealAnnouncement("xx", 50, anns[-1].new, os.urandom(32))
    NodeService.learn_seals(node, [newer])  # type: ignore[arg-type]
    assert NodeService.seal_key_for(node, "xx").key == newer.new  # type: ignore[arg-type]
    # A card, trust or distrust change is a change too.
    node.peers = {"xx": Peer(x, connect=False, distrusts=(Distrust(x.signing_key, 50),))}
    assert NodeService.seal_key_for(node, "xx").source == "card"  # type: ignore[arg-type]
    node.peers = {"xx": Peer(x, connect=False, introduced_by="hub", conflict="?")}
    assert NodeService.seal_key_for(node, "xx").key == b""  # type: ignore[arg-type]
    # A fork: the key may be stolen and the thief's branch may announce a seal key.
    node.peers = {"xx": Peer(x, connect=False)}
    node.forked = {"xx"}
    assert NodeService.seal_key_for(node, "xx").key == b""  # type: ignore[arg-type]


def test_a_center_s_announcements_held_in_memory_are_bounded() -> None:
    # A center announcing a seal key at every entry of its log must not make every
    # node hold all of them in memory (they stay in the database); the newest wins.
    x = card("xx")
    node = SimpleNamespace(peers={"xx": Peer(x, connect=False)}, _seal_use={},
                           _seal_generation=0, _seals={}, forked=set(),
                           _seals_trimmed=set())
    keys = [x.seal_key, *(os.urandom(32) for _ in range(service.MAX_SEAL_ANNOUNCEMENTS + 50))]
    anns = [SealAnnouncement("xx", i, keys[i - 1], keys[i]) for i in range(1, len(keys))]
    NodeService.learn_seals(node, anns[::2])  # type: ignore[arg-type]
    NodeService.learn_seals(node, anns[1::2])  # type: ignore[arg-type]  (out of order)
    assert len(node._seals["xx"]) == service.MAX_SEAL_ANNOUNCEMENTS
    assert min(node._seals["xx"]) == len(anns) - service.MAX_SEAL_ANNOUNCEMENTS + 1
    assert NodeService.seal_key_for(node, "xx").key == anns[-1].new  # type: ignore[arg-type]
    # The card's key was replaced long ago (its announcement no longer in memory): the
    # log still wins over it, never the old card.
    assert NodeService.seal_key_for(node, "xx").source != "card"  # type: ignore[arg-type]
