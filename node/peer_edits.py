"""Changes to the pinned set, checked the same way whether the daemon makes
them (federation/runtime.py) or the CLI does on a stopped node (node/offline.py)."""

from __future__ import annotations

from node.peers import Peer
from node.types import ValidationError


def with_peer(peers: dict[str, Peer], peer: Peer, own_center: str) -> dict[str, Peer]:
    """The pinned set with ``peer`` added (or replacing the entry for its center)."""
    if peer.center == own_center:
        raise ValidationError("that is this node's own identity card")
    for other in peers.values():
        if other.center != peer.center and other.card.tls_fingerprint == peer.card.tls_fingerprint:
            raise ValidationError(f"that certificate is already pinned for {other.center!r}")
    return {**peers, peer.center: peer}
