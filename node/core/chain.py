"""Per-origin log rules, pure: where an incoming entry fits, or why it does not.

Each origin's entries form a hash chain (seq 1, 2, 3, ...; ``prev`` is the
SHA-256 of the previous entry's payload). A node holds, for each origin, a
contiguous prefix of that chain: signed entries, or placeholders (hash only) for
entries withheld from it. ``classify`` decides what one incoming item does to
that prefix; it never reads storage and never verifies signatures (the caller
has verified the envelope, or the origin's stub, before asking).

The trust rule: a record's state changes only through bytes its origin signed.
"Signed" here means the node holds origin-signed evidence of the hash at that
position: the signature of the entry (kept when its content is erased) or the
origin's verified stub. Two different signed hashes at one position are a fork.
An unsigned placeholder is a hint from a hop: the origin's signed entry replaces
it, and one whose ``prev`` contradicts it sends the chain back to the last
signed position (REWIND) instead of breaking it for good.

Range placeholders: a hop may send a run of withheld positions as one item
(first..seq, the hash of the last only). The positions inside a range are held
with no hash (``Held.hash == b""``): a hint that they exist, which no entry can
contradict; the origin's signed entry for one of them is placed there (UPGRADE,
after the caller isolates the position), another hint for one is ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    APPEND = "append"        # next in the chain: store it
    UPGRADE = "upgrade"      # the signed entry for a position held without its content
    REPLACE = "replace"      # a signed entry contradicting an unsigned placeholder: the
    #                          placeholder came from a peer, the signature from the origin
    DUPLICATE = "duplicate"  # we hold exactly this already
    FORK = "fork"            # two signed entries at one position: evidence
    REWIND = "rewind"        # the origin's entry contradicts an unsigned placeholder at
    #                          seq-1: drop placeholders back to the last signed position
    REJECT = "reject"


@dataclass(frozen=True)
class Held:
    """What this node holds at one (origin, seq)."""

    hash: bytes           # b"": inside a range of hints, no hash known
    signed: bool          # origin-signed evidence of ``hash`` (signature or stub)
    content: bool = True  # the payload is held (only with ``signed``; False once erased)


@dataclass(frozen=True)
class Incoming:
    seq: int
    hash: bytes
    signed: bool       # an envelope, or a placeholder with the origin's verified stub
    prev: bytes | None = b""  # from the signed body; None: unknown (a stub has no prev)
    first: int = 0     # a range placeholder for first..seq (unsigned); 0: one position


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str = ""


def classify(item: Incoming, head: int, at_seq: Held | None, before: Held | None) -> Outcome:
    """``head``: highest seq held; ``at_seq``/``before``: what is held at seq and seq-1."""
    if item.seq < 1:
        return Outcome(Verdict.REJECT, "seq must start at 1")
    if len(item.hash) != 32:
        return Outcome(Verdict.REJECT, "entry hash must be 32 bytes")
    if item.first:
        if item.signed:
            return Outcome(Verdict.REJECT, "a range placeholder carries no envelope or stub")
        if item.first >= item.seq:
            return Outcome(Verdict.REJECT, "range_first must be below seq")
        if item.first > head + 1:
            return Outcome(Verdict.REJECT,
                           f"gap: got seq {item.first}, next expected {head + 1}")
        if item.seq > head:
            return Outcome(Verdict.APPEND)  # the caller stores head+1..seq: one row
        # Wholly within what is held: a hint about its last position only.
    if at_seq is not None:
        if not at_seq.hash:
            # Inside a range of hints: no hash is held here to agree or disagree.
            if item.signed:
                return _link(item, before, Verdict.UPGRADE)
            return Outcome(Verdict.DUPLICATE)  # a hint adds nothing to a hint
        if at_seq.hash == item.hash:
            if item.signed and not (at_seq.signed and at_seq.content):
                # New evidence (or content) for a position held without it; whether
                # content is kept is the caller's decision (newest wins, entitlement).
                return _link(item, before, Verdict.UPGRADE)
            return Outcome(Verdict.DUPLICATE)
        if item.signed and at_seq.signed:
            return Outcome(Verdict.FORK, f"two signed entries at seq {item.seq}")
        if item.signed:
            return _link(item, before, Verdict.REPLACE)
        if not at_seq.signed:
            # Hint against hint: neither is authority; the newer one is kept (a hub
            # that corrected a false hint it relayed must be able to correct ours).
            return Outcome(Verdict.REPLACE, "a newer placeholder")
        return Outcome(Verdict.REJECT, f"entry at seq {item.seq} contradicts the one held")
    if item.seq > head + 1:
        return Outcome(Verdict.REJECT, f"gap: got seq {item.seq}, next expected {head + 1}")
    # seq <= head with nothing held there: a hole a rewind left below origin-signed
    # evidence (false hints dropped, the evidence above kept). It is filled like the
    # next position, linked to what is held before it; a hole with nothing before it
    # waits (REJECT below) for the positions under it.
    if not item.signed:
        return Outcome(Verdict.APPEND)
    return _link(item, before, Verdict.APPEND)


def _link(item: Incoming, before: Held | None, verdict: Verdict) -> Outcome:
    if item.prev is None:
        # The origin's stub proves the hash at this position, not its link; the
        # link is checked when the entry itself (or the next one) arrives.
        return Outcome(verdict)
    if item.seq == 1:
        if item.prev:
            return Outcome(Verdict.REJECT, "seq 1 must not link to a previous entry")
        return Outcome(verdict)
    if before is None:
        return Outcome(Verdict.REJECT, f"seq {item.seq - 1} is not held")
    if item.prev == before.hash or not before.hash:
        # (No hash held at seq-1, inside a range of hints: nothing to contradict;
        # the origin's prev is the first signed word about it.)
        return Outcome(verdict)
    if before.signed:
        # The origin signed this entry on top of a different seq-1 than the one
        # it signed before: it equivocated (or its key leaked).
        return Outcome(Verdict.FORK, f"seq {item.seq} links to a different seq {item.seq - 1}")
    # What we hold at seq-1 is a hop's unsigned placeholder the origin contradicts.
    return Outcome(Verdict.REWIND, f"placeholder at seq {item.seq - 1} contradicted by the "
                                   f"origin's entry at seq {item.seq}")
