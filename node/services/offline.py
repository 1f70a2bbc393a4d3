"""What an administrator can do to a node whose daemon is stopped: provision
peers before the first start, take a backup. Each operation holds the
daemon's lock (so no daemon starts half-way), writes atomically and leaves an
audit entry, attributed to the Unix account that ran it (no daemon, no
credential: whoever can write the home can act as its administrator)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from node.config import keys
from node.config.home import Home, check_group, load_config
from node.config.identity import b64e, parse_card
from node.config.peer_edits import updated_peer, with_peer
from node.config.peers import Peer, load_peers, save_peers
from node.core.keyhistory import build_history
from node.core.signing import AUDIT_DOMAIN, raw_public, sign
from node.core.timeutil import now_ms
from node.core.types import FcnodeError, ValidationError
from node.services.backup import BackupResult, make_backup
from node.storage import audit as audit_tx
from node.storage import keys as keys_tx
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync

STOPPED = "daemon stopped"


class PeerNotFound(FcnodeError):
    pass


def actor() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        name = f"uid{os.getuid()}"
    return f"offline:{name}"


def audit(home: Home, action: str, detail: dict[str, Any]) -> None:
    signing = keys.load_signing_key(home.signing_key)
    conn = open_sync(home.database)
    try:
        with immediate(conn):
            audit_tx.append(conn, lambda m: sign(signing, AUDIT_DOMAIN, m), now_ms(), actor(),
                            action, detail)
    finally:
        conn.close()


def compact_pending_erasure(home: Home) -> bool:
    """Compact the text index if purges from peers wait for it (index_erasure):
    the daemon compacts at shutdown, but one that was killed left the row, and
    VACUUM INTO copies the index's segments with the purged words in them into a
    backup kept for years. True if it compacted."""
    conn = open_sync(home.database)
    try:
        with immediate(conn):
            return log_tx.compact_if_pending(conn)
    finally:
        conn.close()


def held_head(home: Home, origin: str) -> int:
    conn = open_sync(home.database)
    try:
        return keys_tx.held_head(conn, origin)
    finally:
        conn.close()


def peer_view(p: Peer) -> dict[str, Any]:
    return {"center": p.center, "name": p.card.name, "address": p.address,
            "groups": list(p.groups), "connect": p.connect, "introducer": p.introducer,
            "introduced_by": p.introduced_by, "conflict": p.conflict,
            "tls_fingerprint": p.card.tls_fingerprint, "state": STOPPED,
            "seal_key": p.seal_key_state}


def list_peers(home: Home) -> list[dict[str, Any]]:
    cfg = load_config(home)
    return [peer_view(p) for _, p in sorted(load_peers(home.peers, cfg.center).items())]


def show_peer(home: Home, center: str) -> dict[str, Any]:
    cfg = load_config(home)
    peer = load_peers(home.peers, cfg.center).get(center)
    if peer is None:
        raise PeerNotFound(f"no pinned peer {center!r}")
    conn = open_sync(home.database)
    try:
        rotations = [r for r in keys_tx.rotations(conn) if r.origin == center]
    finally:
        conn.close()
    history = build_history(peer.card.signing_key, rotations, peer.distrusts)
    out = {**peer_view(peer), "card": peer.card.line(),
           "keys": [{"key_id": s.key_id, "key": b64e(s.key), "from_seq": s.from_seq,
                     "until_seq": s.until_seq, "current": s.until_seq is None}
                    for s in history.spans]}
    if peer.distrust_after is not None:
        out["distrust_after"] = peer.distrust_after
    return out


def add_peer(home: Home, card_text: str, groups: list[str], connect: bool,
             introducer: bool = False) -> dict[str, Any]:
    """Validated as the daemon validates (and peers.toml is re-validated at start)."""
    cfg = load_config(home)
    card = parse_card(card_text)
    if introducer and not connect:
        raise ValidationError("an introducer must be dialled (drop --no-connect)")
    peer = Peer(card, tuple(check_group(g) for g in groups), connect, introducer=introducer)
    own_key = raw_public(keys.load_signing_key(home.signing_key).public_key())
    peers = with_peer(load_peers(home.peers, cfg.center, own_key), peer, cfg.center, own_key)
    save_peers(home.peers, list(peers.values()))
    audit(home, "peer.add", {"peer": card.center, "address": card.address,
                             "groups": list(peer.groups), "connect": connect,
                             "tls_fingerprint": card.tls_fingerprint})
    return peer_view(peer)


def update_peer(home: Home, card_text: str, distrust_after: int | None) -> dict[str, Any]:
    """The daemon moves held entries the distrusted key signed after the seq out of
    its log when it starts (NodeService.load_key_history)."""
    cfg = load_config(home)
    card = parse_card(card_text)
    own_key = raw_public(keys.load_signing_key(home.signing_key).public_key())
    pinned = load_peers(home.peers, cfg.center, own_key)
    old = pinned.get(card.center)
    if old is None:
        raise PeerNotFound(f"no pinned peer {card.center!r} (pin it with: fcnode peers add)")
    held = held_head(home, card.center) if distrust_after is None else 0
    peer = updated_peer(old, card, distrust_after, held)
    peers = with_peer(pinned, peer, cfg.center, own_key)
    save_peers(home.peers, list(peers.values()))
    audit(home, "peer.update", {"peer": card.center, "address": card.address,
                                "tls_fingerprint": card.tls_fingerprint,
                                "distrust_after": peer.distrust_after})
    return {**peer_view(peer), "distrust_after": peer.distrust_after}


def remove_peer(home: Home, center: str) -> dict[str, Any]:
    cfg = load_config(home)
    peers = load_peers(home.peers, cfg.center)
    if center not in peers:
        raise PeerNotFound(f"no pinned peer {center!r}")
    save_peers(home.peers, [p for c, p in peers.items() if c != center])
    audit(home, "peer.remove", {"peer": center})
    return {"removed": center}


def backup(home: Home, target: Path, include_keys: bool, force: bool) -> BackupResult:
    cfg = load_config(home)
    compact_pending_erasure(home)
    result = make_backup(home, cfg.center, target, include_keys, force)
    audit(home, "node.backup", result.audit_detail())
    return result
