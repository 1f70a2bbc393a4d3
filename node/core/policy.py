"""The access-policy decision: one pure function, used by every path out of a node.

decide(policy, origin, evaluator, requester) -> Decision

- ``origin``: the center that published the record (its only writer).
- ``evaluator``: the node answering (the origin, or a node relaying a copy).
- ``requester``: the center asking and, for queries and local reads, its user.

Semantics (README, "Access policy"):
1. The requesting *center* is eligible when it is the origin, is named in the
   audience, or the audience is ``members``. An empty audience: origin only.
2. The *user* qualifies when they hold every required attribute; attributes of
   the form ``user:CENTER/NAME`` name people, and the user must be one of them.
   TLP:RED requires named users: with none named, no one qualifies.
3. Eligible center and qualified user -> FULL. Otherwise discoverability
   decides: OPEN -> FULL for a qualified user (POINTER if not qualified; OPEN
   counts as POINTER for AMBER+STRICT, RED and an empty audience), POINTER -> POINTER,
   RESTRICTED -> NOTIFY_ONLY (the origin learns of the hit).
4. A copy held by a node other than the origin may leave it for another center
   only when the record is relayable (never AMBER+STRICT or RED): otherwise that
   node can answer at most POINTER. Its own users are not "another center".
5. Replication (no user): FULL to an eligible center only, else DENY.
"""

from __future__ import annotations

from node.core.types import MEMBERS, Decision, Discoverability, Policy, Requester, Tlp

USER_ATTR_PREFIX = "user:"
_NO_RELAY = (Tlp.AMBER_STRICT, Tlp.RED)


def user_attribute(center: str, user: str) -> str:
    """The attribute that names one person, derived (never asserted) per request."""
    return f"{USER_ATTR_PREFIX}{center}/{user}"


def relayable(policy: Policy) -> bool:
    return policy.relay and policy.tlp not in _NO_RELAY


def pointer_possible(policy: Policy) -> bool:
    """Whether a node holding a copy could ever answer someone a POINTER (or a
    notice) for this record: always, unless every center and user may read it
    and it may be passed on. Such a node needs the origin's signed stub."""
    return not (MEMBERS in policy.audience and not policy.required_attributes
                and relayable(policy))


def center_eligible(policy: Policy, origin: str, center: str) -> bool:
    return center == origin or MEMBERS in policy.audience or center in policy.audience


def user_qualifies(policy: Policy, requester: Requester) -> bool:
    if requester.user is None:
        return False
    held = {a for a in requester.attributes if not a.startswith(USER_ATTR_PREFIX)}
    held.add(user_attribute(requester.center, requester.user))
    named = {a for a in policy.required_attributes if a.startswith(USER_ATTR_PREFIX)}
    plain = policy.required_attributes - named
    if not plain <= held:
        return False
    if named:
        return bool(named & held)
    return policy.tlp is not Tlp.RED


def decide(policy: Policy, origin: str, evaluator: str, requester: Requester) -> Decision:
    # Passing a copy on to another center is relaying; showing it to the
    # evaluator's own users is not.
    passing_on = evaluator != origin and requester.center != evaluator
    ceiling = Decision.POINTER if passing_on and not relayable(policy) else Decision.FULL
    eligible = center_eligible(policy, origin, requester.center)
    if requester.user is None:
        return Decision.FULL if eligible and ceiling is Decision.FULL else Decision.DENY
    qualified = user_qualifies(policy, requester)
    disc = policy.discoverability
    if disc is Discoverability.OPEN and (policy.tlp in _NO_RELAY or not policy.audience):
        # OPEN never opens what TLP restricts, nor an empty audience (origin only).
        disc = Discoverability.POINTER
    if eligible and qualified:
        decision = Decision.FULL
    elif disc is Discoverability.OPEN:
        decision = Decision.FULL if qualified else Decision.POINTER
    elif disc is Discoverability.POINTER:
        decision = Decision.POINTER
    else:
        decision = Decision.NOTIFY_ONLY
    return min(decision, ceiling)


def for_replication(policy: Policy, origin: str, evaluator: str, peer: str) -> Decision:
    """What a replication stream may send ``peer``. An entry going back to the
    center that signed it (a restored node recovering its own log) is relayed to
    no one: the origin holds every right over its own records, TLP:RED and
    AMBER+STRICT included. Any other center: the one decision above."""
    if peer == origin:
        return Decision.FULL
    return decide(policy, origin, evaluator, Requester(peer))
