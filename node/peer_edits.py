"""Changes to the pinned set, checked the same way whether the daemon makes
them (federation/runtime.py) or the CLI does on a stopped node (node/offline.py)."""

from __future__ import annotations

from node.peers import Peer, pin_conflict
from node.types import ValidationError


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
