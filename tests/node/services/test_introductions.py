"""Introductions as pure decisions (node.services.introductions.adopt)."""

from __future__ import annotations

import hashlib
import os

from node.config.identity import IdentityCard
from node.config.peers import Peer
from node.services.introductions import Offer, adopt, served
from tests.node.config.test_identity import self_signed_der

OWN_KEY = os.urandom(32)


def card(center: str, key: bytes | None = None, address: str = "10.0.0.2:7701") -> IdentityCard:
    der = self_signed_der(center)
    return IdentityCard(center, address, key or os.urandom(32), hashlib.sha256(der).hexdigest(),
                        center, der, os.urandom(32))


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
    # The seal key decides who reads the copies, answers and hits sealed to a center
    # and nothing signed binds it to the signing key: an introducer that swapped it
    # for its own would read them. Address and certificate may change; the seal key
    # is a conflict (untrusted: no copies sealed to it) until an administrator pins.
    x = card("xx")
    first = adopt("me", OWN_KEY, {"hub": HUB}, "hub", [Offer(x, ())])
    moved = IdentityCard(x.center, "10.0.0.9:7701", x.signing_key, x.tls_fingerprint,
                         x.name, x.tls_cert_der, x.seal_key)
    got = adopt("me", OWN_KEY, first.peers, "hub", [Offer(moved, ())])
    assert got.updated == ("xx",) and got.peers["xx"].trusted
    swapped = IdentityCard(x.center, x.address, x.signing_key, x.tls_fingerprint, x.name,
                           x.tls_cert_der, os.urandom(32))
    got = adopt("me", OWN_KEY, got.peers, "hub", [Offer(swapped, ())])
    p = got.peers["xx"]
    assert p.card.seal_key == x.seal_key and not p.trusted and got.new_conflicts == ("xx",)
    # Another introducer offering the center's real signing key with another seal key.
    other = adopt("me", OWN_KEY, {**first.peers, "hub2": HUB2}, "hub2", [Offer(swapped, ())])
    assert not other.peers["xx"].trusted and other.conflicts
    # An administrator's direct pin is never changed, only the offer reported.
    direct = Peer(x, connect=False)
    kept = adopt("me", OWN_KEY, {"hub": HUB, "xx": direct}, "hub", [Offer(swapped, ())])
    assert kept.peers["xx"] == direct and kept.conflicts
