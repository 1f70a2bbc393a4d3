"""The pure decision of own-log recovery (node.core.recovery): entries beyond this
node's head that its own key signed are taken back only by a node a restore (or an
administrator's adopt) marked; an unmarked node is held, and only an administrator's
command ends that."""

from __future__ import annotations

import pytest

from node.core.recovery import HELD_CHOICE, Held, OwnEntry, OwnLogRecovery, own_entry

PROOF = Held(peer="nysic", seq=6, own_head=5, entry_hash=b"\x01" * 32, since_ms=1_000)


@pytest.mark.parametrize(("proof", "marked", "held", "expected"), [
    (False, False, False, OwnEntry.NONE),   # a claimed head alone is never proof
    (False, True, False, OwnEntry.NONE),
    (False, False, True, OwnEntry.NONE),
    (True, True, False, OwnEntry.TAKE),     # `fcnode restore` (or adopt) marked it
    (True, True, True, OwnEntry.TAKE),      # the marker wins over a held state in a copy
    (True, False, False, OwnEntry.HOLD),    # unmarked: an old copy, or a thief
    (True, False, True, OwnEntry.HELD),
])
def test_own_entry_decision(proof: bool, marked: bool, held: bool, expected: OwnEntry) -> None:
    assert own_entry(proof, marked, held) is expected


def test_held_refuses_every_append_but_the_stolen_key_rotation() -> None:
    r = OwnLogRecovery(started=0.0, settle_s=0.0)
    r.set_dialled({"nysic"})
    r.heard("nysic", 5, 5)
    assert r.refusal(5, 1.0) == ""
    r.hold(PROOF)
    refusal = r.refusal(5, 1.0)
    assert refusal.startswith("own log held: peer nysic sent seq 6")
    assert "beyond its head 5" in refusal and HELD_CHOICE in refusal
    assert "fcnode recovery adopt" in refusal and "--stolen" in refusal
    # The rotation of the stolen-key runbook is the one append that may go on.
    assert r.refusal(5, 1.0, stolen=True) == ""
    # Held is not recovering: no peer's confirmation ends it.
    assert not r.active and not r.caught_up(5)
    r.heard("nysic", 5, 5)
    assert r.held == PROOF and r.refusal(5, 1.0) == refusal
    r.release()
    assert r.held is None and r.refusal(5, 1.0) == ""


def test_adopt_turns_held_into_recovery() -> None:
    r = OwnLogRecovery(started=0.0, settle_s=0.0)
    r.set_dialled({"nysic"})
    r.hold(PROOF)
    r.adopt("adopted by admin")
    assert r.held is None and r.active and r.reason == "adopted by admin"
    assert r.heard("nysic", 8, 5)
    assert r.refusal(5, 1.0).startswith("recovering own log: 3 entries")
    assert not r.heard("nysic", 8, 8) and r.caught_up(8)


def test_each_peers_news_is_logged_once() -> None:
    r = OwnLogRecovery()
    r.hold(PROOF)
    assert not r.seen_held("nysic", 6)   # the proof itself
    assert r.seen_held("nysic", 7)
    assert not r.seen_held("nysic", 7)
    assert r.seen_held("ffc", 6)


def test_held_detail_has_no_content() -> None:
    assert PROOF.detail() == {"peer": "nysic", "seq": 6, "own_head": 5,
                              "entry_hash": "01" * 32, "since_ms": 1_000}
    assert PROOF.describe() == ("peer nysic sent seq 6 of this center's own log, signed by "
                                "this node's key, beyond its head 5")
