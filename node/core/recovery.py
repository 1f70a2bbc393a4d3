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

Only a node marked by `fcnode restore` (or by an administrator's `fcnode recovery
adopt`) takes such entries back. An entry beyond the head signed by this node's own
key may come from an old copy of node.db put in place by hand, or from a thief who
holds the signing key and signs at this center's next positions: nothing in the
entry tells the two apart, and adopting a thief's entry would make it this center's
own, silently. So an unmarked node that is shown one is **held** instead (a
persistent marker too): it adopts nothing and signs nothing (its next entry would
fork its log anyway) until an administrator decides: an old copy -> adopt (recovery
proceeds as after a restore), a stolen key -> `fcnode keys rotate --signing --stolen`
(the stolen-key runbook: the rotation takes the next position, and peers distrust the
old key after the position before it). A claimed head is never proof (a hostile peer
cannot hold a node by claiming one), and no peer can make the choice: both ways out
are admin commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

SETTLE_S = 10.0  # how long a start waits for its peers' heads of the own log


class OwnEntry(Enum):
    """What to do with entries beyond this node's head that its own key signed."""
    NONE = "none"    # no such entry in what a peer sent
    TAKE = "take"    # recovering (marked by a restore, or adopted): ingest takes them
    HOLD = "hold"    # unmarked: refuse them and enter the held state (new)
    HELD = "held"    # already held: refuse them again (counted, not re-audited)


def own_entry(proof: bool, marked: bool, held: bool) -> OwnEntry:
    """``proof``: a peer sent an entry beyond this node's head that this node's own
    key signed (envelope or stub, verified); a claimed head alone is never proof.
    ``marked``: the persistent recovery marker is set (`fcnode restore`, or an
    administrator adopted); ``held``: the persistent held marker is set. The marker
    wins over a held state left in a restored copy (the restore clears it anyway)."""
    if not proof:
        return OwnEntry.NONE
    if marked:
        return OwnEntry.TAKE
    return OwnEntry.HELD if held else OwnEntry.HOLD


@dataclass(frozen=True)
class Held:
    """The first proof that put this node in the held state (no content: the
    position and the entry's hash identify it; the peers still hold it)."""
    peer: str
    seq: int            # the first position beyond our head that our key signed
    own_head: int       # our head then
    entry_hash: bytes
    since_ms: int

    def detail(self) -> dict[str, object]:
        """For the audit log and status: positions and a hash, no content."""
        return {"peer": self.peer, "seq": self.seq, "own_head": self.own_head,
                "entry_hash": self.entry_hash.hex(), "since_ms": self.since_ms}

    def describe(self) -> str:
        return (f"peer {self.peer} sent seq {self.seq} of this center's own log, signed by "
                f"this node's key, beyond its head {self.own_head}")


HELD_CHOICE = ("an old copy of node.db: fcnode recovery adopt; a stolen signing key: "
               "fcnode keys rotate --signing --stolen, then the README's stolen-key runbook")


def held_refusal(held: Held) -> str:
    """Why nothing may be appended while ``held``."""
    return (f"own log held: {held.describe()}. It may be an old copy of node.db or a stolen "
            "signing key; this node adopts nothing and signs nothing until an administrator "
            f"decides ({HELD_CHOICE})")


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
    held: Held | None = None          # the persistent held marker is set
    # peer -> highest own position it was seen holding while held (to log each
    # peer's news once, not every batch)
    held_seen: dict[str, int] = field(default_factory=dict)

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

    def hold(self, held: Held) -> None:
        self.held = held
        self.held_seen = {held.peer: held.seq}

    def seen_held(self, peer: str, seq: int) -> bool:
        """While held, a peer showed own entries up to ``seq``: True if that is
        news (log it), False if already seen from that peer."""
        if self.held_seen.get(peer, 0) >= seq:
            return False
        self.held_seen[peer] = seq
        return True

    def release(self) -> None:
        """The held state ends (adopted, or the key rotated as stolen)."""
        self.held = None
        self.held_seen.clear()

    def adopt(self, reason: str) -> None:
        """The administrator decided the held entries are this node's own (an old
        copy of node.db): recovery proceeds as after a restore."""
        self.release()
        self.begin(reason)

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

    def refusal(self, our_head: int, now: float, stolen: bool = False) -> str:
        """Why this node may not append to its own log now, or ''. ``stolen``: the
        append is the key rotation of the stolen-key runbook, the one way out of
        the held state that signs (it declares the held entries not this node's)."""
        if self.held is not None and not stolen:
            return held_refusal(self.held)
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
