"""Seal-key rotation with no action at peers (real daemons over mutual TLS).

origin <-> hub <-> spoke: the spoke never dials the origin (it pins the origin's
card only), so it learns the origin's SEAL_KEY_ROTATION through the hub. What the
spoke seals for the origin (copies of an AMBER record named for it, resting on
the hub) is sealed to the new key once the entry arrived, and the origin opens
both that and what was sealed to its old key before. A hostile peer replaying
the old announcement, forging one, or an administrator re-pinning the old card
does not roll the key back."""

from __future__ import annotations

import contextlib
import stat
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.config import keys
from node.config.identity import b64e, parse_card
from node.core.keyhistory import announcement
from node.core.sealing import open_copy
from node.core.signing import entry_hash, seal_record
from node.devnet import Node
from node.wire import federation_pb2, records_pb2
from tests.integration.rogue import Rogue
from tests.integration.test_keys import _entries, chain, head, rejections

AMBER_FOR_ORIGIN = ("--kind", "BOLO", "--tlp", "AMBER", "--audience", "spoke",
                    "--audience", "origin", "--discoverability", "pointer")


def in_use(node: Node, center: str) -> tuple[str, str]:
    shown = node.call("ShowPeer", {"center": center})
    return shown["seal_key_in_use"], shown["seal_key_source"]


def copies_at(node: Node, origin: str, seq: int) -> list[federation_pb2.SealedCopy]:
    with contextlib.closing(node.db()) as conn:
        rows = conn.execute("SELECT sealed, signature, key_id, hash FROM sealed_copies "
                            "WHERE origin = ? AND seq = ?", (origin, seq)).fetchall()
    return [(federation_pb2.SealedCopy(sealed=s, signature=g, key_id=k), h)
            for s, g, k, h in rows]


def opens(node: Node, origin: str, seq: int, private) -> bool:  # type: ignore[no-untyped-def]
    return any(open_copy(c, [private], origin, seq, h) is not None
               for c, h in copies_at(node, origin, seq))


def seal_announcement(origin: str, seq: int, prev: bytes, key: Ed25519PrivateKey,
                      new: bytes) -> federation_pb2.LogItem:
    """A SEAL_KEY_ROTATION entry for ``origin`` at ``seq``, signed with ``key``."""
    body = announcement(origin, seq, prev, f"seal{seq}", int(time.time() * 1000), "x", "")
    body.kind = records_pb2.SEAL_KEY_ROTATION
    body.new_seal_key = new
    env = seal_record(key, body)
    return federation_pb2.LogItem(origin=origin, seq=seq, hash=entry_hash(env.payload),
                                  envelope=env)


