"""Changes to the pinned set, checked the same way whether the daemon makes
them (federation/runtime.py) or the CLI does on a stopped node (node/services/offline.py)."""

from __future__ import annotations

from node.config.identity import IdentityCard
from node.config.peers import MAX_DISTRUSTS, Peer, pin_conflict
from node.core.keyhistory import Distrust
from node.core.types import ValidationError


def with_peer(peers: dict[str, Peer], peer: Peer, own_center: str,
              own_key: bytes = b"") -> dict[str, Peer]:
    """The pinned set with ``peer`` added (or replacing the entry for its center).
    ``own_key``: this node's raw public signing key (never pinned for anyone)."""
    if peer.center == own_center:
        raise ValidationError("that is this node's own identity card")
    conflict = pin_conflict(peer.card, peers.values(), own_key)
    if conflict:
        raise ValidationError(f"cannot pin {peer.center!r}: {conflict}")
    return {**peers, peer.center: peer}


def updated_peer(old: Peer, card: IdentityCard, distrust_after: int | None,
                 held_head: int) -> Peer:
    """``peers update CARD``: the center's new card (received out of band) replaces
    its pinned keys and certificate; groups, dialling and the introducer mark
    stay, and an introduced card becomes a direct pin (an administrator decided). A new signing key
    distrusts the old one (and whatever was learned from it) after
    ``distrust_after``, by default after the last position this node holds: what
    it holds stays verifiable, the old key signs nothing new."""
    if card.center != old.center:
        raise ValidationError(f"the card is for {card.center!r}, not {old.center!r}")
    if distrust_after is not None and distrust_after < 0:
        raise ValidationError("--distrust-after must be a log position (0 or more)")
    if card.signing_key == old.card.signing_key:
        if distrust_after is not None:
            raise ValidationError("--distrust-after needs a card with a new signing key "
                                  "(this card carries the key already pinned)")
        return Peer(card, old.groups, old.connect, old.distrusts, introducer=old.introducer)
    after = held_head if distrust_after is None else distrust_after
    if old.distrusts and after < old.distrusts[-1].after:
        raise ValidationError(
            f"--distrust-after {after} is before the last distrust of {old.center!r} "
            f"(after seq {old.distrusts[-1].after}): a later distrust may not cut earlier")
    if len(old.distrusts) >= MAX_DISTRUSTS:
        raise ValidationError(f"{old.center!r} was re-pinned {MAX_DISTRUSTS} times already: "
                              "edit peers.toml by hand (see the runbook)")
    # An administrator decided: an introduced card becomes a direct pin (its
    # conflict resolved); an introducer stays one.
    # Earlier distrusts stay: what the keys before signed up to their seqs stays
    # verifiable, and they sign nothing after.
    return Peer(card, old.groups, old.connect,
                (*old.distrusts, Distrust(old.card.signing_key, after)),
                introducer=old.introducer)
