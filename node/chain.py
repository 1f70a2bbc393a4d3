"""Per-origin log rules, pure: where an incoming entry fits, or why it does not.

Each origin's entries form a hash chain (seq 1, 2, 3, ...; ``prev`` is the
SHA-256 of the previous entry's payload). A node holds, for each origin, a
contiguous prefix of that chain: signed entries, or placeholders (hash only) for
entries withheld from it. ``classify`` decides what one incoming item does to
that prefix; it never reads storage and never verifies signatures (the caller
has verified the envelope before asking).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    APPEND = "append"        # next in the chain: store it
    UPGRADE = "upgrade"      # the signed entry for a placeholder we hold
    REPLACE = "replace"      # a signed entry contradicting an unsigned placeholder: the
    #                          placeholder came from a peer, the signature from the origin
    DUPLICATE = "duplicate"  # we hold exactly this already
    FORK = "fork"            # two signed entries at one position: evidence
    REJECT = "reject"


@dataclass(frozen=True)
class Held:
    """What this node holds at one (origin, seq)."""

    hash: bytes
    signed: bool


@dataclass(frozen=True)
class Incoming:
    seq: int
    hash: bytes
    signed: bool
    prev: bytes = b""  # from the signed body; unknown for a placeholder


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
    if at_seq is not None:
        if at_seq.hash == item.hash:
            if item.signed and not at_seq.signed:
                return _link(item, before, Verdict.UPGRADE)
            return Outcome(Verdict.DUPLICATE)
        if item.signed and at_seq.signed:
            return Outcome(Verdict.FORK, f"two signed entries at seq {item.seq}")
        if item.signed:
            return _link(item, before, Verdict.REPLACE)
        return Outcome(Verdict.REJECT, f"entry at seq {item.seq} contradicts the one held")
    if item.seq != head + 1:
        return Outcome(Verdict.REJECT, f"gap: got seq {item.seq}, next expected {head + 1}")
    if not item.signed:
        return Outcome(Verdict.APPEND)
    return _link(item, before, Verdict.APPEND)


def _link(item: Incoming, before: Held | None, verdict: Verdict) -> Outcome:
    if item.seq == 1:
        if item.prev:
            return Outcome(Verdict.REJECT, "seq 1 must not link to a previous entry")
        return Outcome(verdict)
    if before is None:
        return Outcome(Verdict.REJECT, f"seq {item.seq - 1} is not held")
    if item.prev == before.hash:
        return Outcome(verdict)
    if before.signed:
        # The origin signed this entry on top of a different seq-1 than the one
        # it signed before: it equivocated (or its key leaked).
        return Outcome(Verdict.FORK, f"seq {item.seq} links to a different seq {item.seq - 1}")
    return Outcome(Verdict.REJECT, f"wrong chain link at seq {item.seq}")
