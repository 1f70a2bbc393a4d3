"""Introductions as pure decisions (node.services.introductions.adopt)."""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.config.identity import IdentityCard
from node.config.peers import Peer
from node.core.signing import raw_public, sign_seal_key
from node.services.introductions import Offer, adopt, served
from tests.node.config.test_identity import self_signed_der

SIGNERS: dict[bytes, Ed25519PrivateKey] = {}  # raw public key -> its private key


def new_key() -> bytes:
    private = Ed25519PrivateKey.generate()
    raw = raw_public(private.public_key())
    SIGNERS[raw] = private
    return raw


def new_seal() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


OWN_KEY = new_key()


def with_seal(c: IdentityCard, seal: bytes, signed: bool = True) -> IdentityCard:
    """``c`` carrying ``seal``, signed by its center's key (as `fcnode identity`
    prints it) or unsigned (a card of an older release, or an introducer's pairing)."""
    return dataclasses.replace(c, seal_key=seal, seal_signature=sign_seal_key(
        SIGNERS[c.signing_key], c.center, seal) if signed else b"")


def card(center: str, key: bytes | None = None, address: str = "10.0.0.2:7701") -> IdentityCard:
    der = self_signed_der(center)
    c = IdentityCard(center, address, key or new_key(), hashlib.sha256(der).hexdigest(),
                     center, der)
    return with_seal(c, new_seal())


HUB = Peer(card("hub"), introducer=True)
HUB2 = Peer(card("hub2"), introducer=True)


def test_adopts_for_verification_only_and_follows_the_view() -> None:
    x = card("xx")
    got = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(x, ())])
    assert got.adopted == ("xx",)
    p = got.peers["xx"]
    assert (p.connect, p.introduced_by, p.trusted) == (False, "hub", True)
    gone = adopt("me", OWN_KEY, got.peers, "hub", [])
    assert gone.removed == ("xx",) and "xx" not in gone.peers


def test_never_overrides_a_direct_pin_and_two_introducers_disagreeing_trust_neither() -> None:
    direct = Peer(card("xx"), connect=False)
    got = adopt("me", OWN_KEY, {"hub": HUB, "xx": direct}, "hub", [Offer(card("xx"), ())])
    assert got.peers["xx"] == direct and got.conflicts and not got.changed
    assert adopt("me", OWN_KEY, got.peers, "hub", []).peers["xx"] == direct  # not removed

    first = adopt("me", OWN_KEY, {"hub": HUB, "hub2": HUB2}, "hub", [Offer(card("yy"), ())])
    second = adopt("me", OWN_KEY, first.peers, "hub2", [Offer(card("yy"), ())])
    kept = second.peers["yy"]
    assert kept.card == first.peers["yy"].card  # not replaced
    assert kept.conflict and not kept.trusted and second.new_conflicts == ("yy",)


def test_own_id_refused_loops_ignored_key_reuse_refused() -> None:
    got = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(card("me"), ())])
    assert "me" not in got.peers and got.refused
    same = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(card("me", OWN_KEY), ())])
    assert not same.refused  # our own card echoed back is no attack
    looped = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(card("zz"), ("me",))])
    assert "zz" not in looped.peers
    stolen = adopt("me", OWN_KEY, {"hub": HUB}, "hub",
                   [Offer(card("zz", HUB.card.signing_key), ())])
    assert "zz" not in stolen.peers and stolen.refused


def test_served_view_names_the_introducers_and_skips_the_asker_and_untrusted() -> None:
    got = adopt("me", OWN_KEY, {"hub": HUB, "hub2": HUB2}, "hub", [Offer(card("xx"), ("h0",))])
    view = {o.card.center: o.via for o in served(got.peers, "hub2")}
    assert view == {"hub": (), "xx": ("h0", "hub")}


def test_a_conflict_survives_a_reload_of_peers_toml() -> None:
    from node.config.peers import parse_peers, render_peers

    first = adopt("me", OWN_KEY, {"hub": HUB, "hub2": HUB2}, "hub", [Offer(card("yy"), ())])
    second = adopt("me", OWN_KEY, first.peers, "hub2", [Offer(card("yy"), ())])
    again = parse_peers(render_peers(second.peers.values()), "peers.toml", "me")
    assert again == second.peers and not again["yy"].trusted


def test_an_introducer_cannot_swap_a_center_s_seal_key() -> None:
    # The seal key decides who reads the copies, answers and hits sealed to a center:
    # an introducer that swapped it for its own would read them. Address and
    # certificate may change; another seal key, even signed by the center (a
    # rotation whose entry has not arrived here, or its key leaked), is never taken:
    # the card held stays, trusted, and the offer is reported (red team: taking the
    # card out of trust stopped this node verifying the center's log, the rotation
    # entry included, so a hop that delayed that entry cut the center off for good).
    x = card("xx")
    first = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(x, ())])
    moved = dataclasses.replace(x, address="10.0.0.9:7701")
    got = adopt("me", OWN_KEY, first.peers, "hub", [Offer(moved, ())])
    assert got.updated == ("xx",) and got.peers["xx"].trusted
    swapped = with_seal(x, new_seal())
    got = adopt("me", OWN_KEY, got.peers, "hub", [Offer(swapped, ())])
    p = got.peers["xx"]
    assert p.card.seal_key == x.seal_key and p.trusted and not got.new_conflicts
    assert p.seal_key == x.seal_key and got.conflicts and not got.changed
    # Another introducer offering the center's real signing key with another seal key.
    other = adopt("me", OWN_KEY, {**first.peers, "hub2": HUB2}, "hub2", [Offer(swapped, ())])
    assert other.peers["xx"] == first.peers["xx"] and other.conflicts
    # An administrator's direct pin is never changed, only the offer reported.
    direct = Peer(x, connect=False)
    kept = adopt("me", OWN_KEY, {"hub": HUB, "xx": direct}, "hub", [Offer(swapped, ())])
    assert kept.peers["xx"] == direct and kept.conflicts