def test_seal_key_rotation_reaches_peers_and_beyond_with_no_admin_there(
        make_node, tmp_path: Path) -> None:
    origin, hub, spoke = chain(make_node)
    home_key = origin.home / "encryption.key"
    old_private = keys.load_x25519(home_key)
    old_card = parse_card(origin.card())
    assert in_use(spoke, "origin") == (b64e(old_card.seal_key), "card")

    # While the hub is down: the spoke seals a copy for the origin to the key it
    # knows (the old one), and the origin rotates. The copy rests at the spoke
    # (then at the hub) and reaches the origin only after the rotation.
    hub.stop()
    before = spoke.publish("--title", "SEALROT-before", "--entity", "plate=SR 1",
                           *AMBER_FOR_ORIGIN)
    rotated = origin.json("keys", "rotate", "--seal")
    seq = int(rotated["seq"])
    new_card = parse_card(origin.card())  # `fcnode identity`: the new key, signed
    assert new_card.seal_key != old_card.seal_key and new_card.seal_signature
    new_private = keys.load_x25519(home_key)
    assert new_private.public_key().public_bytes_raw() == new_card.seal_key
    retired = origin.home / f"encryption.key.retired-{seq}"
    for path in (home_key, retired):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert keys.load_x25519(retired).public_key().public_bytes_raw() == old_card.seal_key
    hub.start()

    # The origin opens the copy sealed to its old key (kept, retired).
    origin.wait_held(before["record_id"])
    assert origin.json("get", before["record_id"])["title"] == "SEALROT-before"

    # The hub (direct peer) and the spoke (beyond it) seal to the new key: nobody
    # ran a command there.
    want = (b64e(new_card.seal_key), f"log seq {seq}")
    for peer in (hub, spoke):
        peer.wait_for(lambda p=peer: in_use(p, "origin") == want, 30,
                      f"the new seal key in use at {peer.center}")
    listed = {p["center"]: p for p in spoke.json_lines("peers", "list")}
    assert listed["origin"]["seal_key"] == f"announced (log seq {seq})"

    after = spoke.publish("--title", "SEALROT-after", "--entity", "plate=SR 2",
                          *AMBER_FOR_ORIGIN)
    origin.wait_held(after["record_id"])
    hub.wait_for(lambda: copies_at(hub, "spoke", int(after["seq"])), 30, "the copy at the hub")
    # The copy resting on the hub is sealed to the new key, not the old one.
    assert opens(hub, "spoke", int(after["seq"]), new_private)
    assert not opens(hub, "spoke", int(after["seq"]), old_private)
    assert not hub.holds(after["record_id"])

    # An administrator re-pins the origin's old card (same signing key, older seal
    # key): a card's statement has no position, the log's newer entry stays.
    spoke.call("UpdatePeer", {"card": old_card.line()})
    assert in_use(spoke, "origin") == want

    # A hostile peer: replays the origin's old announcement, forges one with its
    # own key, and (holding the origin's signing key, as a thief would) offers a
    # low-order seal key. Nothing is taken; the refusals are logged.
    next_seq, prev = head(spoke, "origin")
    stolen = keys.load_signing_key(origin.home / "signing.key")
    for name, item, why in (
            ("mallory", seal_announcement("origin", next_seq + 1, prev, stolen, bytes(32)),
             "not a usable X25519 key"),
            ("eve", seal_announcement("origin", next_seq + 1, prev, Ed25519PrivateKey.generate(),
                                      Rogue(tmp_path, "spare").card.seal_key),
             "bad signature")):
        rogue = Rogue(tmp_path, name)
        # (A replay of the origin's real, older announcement first: a duplicate.)
        rogue.items = [*_entries(origin, "origin", (seq,)), item]
        rogue.serve(spoke.card())
        try:
            spoke.ok("peers", "add", rogue.card.line())
            spoke.wait_for(lambda w=why: any(w in r for s, r in rejections(spoke, "origin")
                                             if s == next_seq + 1), 30, f"{name}'s refused")
            assert head(spoke, "origin")[0] == next_seq
            assert in_use(spoke, "origin") == want
        finally:
            rogue.stop()
            spoke.ok("peers", "remove", name)

    # Learned from the database after a restart; the origin keeps its new card.
    spoke.stop()
    spoke.start()
    assert in_use(spoke, "origin") == want
    origin.stop()
    origin.start()
    assert parse_card(origin.card()).seal_key == new_card.seal_key

    # Retiring: a second rotation with --retire deletes every earlier private key.
    again = origin.json("keys", "rotate", "--seal", "--retire")
    assert again["retired"] == 2 or int(again["retired"]) == 2
    assert sorted(p.name for p in origin.home.glob("encryption.key*")) == ["encryption.key"]


def test_a_rotated_card_offered_before_the_log_entry_does_not_cut_the_center_off(
        make_node, tmp_path: Path) -> None:
    """Red team. o knows x only through an introducer that is also the hub o gets
    x's log from. x rotates its seal key; the hub withholds the SEAL_KEY_ROTATION
    entry (a delay: allowed) and introduces x's new card (x signed that key). o
    took the card as a second signed seal key: an introduced card in conflict,
    untrusted until an administrator acted, and so x's log no longer verified at
    o, the announcement that would have explained the card included: a hop's
    delay became a block of x at o, for good. The offer is reported and the card
    held stays; once x's entry arrives the log decides."""
    x = make_node("xx")
    o = make_node("oo", start=False)
    o.edit_config("introduction_poll_s = 30.0", "introduction_poll_s = 0.3")
    o.start()
    first = x.publish("--kind", "BOLO", "--title", "x before", "--audience", "members")
    hub = Rogue(tmp_path, "hub")  # introduces x, relays none of x's log
    hub.introduces = [(x.card(), [])]
    hub.serve(o.card())
    relay = None
    try:
        o.ok("peers", "add", hub.card.line(), "--introducer")
        old = parse_card(x.card())
        o.wait_for(lambda: "xx" in {p["center"] for p in o.call("ListPeers")}, 30,
                   "xx introduced at oo")
        o.wait_for(lambda: in_use(o, "xx") == (b64e(old.seal_key), "card"), 30,
                   "xx introduced at oo")
        seq = int(x.json("keys", "rotate", "--seal")["seq"])
        new = parse_card(x.card())
        hub.introduces = [(new.line(), [])]
        o.wait_for(lambda: "another seal key" in o.log_tail(1_000_000), 30,
                   "the new card's offer seen at o")
        shown = {p["center"]: p for p in o.call("ListPeers")}["xx"]
        assert not shown.get("conflict"), shown  # before the fix: in conflict, untrusted
        assert in_use(o, "xx") == (b64e(old.seal_key), "card")
        # The entry arrives (another peer relays x's log): the log decides.
        relay = Rogue(tmp_path, "relay")
        relay.items = _entries(x, "xx", (int(first["seq"]), seq))
        relay.serve(o.card())
        o.ok("peers", "add", relay.card.line())
        o.wait_for(lambda: in_use(o, "xx") == (b64e(new.seal_key), f"log seq {seq}"), 30,
                   "the announced key in use at o")
    finally:
        hub.stop()
        if relay is not None:
            relay.stop()
