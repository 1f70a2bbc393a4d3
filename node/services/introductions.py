"""Introductions (after Syncthing's introducer, made safe): pure decisions.

A peer pinned with `--introducer` serves the cards it has pinned (directly or
itself by introduction), signed with its key. This node adopts them *for
verification only*: an introduced card is pinned with connect = false (never
dialled, never accepted as a TLS client) so records and answers its center
signed verify here wherever they come from. Rules:
- an introduction never replaces or overrides a key already pinned: a direct pin
  stays as the administrator pinned it (the offer is reported as a conflict); an
  earlier introduced card offered with another signing key by a second
  introducer is a conflict and neither key is trusted until an administrator
  decides (`peers add CARD` pins one directly, `peers remove` drops it);
- an introducer cannot introduce this node's own center id, nor a key or
  certificate already pinned for another center;
- introduced cards follow the introducer's view: a card it no longer serves is
  removed here (unless pinned directly, or since adopted through another
  introducer, which the next poll of that one restores);
- each served card carries `via`, the introducers it passed through: a card
  whose via names this node is its own introduction coming back around a loop of
  introducers, and is ignored (otherwise two hubs would keep a removed center
  alive for each other forever);
- the same introducer may change an introduced card's address or certificate
  (the center moved or renewed), never its signing key: a new signing key comes
  from the center itself (a signed KEY_ROTATION entry) or from an administrator;
- a seal key (X25519, what sealed copies, answers and hits are sealed to) is
  taken from an introducer only with the center's own signature over it (the
  card's SEAL_SIG, checked when the card is parsed: a card whose signature does
  not verify never gets here). An unsigned one (a card of an older release, or
  an introducer pairing the center's real signing key with a key of its own) is
  dropped: the card is adopted for verification, nothing is sealed to it. An
  offer without a signed seal key says nothing about it: a signed one held is
  kept. Another signed seal key for the same signing key (the center signed two,
  or its key leaked) is reported, not taken: the card held keeps its trust (its
  rotation entry may only be late; the log decides); a signed seal key for
  an introduced card held without one is taken, whichever introducer brings it
  (it is the center's word, not the introducer's). A seal key the center
  announced in its own log (a SEAL_KEY_ROTATION, replicated here) is no second
  key: a card printed before or after that rotation. It is no conflict; which key
  is sealed to is the log's to say (keyhistory.seal_key_in_use), whatever card is held.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from node.config.identity import IdentityCard
from node.config.peers import Peer, pin_conflict
from node.core.signing import key_id

MAX_VIA = 8


@dataclass(frozen=True)
class Offer:
    card: IdentityCard
    via: tuple[str, ...]


@dataclass(frozen=True)
class Adoption:
    peers: dict[str, Peer]
    adopted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()  # (center, why): for status and the log
    refused: tuple[tuple[str, str], ...] = ()    # (center, why)
    unsigned: tuple[str, ...] = ()  # offered cards whose unsigned seal key was dropped

    new_conflicts: tuple[str, ...] = ()  # introduced cards that lost trust by this view

    @property
    def changed(self) -> bool:
        return bool(self.adopted or self.updated or self.removed or self.new_conflicts)


def adopt(own_center: str, own_key: bytes, peers: dict[str, Peer], introducer: str,
          offers: Iterable[Offer],
          announced_seals: Mapping[str, Collection[bytes]] | None = None) -> Adoption:
    """The pinned set after taking ``introducer``'s current view (pure).
    ``announced_seals``: per center, the seal keys its own log announced (replaced
    and new ones: NodeService.announced_seal_keys), each with how recent it is
    when given as a mapping (a plain collection: unordered)."""
    announced = announced_seals or {}
    out = dict(peers)
    adopted: list[str] = []
    updated: list[str] = []
    conflicts: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    new_conflicts: list[str] = []
    unsigned: list[str] = []
    offered: set[str] = set()

    def conflict(existing: Peer, why: str) -> None:
        """Another key offered for a center held: reported; an introduced card
        is no longer trusted until an administrator decides (a direct pin stands)."""
        conflicts.append((existing.center, why))
        if existing.introduced_by and not existing.conflict:
            out[existing.center] = replace(existing, conflict=why)
            new_conflicts.append(existing.center)

    for offer in offers:
        card = offer.card
        if card.center == own_center:
            if card.signing_key != own_key:
                refused.append((card.center, f"{introducer} introduced another key for this "
                                             "node's own center id"))
            continue
        if own_center in offer.via or introducer in offer.via or len(offer.via) > MAX_VIA:
            continue  # our own introduction coming back around a loop
        if card.center == introducer:
            continue  # the introducer is pinned directly; it does not re-introduce itself
        offered.add(card.center)
        if card.seal_key and not card.seal_signature:
            card = card.without_seal_key()  # never an unsigned seal key from an introducer
            unsigned.append(card.center)
        existing = out.get(card.center)
        if existing is None:
            why = pin_conflict(card, out.values(), own_key)
            if why:
                refused.append((card.center, f"introduced by {introducer}: {why}"))
                continue
            out[card.center] = Peer(card, connect=False, introduced_by=introducer,
                                    via=offer.via)
            adopted.append(card.center)
            continue
        same_key = existing.card.signing_key == card.signing_key
        held_seal = existing.vouched_seal_key
        if same_key and not card.seal_key and existing.card.seal_signature:
            # No (signed) seal key offered: the offer says nothing about it, and an
            # introducer cannot strip the center's signed key from a card held.
            card = replace(card, seal_key=existing.card.seal_key,
                           seal_signature=existing.card.seal_signature)
        if existing.card == card:
            continue
        order = announced.get(card.center, ())
        rotated = card.seal_key in order and held_seal in order
        if same_key and held_seal and card.seal_key and card.seal_key != held_seal and rotated:
            # Both keys are the center's own, ordered by its log: the card held stays
            # (or follows its own introducer to a newer one: never back to an older
            # one, which this node would hand on to centers that may not hold the
            # log yet), the log decides what is sealed to.
            newer = (not isinstance(order, Mapping)
                     or order[card.seal_key] > order[held_seal])
            if newer and existing.introduced_by == introducer and pin_conflict(
                    card, out.values(), own_key) is None:
                out[card.center] = replace(existing, card=card, via=offer.via)
                updated.append(card.center)
            continue
        if same_key and held_seal and card.seal_key and card.seal_key != held_seal:
            # The seal key decides who can read what is sealed to this center
            # (sealed copies of records, answers, hits). Two signed ones for one
            # signing key, the offered one not announced in the center's log here
            # (yet): its card printed after a rotation whose entry has not arrived
            # (a hop may delay it), or its key leaked. Neither is taken: the card
            # held stays, trusted, and the offer is reported. (Taking the card out
            # of trust, as before, also stopped this node verifying the center's
            # log, the very entry that would explain the card: a hop's delay, or an
            # ordinary race, cut the center off for good. A thief holding the
            # signing key gains nothing here: it could announce in the log anyway.)
            conflicts.append((card.center, (
                f"{introducer} introduces another seal key for {card.center} than "
                + ("the one pinned directly" if not existing.introduced_by
                   else f"the one introduced by {existing.introduced_by}")
                + ", not announced in its log here: the card held stays")))
            continue
        if same_key and existing.introduced_by == introducer:
            if pin_conflict(card, out.values(), own_key) is None:
                out[card.center] = replace(existing, card=card, via=offer.via)
                updated.append(card.center)
            continue
        if same_key and existing.introduced_by and card.seal_key and not held_seal:
            # Another introducer brings the center's own signed seal key for a card
            # held without one (its first introducer had only an older card).
            out[card.center] = replace(existing, card=replace(
                existing.card, seal_key=card.seal_key, seal_signature=card.seal_signature))
            updated.append(card.center)
            continue
        if same_key:
            continue  # another introducer's older or newer certificate: keys agree
        conflict(existing, f"{introducer} introduces signing key "
                 f"{key_id(card.signing_key)[:16]} for {card.center}, but "
                 f"{key_id(existing.card.signing_key)[:16]} is pinned "
                 + ("directly" if not existing.introduced_by
                    else f"(introduced by {existing.introduced_by})"))
    removed = tuple(sorted(c for c, p in out.items()
                           if p.introduced_by == introducer and c not in offered))
    for c in removed:
        del out[c]
    return Adoption(out, tuple(adopted), tuple(updated), removed, tuple(conflicts),
                    tuple(refused), tuple(unsigned), tuple(new_conflicts))


def served(peers: dict[str, Peer], requester: str) -> list[Offer]:
    """What this node introduces to ``requester``: every trusted card it holds,
    with the introducers each came through (not the requester's own card). An
    introduced card's unsigned seal key (adopted by an older release) is not
    handed on: this node does not believe it either."""
    return [Offer(p.card if p.vouched_seal_key == p.card.seal_key
                  else p.card.without_seal_key(),
                  (*p.via, p.introduced_by) if p.introduced_by else ())
            for c, p in sorted(peers.items()) if p.trusted and c != requester]
