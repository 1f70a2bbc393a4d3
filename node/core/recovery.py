"""Recovery of this center's own log, pure (no I/O): when may the node sign
new entries again?

A node restored from a backup (or by a hand copy of node.db) holds its own log
only up to the backup's head, while its peers may hold the entries it signed
after. Signing the next entry at a position a peer holds is a fork: every peer
quarantines the center. So on every start, and whenever a peer reports a head
for this center's own origin beyond the one held here, the node first takes
those entries back from its peers (ingest accepts them only while recovering,
signed by this node's key and chain-linked) and refuses to append until:

- every dialled peer has answered once since start or failed to (bounded by
  ``settle_s``: a peer that never answers counts as unreachable), and
- when recovering (a persistent marker: set by `fcnode restore`, or when a peer
  was seen ahead), every dialled peer reported a head for this origin no higher
  than what is held now (an unreachable one keeps the wait: see ``caught_up``).

An administrator ends the wait explicitly when no peer holds newer entries
(`fcnode recovery finish`): the peers that would have them may be gone for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SETTLE_S = 10.0  # how long a start waits for its peers' heads of the own log


@dataclass
class OwnLogRecovery:
    active: bool = False              # the persistent marker is set
    reason: str = ""
    started: float = 0.0              # monotonic time of the daemon's start
    settle_s: float = SETTLE_S
    dialled: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)   # since start
    failed: set[str] = field(default_factory=set)     # the last attempt failed
    heads: dict[str, int] = field(default_factory=dict)  # peer -> its head of our origin
    confirmed: set[str] = field(default_factory=set)  # reported a head <= ours while active

    def set_dialled(self, centers: set[str]) -> None:
        self.dialled = set(centers)
        for c in list(self.heads):
            if c not in self.dialled:
                del self.heads[c]

    def begin(self, reason: str) -> None:
        self.active, self.reason = True, reason
        self.confirmed.clear()

    def end(self) -> None:
        self.active, self.reason = False, ""
        self.confirmed.clear()

    def heard(self, peer: str, their_head: int | None, our_head: int) -> bool:
        """A peer answered (``their_head``: its head of our origin, None if it did
        not report one). True when that peer is ahead: recovery must begin."""
        self.answered.add(peer)
        self.failed.discard(peer)
        if their_head is None:
            return False
        self.heads[peer] = their_head
        if their_head > our_head:
            self.confirmed.discard(peer)
            return True
        if self.active:
            self.confirmed.add(peer)
        return False

    def down(self, peer: str) -> None:
        self.failed.add(peer)

    def settled(self, now: float) -> bool:
        """Every dialled peer answered or failed once since start (or time is up)."""
        return (self.dialled <= self.answered | self.failed
                or now - self.started >= self.settle_s)

    def behind(self, our_head: int) -> int:
        """Own entries peers reported beyond what is held here."""
        return max([0, *(h - our_head for h in self.heads.values())])

    def caught_up(self, our_head: int) -> bool:
        """Recovering, and every dialled peer confirmed that it holds nothing of this
        log beyond our head. A peer that cannot be reached keeps the wait: it may be
        the one holding the newest own entries, and signing past them would fork the
        center (nor may another peer's word stand for it: a hostile one would say
        "nothing newer"). When it is gone for good, an admin ends the wait."""
        return (self.active and bool(self.confirmed) and self.behind(our_head) == 0
                and self.dialled <= self.confirmed)

    def refusal(self, our_head: int, now: float) -> str:
        """Why this node may not append to its own log now, or ''."""
        if self.active:
            n = self.behind(our_head)
            waiting = sorted(p for p in self.dialled
                             if p not in self.confirmed and p not in self.failed)
            return (f"recovering own log: {n} entries; this node may not publish or change "
                    f"records until it has its own entries back from its peers "
                    f"({self.reason}; waiting for {', '.join(waiting) or 'a peer to answer'}). "
                    "When no peer holds newer entries, an admin may end it: "
                    "fcnode recovery finish")
        if not self.settled(now):
            pending = sorted(self.dialled - self.answered - self.failed)
            return (f"starting: asking peers {', '.join(pending)} for this center's own log "
                    "head before publishing; try again in a few seconds")
        return ""
