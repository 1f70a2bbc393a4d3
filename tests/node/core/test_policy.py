"""node.core.policy.decide: unit tests and hypothesis properties.

The access decision is the heart of the product (DESIGN.md section 5): every path
out of a node goes through it, so these properties say what must never leave.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from node.core.policy import (
    center_eligible,
    decide,
    pointer_possible,
    relayable,
    user_attribute,
    user_qualifies,
)
from node.core.types import MEMBERS, Decision, Discoverability, Policy, Requester, Tlp

CENTERS = ("ncric", "nysic", "ffc", "mcac", "wsic")
USERS = ("alice", "bob", "carol")
PLAIN = ("sworn_le", "28cfr_certified", "analyst", "ntk:narcotics")
NAMED = tuple(user_attribute(c, u) for c in CENTERS[:3] for u in USERS[:2])
STRICT = (Tlp.AMBER_STRICT, Tlp.RED)

# No "explain" phase: it triples the time a failing property takes to report.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
PROPS = settings(max_examples=200, deadline=None, phases=PHASES)

centers = st.sampled_from(CENTERS)
users = st.sampled_from(USERS)
plain_attrs = st.sampled_from(PLAIN)
named_attrs = st.sampled_from(NAMED)
# Attributes a center may *assert* for its user, including forged "user:" ones.
asserted = st.frozensets(st.one_of(plain_attrs, named_attrs), max_size=6)

policies = st.builds(
    Policy,
    tlp=st.sampled_from(list(Tlp)),
    audience=st.frozensets(st.sampled_from((*CENTERS, MEMBERS)), max_size=4),
    required_attributes=st.frozensets(st.one_of(plain_attrs, named_attrs), max_size=5),
    discoverability=st.sampled_from(list(Discoverability)),
    relay=st.booleans(),
)
user_requesters = st.builds(Requester, center=centers, user=users, attributes=asserted)
center_requesters = st.builds(Requester, center=centers, user=st.none(), attributes=asserted)
requesters = st.one_of(user_requesters, center_requesters)


def named_in(policy: Policy) -> frozenset[str]:
    return frozenset(a for a in policy.required_attributes if a.startswith("user:"))


def plain_in(policy: Policy) -> frozenset[str]:
    return policy.required_attributes - named_in(policy)


# --------------------------------------------------------------------------- units

def test_origin_user_with_attributes_gets_full_and_outsider_gets_pointer():
    p = Policy(Tlp.AMBER, frozenset({"nysic"}), frozenset({"sworn_le"}))
    me = Requester("ncric", "alice", frozenset({"sworn_le"}))
    outsider = Requester("ffc", "bob", frozenset({"sworn_le"}))
    assert decide(p, "ncric", "ncric", me) is Decision.FULL
    assert decide(p, "ncric", "ncric", outsider) is Decision.POINTER


def test_audience_member_without_attribute_gets_discoverability_answer():
    p = Policy(Tlp.AMBER, frozenset({"nysic"}), frozenset({"sworn_le"}),
               Discoverability.RESTRICTED)
    assert decide(p, "ncric", "ncric", Requester("nysic", "bob")) is Decision.NOTIFY_ONLY
    ok = Requester("nysic", "bob", frozenset({"sworn_le"}))
    assert decide(p, "ncric", "ncric", ok) is Decision.FULL


def test_members_audience_admits_every_center():
    p = Policy(Tlp.GREEN, frozenset({MEMBERS}))
    for c in CENTERS:
        assert decide(p, "ncric", "ncric", Requester(c)) is Decision.FULL
        assert decide(p, "ncric", "ncric", Requester(c, "bob")) is Decision.FULL


def test_empty_audience_replication_denied_to_everyone_but_origin():
    p = Policy(Tlp.CLEAR, frozenset(), discoverability=Discoverability.OPEN)
    assert decide(p, "ncric", "ncric", Requester("ncric")) is Decision.FULL
    for c in CENTERS[1:]:
        assert decide(p, "ncric", "ncric", Requester(c)) is Decision.DENY


def test_empty_audience_with_open_discoverability_is_not_everybody():
    """DESIGN.md 5: an empty audience means nobody but the origin — never everybody
    (MISP #4200). A qualified user at another center must not get the content."""
    p = Policy(Tlp.GREEN, frozenset(), discoverability=Discoverability.OPEN)
    assert decide(p, "ncric", "ncric", Requester("nysic", "bob")) is not Decision.FULL


def test_open_discoverability_gives_full_to_qualified_outsider_when_audience_named():
    p = Policy(Tlp.GREEN, frozenset({"nysic"}), frozenset({"sworn_le"}),
               Discoverability.OPEN)
    ok = Requester("ffc", "bob", frozenset({"sworn_le"}))
    assert decide(p, "ncric", "ncric", ok) is Decision.FULL
    assert decide(p, "ncric", "ncric", Requester("ffc", "bob")) is Decision.POINTER
    # Replication is center-level: an outsider never gets the record pushed.
    assert decide(p, "ncric", "ncric", Requester("ffc")) is Decision.DENY


@pytest.mark.parametrize("tlp", STRICT)
def test_strict_tlp_open_counts_as_pointer(tlp):
    p = Policy(tlp, frozenset({"nysic"}), frozenset({"user:ffc/bob"}), Discoverability.OPEN)
    bob = Requester("ffc", "bob")
    assert decide(p, "ncric", "ncric", bob) is Decision.POINTER


def test_relay_node_serves_own_users_but_not_other_centers_for_non_relayable():
    p = Policy(Tlp.AMBER_STRICT, frozenset({"nysic", "ffc"}), relay=False)
    # nysic holds a copy (origin ncric). Its own user: not relaying.
    assert decide(p, "ncric", "nysic", Requester("nysic", "bob")) is Decision.FULL
    # Another center, even one in the audience: at most POINTER from a relay.
    assert decide(p, "ncric", "nysic", Requester("ffc", "carol")) is Decision.POINTER
    assert decide(p, "ncric", "nysic", Requester("ffc")) is Decision.DENY
    # The origin answers it FULL itself.
    assert decide(p, "ncric", "ncric", Requester("ffc", "carol")) is Decision.FULL


def test_relay_false_on_green_record_blocks_relaying():
    p = Policy(Tlp.GREEN, frozenset({MEMBERS}), relay=False)
    assert not relayable(p)
    assert decide(p, "ncric", "nysic", Requester("ffc")) is Decision.DENY
    assert decide(p, "ncric", "nysic", Requester("ffc", "bob")) is Decision.POINTER
    assert relayable(replace(p, relay=True))


def test_red_named_user_only():
    p = Policy(Tlp.RED, frozenset({"nysic"}), frozenset({"user:nysic/alice"}))
    alice = Requester("nysic", "alice")
    bob = Requester("nysic", "bob")
    assert decide(p, "ncric", "ncric", alice) is Decision.FULL
    assert decide(p, "ncric", "ncric", bob) is Decision.POINTER
    # Same user name at another center is another person.
    assert decide(p, "ncric", "ncric", Requester("ffc", "alice")) is not Decision.FULL


def test_red_asserted_user_attribute_does_not_count():
    p = Policy(Tlp.RED, frozenset({"nysic"}), frozenset({"user:nysic/alice"}))
    forged = Requester("nysic", "bob", frozenset({"user:nysic/alice"}))
    assert decide(p, "ncric", "ncric", forged) is not Decision.FULL
    assert not user_qualifies(p, forged)


def test_red_without_named_users_nobody_qualifies():
    p = Policy(Tlp.RED, frozenset({"nysic"}), frozenset({"sworn_le"}))
    r = Requester("ncric", "alice", frozenset({"sworn_le"}))
    assert not user_qualifies(p, r)
    assert decide(p, "ncric", "ncric", r) is not Decision.FULL


def test_named_users_are_any_one_of():
    """Named readers are a disjunction (proto: 'user:CENTER/NAME ones: any one')."""
    p = Policy(Tlp.AMBER, frozenset({"nysic"}),
               frozenset({"sworn_le", "user:nysic/alice", "user:nysic/bob"}))
    for name in ("alice", "bob"):
        r = Requester("nysic", name, frozenset({"sworn_le"}))
        assert decide(p, "ncric", "ncric", r) is Decision.FULL
    carol = Requester("nysic", "carol", frozenset({"sworn_le"}))
    assert decide(p, "ncric", "ncric", carol) is Decision.POINTER
    # A named reader still needs the plain attributes.
    assert decide(p, "ncric", "ncric", Requester("nysic", "alice")) is Decision.POINTER


def test_user_attribute_format():
    assert user_attribute("nysic", "alice") == "user:nysic/alice"


def test_center_eligible():
    p = Policy(Tlp.AMBER, frozenset({"nysic"}))
    assert center_eligible(p, "ncric", "ncric")
    assert center_eligible(p, "ncric", "nysic")
    assert not center_eligible(p, "ncric", "ffc")
    assert not center_eligible(replace(p, audience=frozenset()), "ncric", "nysic")


# ---------------------------------------------------------------------- properties

@PROPS
@given(policies, centers, centers, requesters)
def test_prop_empty_audience_full_only_for_origin(p, origin, evaluator, req):
    p = replace(p, audience=frozenset())
    if req.center != origin:
        assert decide(p, origin, evaluator, req) is not Decision.FULL


@PROPS
@given(policies, centers, centers, requesters)
def test_prop_strict_tlp_never_relayed(p, origin, evaluator, req):
    if evaluator != origin and req.center != evaluator and (
            p.tlp in STRICT or not p.relay):
        assert decide(p, origin, evaluator, req) is not Decision.FULL


@PROPS
@given(st.data(), policies, centers, centers, user_requesters)
def test_prop_missing_plain_attribute_never_full(data, p, origin, evaluator, req):
    missing = data.draw(plain_attrs)
    p = replace(p, required_attributes=p.required_attributes | {missing})
    req = replace(req, attributes=req.attributes - {missing})
    assert decide(p, origin, evaluator, req) is not Decision.FULL


@PROPS
@given(policies, centers, centers, user_requesters)
def test_prop_red_full_only_for_named_users(p, origin, evaluator, req):
    p = replace(p, tlp=Tlp.RED)
    if decide(p, origin, evaluator, req) is Decision.FULL:
        assert user_attribute(req.center, req.user) in p.required_attributes


@PROPS
@given(policies, centers, centers, user_requesters)
def test_prop_asserted_user_attributes_never_count(p, origin, evaluator, req):
    """A center asserting 'user:X/Y' for its user changes nothing: named readers are
    derived from the requesting center and user name only."""
    stripped = replace(req, attributes=frozenset(
        a for a in req.attributes if not a.startswith("user:")))
    assert decide(p, origin, evaluator, req) is decide(p, origin, evaluator, stripped)


@PROPS
@given(policies, centers, centers, center_requesters)
def test_prop_replication_full_or_deny_and_full_only_if_eligible(p, origin, evaluator, req):
    d = decide(p, origin, evaluator, req)
    assert d in (Decision.FULL, Decision.DENY)
    if d is Decision.FULL:
        assert req.center == origin or MEMBERS in p.audience or req.center in p.audience
        assert evaluator == origin or req.center == evaluator or relayable(p)


@PROPS
@given(policies, centers, users, st.frozensets(plain_attrs))
def test_prop_origin_users_with_attributes_get_full(p, origin, user, extra):
    me = user_attribute(origin, user)
    named = named_in(p)
    if p.tlp is Tlp.RED or named:
        p = replace(p, required_attributes=p.required_attributes | {me})
    req = Requester(origin, user, plain_in(p) | extra)
    assert decide(p, origin, origin, req) is Decision.FULL


@st.composite
def wide_and_narrow(draw):
    wide = draw(policies)
    if MEMBERS in wide.audience:
        audience = draw(st.frozensets(st.sampled_from((*CENTERS, MEMBERS))))
    elif wide.audience:
        audience = draw(st.frozensets(st.sampled_from(sorted(wide.audience))))
    else:
        audience = frozenset()
    plain = plain_in(wide) | draw(st.frozensets(plain_attrs))
    # Named readers are "any one of": dropping one narrows, adding one widens. The
    # first named reader narrows a non-RED policy (before it, anyone qualified).
    named_w = named_in(wide)
    if named_w:
        named = draw(st.frozensets(st.sampled_from(sorted(named_w)), min_size=1))
    elif wide.tlp is Tlp.RED:
        named = frozenset()
    else:
        named = draw(st.frozensets(named_attrs))
    narrow = Policy(
        tlp=draw(st.sampled_from([t for t in Tlp if t >= wide.tlp])),
        audience=audience,
        required_attributes=plain | named,
        discoverability=draw(st.sampled_from(
            [d for d in Discoverability if d >= wide.discoverability])),
        relay=wide.relay and draw(st.booleans()),
    )
    return wide, narrow


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(wide_and_narrow(), centers, centers, requesters)
def test_prop_narrowing_never_widens(pair, origin, evaluator, req):
    wide, narrow = pair
    assert decide(narrow, origin, evaluator, req) <= decide(wide, origin, evaluator, req)


# --------------------------------------------------------------- table-driven oracle

D = Discoverability
# What a requester gets when it is not (eligible center AND qualified user):
# (discoverability, strict TLP, qualified user) -> decision.
OUTSIDE = {
    (D.OPEN, False, True): Decision.FULL,
    (D.OPEN, False, False): Decision.POINTER,
    (D.OPEN, True, True): Decision.POINTER,  # OPEN counts as POINTER for AMBER+STRICT/RED
    (D.OPEN, True, False): Decision.POINTER,
    (D.POINTER, False, True): Decision.POINTER,
    (D.POINTER, False, False): Decision.POINTER,
    (D.POINTER, True, True): Decision.POINTER,
    (D.POINTER, True, False): Decision.POINTER,
    (D.RESTRICTED, False, True): Decision.NOTIFY_ONLY,
    (D.RESTRICTED, False, False): Decision.NOTIFY_ONLY,
    (D.RESTRICTED, True, True): Decision.NOTIFY_ONLY,
    (D.RESTRICTED, True, False): Decision.NOTIFY_ONLY,
}


def oracle(p: Policy, origin: str, evaluator: str, req: Requester) -> Decision:
    strict = p.tlp in (Tlp.AMBER_STRICT, Tlp.RED)
    may_relay = p.relay and not strict
    relaying = evaluator != origin and req.center != evaluator
    eligible = req.center == origin or MEMBERS in p.audience or req.center in p.audience
    if req.user is None:  # replication
        if eligible and (may_relay or not relaying):
            return Decision.FULL
        return Decision.DENY
    me = f"user:{req.center}/{req.user}"
    plain_required = [a for a in p.required_attributes if not a.startswith("user:")]
    named_required = [a for a in p.required_attributes if a.startswith("user:")]
    holds_plain = all(a in req.attributes for a in plain_required)
    # Named readers: any one of them; TLP:RED without named readers: nobody.
    is_named = me in named_required if named_required else p.tlp != Tlp.RED
    qualified = holds_plain and is_named
    if eligible and qualified:
        result = Decision.FULL
    else:
        disc = p.discoverability
        if not p.audience and disc is D.OPEN:
            # DESIGN.md 5: an empty audience is nobody but the origin, never everybody;
            # OPEN then says no more than POINTER (as for AMBER+STRICT and RED).
            disc = D.POINTER
        result = OUTSIDE[(disc, strict, qualified)]
    if relaying and not may_relay and result > Decision.POINTER:
        result = Decision.POINTER
    return result


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(policies, centers, centers, requesters)
def test_prop_decide_matches_oracle(p, origin, evaluator, req):
    assert decide(p, origin, evaluator, req) is oracle(p, origin, evaluator, req)


def test_oracle_table_is_complete():
    assert set(OUTSIDE) == {(d, s, q) for d in D for s in (False, True) for q in (False, True)}


@settings(max_examples=400, deadline=None)
@given(policies, centers, centers, user_requesters)
def test_prop_no_stub_needed_only_where_every_user_reads_in_full(policy, origin, holder,
                                                                 who):
    """pointer_possible is False only for records every center's every user may
    read in full from any holder: a hub without the stub loses no pointer."""
    if not pointer_possible(policy):
        assert decide(policy, origin, holder, who) is Decision.FULL