def test_a_card_after_a_seal_key_rotation_the_log_announced_is_no_conflict() -> None:
    # The center rotated its seal key (SEAL_KEY_ROTATION in its log, replicated
    # here): its card printed after the rotation, offered by any introducer, and
    # its card from before, offered where the new one is held, are the center's
    # own keys, not a second one. The held card stays trusted (the log decides
    # what is sealed to); a key the log never announced is reported, not taken.
    x = card("xx")
    rotated = with_seal(x, new_seal())
    log = {"xx": frozenset({x.seal_key, rotated.seal_key})}
    first = adopt("me", OWN_KEY, {"hub": HUB, "hub2": HUB2}, "hub", [Offer(x, ())], log)
    same = adopt("me", OWN_KEY, first.peers, "hub", [Offer(rotated, ())], log)
    assert same.peers["xx"].trusted and same.peers["xx"].card == rotated and not same.conflicts
    other = adopt("me", OWN_KEY, first.peers, "hub2", [Offer(rotated, ())], log)
    assert other.peers["xx"] == first.peers["xx"] and not other.conflicts
    back = adopt("me", OWN_KEY, same.peers, "hub2", [Offer(x, ())], log)
    assert back.peers["xx"].trusted and not back.conflicts
    # Red team: the same introducer offering the older card again (the center's own
    # key, replaced after a leak, say) is not followed back: this node hands its
    # cards on, to centers that may not hold the log yet.
    ranked = {"xx": {x.seal_key: 1, rotated.seal_key: 2}}
    again = adopt("me", OWN_KEY, same.peers, "hub", [Offer(x, ())], ranked)
    assert again.peers["xx"].card == rotated and not again.changed  # before: x's card
    forward = adopt("me", OWN_KEY, first.peers, "hub", [Offer(rotated, ())], ranked)
    assert forward.peers["xx"].card == rotated
    stranger = with_seal(x, new_seal())
    bad = adopt("me", OWN_KEY, first.peers, "hub", [Offer(stranger, ())], log)
    assert bad.peers["xx"] == first.peers["xx"] and bad.conflicts and not bad.new_conflicts


def test_an_unsigned_seal_key_from_an_introducer_is_never_believed() -> None:
    # The first time a center is learned, an introducer pairs its real signing key
    # with an X25519 key of its own, unsigned (as a card of an older release would
    # be): the card is adopted for verification, its seal key dropped, reported.
    x = card("xx")
    rogue_seal = new_seal()
    paired = with_seal(x, rogue_seal, signed=False)
    got = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(paired, ())])
    p = got.peers["xx"]
    assert got.adopted == ("xx",) and got.unsigned == ("xx",)
    assert p.trusted and p.card.signing_key == x.signing_key
    assert p.seal_key == b"" and p.card.seal_key == b""
    assert all(o.card.seal_key != rogue_seal for o in served(got.peers, "hub2"))
    # The center's signed card, through the same introducer or another, brings the
    # seal key the center vouches for.
    same = adopt("me", OWN_KEY, got.peers, "hub", [Offer(x, ())])
    assert same.updated == ("xx",) and same.peers["xx"].seal_key == x.seal_key
    other = adopt("me", OWN_KEY, {**got.peers, "hub2": HUB2}, "hub2", [Offer(x, ())])
    assert other.updated == ("xx",) and other.peers["xx"].seal_key == x.seal_key
    # And once held, an unsigned (or absent) seal key offered does not displace it.
    again = adopt("me", OWN_KEY, same.peers, "hub", [Offer(paired, ())])
    assert again.peers["xx"].seal_key == x.seal_key and not again.changed
    bare = adopt("me", OWN_KEY, same.peers, "hub", [Offer(x.without_seal_key(), ())])
    assert bare.peers["xx"].seal_key == x.seal_key and not bare.changed


def test_an_unsigned_seal_key_is_believed_only_from_an_administrator_s_own_pin() -> None:
    # Cards of older releases carry an unsigned seal key. Pinned by hand, the
    # administrator's out-of-band exchange is the root (as for the signing key);
    # introduced (a peers.toml an older release wrote), it is not believed, nor
    # handed on to others.
    from node.config.peers import parse_peers, render_peers

    old = with_seal(card("xx"), new_seal(), signed=False)
    assert Peer(old, connect=False).seal_key == old.seal_key
    assert Peer(old, connect=False).seal_key_state == "unsigned, pinned by hand"
    introduced = Peer(old, connect=False, introduced_by="hub")
    assert introduced.seal_key == b"" and introduced.trusted
    assert introduced.seal_key_state == "unsigned, not believed"
    loaded = parse_peers(render_peers([HUB, introduced]), "peers.toml", "me")
    assert loaded["xx"].seal_key == b""
    assert [o.card.seal_key for o in served(loaded, "hub2") if o.card.center == "xx"] == [b""]
