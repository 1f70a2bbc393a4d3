"""Network watches between centers: signed standing queries and a pulled hit stream.

Watcher side (``WatchClient``): for every dialled peer, one task sends this node's
whole set of network watches as one signed ``StandingSet`` (its center, each
watch's id, user, the user's attributes as this center asserts them now, entity
keys, kinds, behaviour codes, expiry, and a hop limit), whenever the set changes,
after every reconnect and every few minutes (attributes may change; the set is the
truth, so a withdrawn or expired watch is simply left out). Then it pulls hits from
the peer's durable outbox with a cursor (``WatchHits(after)``), so a hit made while
this node was away arrives when it comes back. Every hit is verified here: the
stub against the origin's pinned key, and a FULL envelope against the origin's
key too, with the stub naming the same position; the origin must be the center
that answered (each answering node judges only its own records). Hits are
re-judged for the watch's owner when shown (node/services/watches.py ``view``).

Beyond direct peers (the way federated queries travel, federation/query_forward.py):
a node that took a set passes it on to its dialled peers unchanged (the signed
bytes), with one hop less and itself on the unsigned ``path``; never back to the
path or the watcher, and never further than the signed ``max_hops``. Each node keeps
a watcher center's newest set with the peer it came through: that is the way its
hits go back, and so are the next peers that bring the same set (up to MAX_WAYS in
all), so a first hop that drops hits does not cut the watcher off. A center
answering a watcher that is not its direct peer seals each hit to the watcher (HPKE
to the X25519 key in its card, node/core/sealing.py) and signs it; every hop back
keeps the sealed hit in its own durable outbox for the next hop
(ciphertext only, bounded per watcher in rows and bytes) until the watcher pulls it
from its direct peer, checks the answering center's signature, opens it and
verifies the origin's envelope or stub. A hop can delay or drop a hit, never read,
alter or forge one: a hit that fails is dropped and counted (``refused:PEER`` in
watch_dropped, and the log).

Answering side (``StandingServer``): a set is verified against the key of the
center it names (the TLS peer, or a watcher beyond it whose key is pinned or
introduced here: a hop cannot speak for another center), must be newer than the
last one taken from that watcher (replays are refused; newest wins whichever way it
came), is bounded (``max_watches_per_peer`` queries per watcher, expiry capped by
``max_watch_days``, ``max_standing_sets_per_peer`` watchers per peer,
``standing_sets_per_minute`` own sets and as many passed-on sets per peer (and
``standing_set_bytes_per_minute`` bytes of each), the
path length) and is stored durably;
node/services/watches.py judges every new or updated record of this center against it with
this node's own policy. The hit stream re-checks each outbox row against the
standing query as it is now (withdrawn: nothing), sends the origin's signed bytes
(sealed when the watcher is further away), and writes the dissemination log
(channel ``watch``, the recipient the watcher, ``via`` the peer it left through).

Why pull, not push: the outbox is the answering node's, bounded per watcher, and a
watcher that is offline loses nothing (the same cursor model as replication).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from federation.backoff import Backoff
from federation.links import raise_if_cancelling
from federation.query_forward import DEFAULT_HOPS, MAX_HOPS, MAX_PATH
from federation.ratelimit import LogLimit, RateLimits
from federation.transport.client import stub as fed_stub
from node.core.entities import MAX_VALUE
from node.core.query import MAX_ENTITY_KEYS, SearchParams
from node.core.record import CONTENT_KINDS, check_behaviors
from node.core.sealing import check_hit, open_hit, seal_hit
from node.core.signing import (
    STANDING_DOMAIN,
    BadSignature,
    entry_hash,
    key_id,
    open_signed,
    sign,
    stub_mismatch,
)
from node.core.timeutil import DAY_MS, now_ms
from node.core.types import (
    CENTER_ID_RE,
    Decision,
    Dissemination,
    Requester,
    ValidationError,
)
from node.core.watch import Watch, judge
from node.services.service import NodeService
from node.services.tasks import cancel_and_wait
from node.services.watches import Watches
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage import users as users_tx
from node.storage import watches as watch_tx
from node.telemetry import logs, metrics
from node.wire import federation_pb2

log = logs.get("fcnode.federation.watch")
RESYNC_S = 300.0   # the set is sent again this often (attributes and expiry change)
MAX_SKEW_MS = 5 * 60_000
MAX_NAME = 64
MAX_ATTRS = 64
HIT_BATCH = 128
# Ways back for a watcher's hits: the peer its set came through first and the next
# ones that brought the same set; a hit goes every way (the watcher keeps it once).
MAX_WAYS = 3
WATCHER_SHARE = 10  # of a peer's passed-on standing-set rate, one watcher's sets may use
HEARTBEAT_S = 10.0
REFUSED_PAUSE_S = 1.0  # after a batch with refused hits, before reading the next


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def seal_set(node: NodeService, body: federation_pb2.StandingSet
             ) -> federation_pb2.SignedStandingSet:
    data = body.SerializeToString(deterministic=True)
    return federation_pb2.SignedStandingSet(
        body=data, signature=sign(node.key, STANDING_DOMAIN, data),
        key_id=key_id(node.key.public_key()), hops_left=max(0, body.max_hops - 1))


def onward_hops(request: federation_pb2.SignedStandingSet,
                body: federation_pb2.StandingSet) -> int:
    """How many more hops the receiver may pass the set on: the unsigned counter,
    never above what the watcher signed (a set without a hop limit: none)."""
    return max(0, min(request.hops_left, body.max_hops - 1, MAX_HOPS - 1))


def _standing_of(q: federation_pb2.StandingQuery, now: int, cap_ms: int) -> Watch:
    """One standing query, checked completely (a refusal names what was wrong)."""
    if not q.watch_id or len(q.watch_id) > MAX_NAME or not q.user or len(q.user) > MAX_NAME:
        raise ValidationError("standing query needs a watch id and a user (at most 64 chars)")
    if len(q.user_attributes) > MAX_ATTRS or any(len(a) > 128 for a in q.user_attributes):
        raise ValidationError(f"standing query {q.watch_id}: too many or too long attributes")
    if not q.entity_keys or len(q.entity_keys) > MAX_ENTITY_KEYS:
        raise ValidationError(f"standing query {q.watch_id}: 1 to {MAX_ENTITY_KEYS} entity "
                              "keys (network watches match entities only)")
    if any(not k or len(k) > MAX_VALUE + 32 for k in q.entity_keys):
        raise ValidationError(f"standing query {q.watch_id}: malformed entity key")
    if any(k not in CONTENT_KINDS for k in q.kinds):
        raise ValidationError(f"standing query {q.watch_id}: unknown kind")
    behaviors = check_behaviors(q.behaviors)
    params = SearchParams(entity_keys=tuple(q.entity_keys), kinds=tuple(q.kinds),
                          behaviors=behaviors)
    return Watch(q.watch_id, q.user, params, True, now, min(q.expires_ms, now + cap_ms))


class StandingServer:
    """This node answering other centers' standing queries (and passing sets on)."""

    def __init__(self, node: NodeService, watches: Watches,
                 taken: Callable[[], None] = lambda: None) -> None:
        self.node = node
        self.watches = watches
        self.taken = taken  # a set that may travel further was taken: pass it on
        self.rates = RateLimits(node.config.limits.standing_sets_per_minute)
        self.byte_rates = RateLimits(node.config.limits.standing_set_bytes_per_minute)
        # One watcher's sets passed on by a peer: a share of that peer's passed-on
        # budget, so a watcher sending ever newer sets cannot hold back the sets of
        # the other watchers behind the same peer.
        self.watcher_rates = RateLimits(1)
        # Pulls from before what a peer was already sent re-seal and re-send those
        # hits: as many a minute as replication restarts (restarts_per_minute).
        self.repulls = RateLimits(node.config.limits.restarts_per_minute)
        self.served: dict[str, int] = {}  # peer -> the last outbox id sent to it

    def may_pull(self, peer: str, after: int) -> bool:
        """Whether a WatchHits call from ``after`` is served: always from where the
        peer's stream left off or later; from before that (a re-pull), within the
        rate of replication restarts."""
        if after >= self.served.get(peer, 0):
            return True
        self.repulls.per_minute = self.node.config.limits.restarts_per_minute
        return self.repulls.allow(peer, time.monotonic())

    def _verify(self, peer: str, request: federation_pb2.SignedStandingSet,
                body: federation_pb2.StandingSet) -> None:
        """The set's body (parsed from ``request.body``) must be signed by the
        watcher it names: the TLS peer, or a center beyond it whose key is pinned
        or introduced here (and whose card holds a seal key: its hits must be
        sealed to it)."""
        node = self.node
        watcher = body.center
        if watcher == node.center:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          "standing set names this node as its watcher (a loop, or a forgery)")
        if len(request.path) > MAX_PATH or node.center in request.path:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          "standing set path is too long or passes through this node")
        # Like a query: signed now, so only the center's current key (a retired or
        # distrusted one signs nothing new).
        keys = node.current_keys_of(watcher)
        if watcher != peer and not keys:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"forwarded standing set from {watcher[:64]!r}, whose key is neither "
                          "pinned nor introduced here")
        try:
            open_signed(STANDING_DOMAIN, request.body, request.signature, request.key_id,
                        keys, "standing set")
        except BadSignature as exc:
            if watcher != peer:  # a hop may pass a set on, never speak for its watcher
                raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                              f"forwarded standing set is not signed by {watcher!r}: "
                              f"{exc}") from None
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"standing set: {exc}") from None
        if watcher != peer and not node.seal_key_of(watcher):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"no seal key for {watcher!r} that this center believes (its card "
                          "predates sealed answers, or an introducer handed its seal key on "
                          "unsigned): its hits could not be sealed to it")

    async def set_standing(self, peer: str, request: federation_pb2.SignedStandingSet
                           ) -> federation_pb2.StandingReply:
        limits = self.node.config.limits
        if request.ByteSize() > limits.max_query_bytes * 64:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "standing set is too large")
        body = federation_pb2.StandingSet()
        try:
            body.ParseFromString(request.body)
        except DecodeError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "standing set is malformed") from None
        # A peer's own set and the sets it passes on have separate budgets: a
        # watcher behind it sending ever newer sets (each validly signed) would
        # otherwise spend the peer's whole rate here, and its own watches would be
        # refused until the budget refilled.
        own = body.center == peer
        budget = peer if own else f"{peer}\0passed-on"
        kind = "own" if own else "passed-on"
        self.rates.per_minute = limits.standing_sets_per_minute
        self.byte_rates.per_minute = limits.standing_set_bytes_per_minute
        self.watcher_rates.per_minute = max(1, limits.standing_sets_per_minute // WATCHER_SHARE)
        clock = time.monotonic()
        # A bucket per watcher only for a center whose key this node holds: the
        # name is the set's unchecked claim, and a bucket per name a peer makes up
        # (up to a set's size each) would be memory without bound. The sets of
        # every other watcher (refused by _verify anyway) share one watcher's share
        # ('?' is no center id), so they cannot spend the peer's passed-on budget.
        known = self.node.history_of(body.center) is not None
        if not own and not self.watcher_rates.allow(
                f"{peer}\0{body.center if known else '?'}", clock):
            # First, so a flooding watcher's refused sets cost the others nothing.
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"rate limit: at most {self.watcher_rates.per_minute} standing sets "
                          "of one watcher per minute passed on by one center")
        if not self.rates.allow(budget, clock):
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"rate limit: at most {limits.standing_sets_per_minute} "
                          f"{kind} standing sets per minute from one center")
        if not self.byte_rates.allow(budget, clock, request.ByteSize()):
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"rate limit: at most {limits.standing_set_bytes_per_minute} "
                          f"bytes of {kind} standing sets per minute from one center")
        self._verify(peer, request, body)
        watcher = body.center
        now = now_ms()
        if body.issued_ms > now + MAX_SKEW_MS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "standing set issued in the future")
        cap = limits.max_watch_days * DAY_MS
        try:
            items = [_standing_of(q, now, cap) for q in body.queries if q.expires_ms > now]
        except ValidationError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if len({w.id for w in items}) != len(items):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "standing set repeats a watch id")
        kept = items[:limits.max_watches_per_peer]
        attrs = {q.watch_id: tuple(q.user_attributes) for q in body.queries}
        hops = onward_hops(request, body)
        path = tuple(request.path)
        # Kept as signed (routing stripped): passed on unchanged, also after a restart.
        signed = federation_pb2.SignedStandingSet(
            body=request.body, signature=request.signature,
            key_id=request.key_id).SerializeToString()

        def tx(conn: sqlite3.Connection) -> tuple[int, int, bool]:
            before = watch_tx.route(conn, watcher)
            if before is not None and body.issued_ms <= before.issued_ms:
                if body.issued_ms == before.issued_ms:
                    again = self._same_set_again(conn, before, peer, hops, path, signed,
                                                 limits.max_standing_sets_per_peer)
                    if again is not None:
                        return 0, 0, again
                raise Refused(grpc.StatusCode.ALREADY_EXISTS,
                              "standing set is not newer than the one taken (a replay)")
            if (watcher != peer and (before is None or before.via != peer)
                    and watch_tx.routed_via(conn, peer, peer, watcher)
                    >= limits.max_standing_sets_per_peer):
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"this peer already brings the standing sets of "
                              f"{limits.max_standing_sets_per_peer} other centers")
            # An empty set withdrawing nothing here (a center without network
            # watches re-sends one every few minutes) goes no further: it would
            # only flood the network with nothing.
            onward = hops > 0 and bool(kept or watch_tx.standing(conn, 0, watcher))
            added, withdrawn = watch_tx.replace_standing(
                conn, watcher, body.issued_ms,
                [watch_tx.Standing(watcher, w, attrs[w.id], now, peer) for w in kept],
                peer, hops, path, signed if onward else None)
            return added, withdrawn, onward

        added, withdrawn, onward = await self.node.db.run(tx)
        if added or withdrawn:
            log.info("standing queries changed", extra={
                "peer": peer, "watcher": watcher, "added": added, "withdrawn": withdrawn,
                "held": len(kept)})
        if len(kept) < len(items):
            log.warning("standing queries over the per-peer limit were not kept", extra={
                "peer": peer, "watcher": watcher, "offered": len(items),
                "limit": limits.max_watches_per_peer})
        if onward:
            self.taken()
        return federation_pb2.StandingReply(accepted=len(kept), offered=len(body.queries))

    @staticmethod
    def _same_set_again(conn: sqlite3.Connection, before: watch_tx.Route, peer: str,
                        hops: int, path: tuple[str, ...], signed: bytes,
                        most_watchers: int) -> bool | None:
        """The set taken already, arriving again another way. Its routing is
        unsigned, and the first copy may have come from a hostile hop claiming no
        hop left or a path through this node's other peers: kept as it was, that
        stopped the honest copy from travelling on. So the routing merges: the
        most hops left any copy brought, and only the centers on every copy's
        path (each shrink or raise is bounded, so a set cannot bounce for ever).
        From the watcher itself its hits go back directly, not sealed through a
        hop. Whether it may travel on now (None: nothing changed, a replay)."""
        if before.signed is not None and federation_pb2.SignedStandingSet.FromString(
                before.signed).body != federation_pb2.SignedStandingSet.FromString(signed).body:
            return None  # the watcher signed two sets at one instant: the first stands
        watcher = before.center
        direct = peer == watcher and before.via != watcher
        merged = tuple(c for c in before.path if c in path)
        held = watch_tx.standing(conn, 0, watcher)
        further = max(hops, before.hops_left)
        # The signed bytes are kept to pass the set on: a first copy with no hop
        # left kept none. (Only the watcher can sign another set at the same
        # instant; if it did, the standing queries here stay the first one's.)
        keep = before.signed
        if keep is None and held and further > 0:
            keep = signed
        wider = further > before.hops_left or merged != before.path or keep != before.signed
        # Through another peer than the one it came through first: a way back
        # for its hits too (the first hop may drop them), up to MAX_WAYS in all;
        # and for no more watchers than the peer may bring sets of (a way holds
        # hits for it as a via does: a peer reflecting every set passed on to it,
        # its path stripped, would otherwise be a way back for every watcher here).
        way = (not direct and peer != watcher
               and watch_tx.routed_via(conn, peer, peer, watcher) < most_watchers
               and watch_tx.add_way(conn, watcher, peer, MAX_WAYS - 1))
        if not (direct or wider):
            return False if way else None
        watch_tx.replace_standing(conn, watcher, before.issued_ms, held,
                                  peer if direct else before.via, further, merged, keep,
                                  keep_ways=not direct)
        return wider and further > 0 and keep is not None

    async def hits(self, peer: str, request: federation_pb2.WatchHitsRequest,
                   revoked: asyncio.Event) -> AsyncIterator[federation_pb2.WatchHitBatch]:
        after = request.after
        await self.node.db.run(lambda c: watch_tx.ack_outgoing(c, peer, after))
        while not revoked.is_set():
            seen = self.watches.outbox_feed.generation
            batch = await self.node.db.run(lambda c, a=after: self._batch(c, peer, a))
            if batch.last > after:
                after = batch.last
                self.served[peer] = max(self.served.get(peer, 0), after)
                yield batch
                continue
            yield batch  # an empty batch is a heartbeat
            waiters = [asyncio.ensure_future(self.watches.outbox_feed.wait(seen, HEARTBEAT_S)),
                       asyncio.ensure_future(revoked.wait())]
            try:
                await asyncio.wait(waiters, timeout=HEARTBEAT_S,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    def _batch(self, conn: sqlite3.Connection, peer: str, after: int
               ) -> federation_pb2.WatchHitBatch:
        """The next outbox rows for ``peer``: this node's hits, each judged again
        against its standing query as it is now, as the origin's signed bytes
        (sealed to the watcher when the watcher is beyond ``peer``, and logged as
        disseminations); sealed hits of centers beyond, passed on unchanged."""
        node = self.node
        now = now_ms()
        rows = watch_tx.outgoing(conn, peer, after, HIT_BATCH)
        batch = federation_pb2.WatchHitBatch(last=after)
        # At most half a message of hits (one alone may be more): a relayed sealed
        # hit may be half a message itself, and a batch past the limit fails on the
        # wire each time the peer pulls again from that cursor: no hit on this way
        # would ever get through. The rest go in the next batch.
        room = node.config.limits.max_message_bytes // 2

        def fits(h: federation_pb2.WatchHit) -> bool:
            nonlocal room
            size = h.ByteSize() + 8  # with its tag and length
            if batch.hits and size > room:
                return False
            room -= size
            return True
        current = {(s.center, s.watch.id): s for center in {r.center for r in rows}
                   for s in watch_tx.standing(conn, now, center)}
        sent: list[Dissemination] = []
        logged: list[tuple[int, str]] = []
        for row in rows:
            if batch.hits and room <= 0:
                break
            before, batch.last = batch.last, row.id  # (back to before: not sent now)
            s = current.get((row.center, row.watch_id))
            if s is None:
                continue  # withdrawn or expired meanwhile
            if row.sealed is not None:
                relayed = federation_pb2.SealedWatchHit()
                with contextlib.suppress(DecodeError):
                    relayed.ParseFromString(row.sealed)
                    relayed.via.append(node.center)
                    one = federation_pb2.WatchHit(id=row.id, sealed=relayed)
                    if not fits(one):
                        batch.last = before
                        break
                    batch.hits.append(one)
                continue
            entry = log_tx.entry(conn, row.origin, row.seq)
            if entry is None or entry.payload is None or row.origin != node.center:
                continue
            signed_stub = entry.signed_stub()
            if signed_stub is None:
                continue
            body = entry.body()
            d = judge(node.decide(body, Requester(row.center, s.watch.owner,
                                                  frozenset(s.attributes))),
                      s.watch.params, body)
            if d < Decision.POINTER:
                continue
            hit = federation_pb2.WatchHit(id=row.id, watch_id=row.watch_id, stub=signed_stub)
            if d is Decision.FULL:
                hit.envelope.CopyFrom(entry.envelope())
            if row.center != peer:
                seal_to = node.seal_key_of(row.center)
                if not seal_to:
                    continue  # its card went (or lost its seal key): nothing can reach it
                inner = federation_pb2.WatchHit(watch_id=row.watch_id, stub=hit.stub)
                if d is Decision.FULL:
                    inner.envelope.CopyFrom(hit.envelope)
                sealed, signature, kid = seal_hit(node.key, seal_to, row.center, row.watch_id,
                                                  node.center, row.id,
                                                  inner.SerializeToString())
                hit = federation_pb2.WatchHit(id=row.id, sealed=federation_pb2.SealedWatchHit(
                    watcher=row.center, center=node.center, watch_id=row.watch_id,
                    number=row.id, sealed=sealed, signature=signature, key_id=kid))
            if not fits(hit):
                batch.last = before
                break
            batch.hits.append(hit)
            if row.logged == d.name:
                continue  # sent again (a pull from an old cursor): logged already
            sent.append(Dissemination(row.center, s.watch.owner, body.origin, body.record_id,
                                      body.version, body.seq, "watch", d.name,
                                      peer if row.center != peer else None))
            logged.append((row.id, d.name))
        fed_tx.log_disseminations(conn, sent, now)
        watch_tx.mark_logged(conn, logged)
        return batch


class OwnSet:
    """This node's own signed set, one per change (and resync period) for every
    peer: the same bytes reach a center directly and through hubs, so it takes
    them once, and from the watcher itself it keeps the direct way back (a set
    signed separately per peer would let a hub's copy, a moment newer, take the
    hits the long way round)."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.signed: federation_pb2.SignedStandingSet | None = None
        self.offered = 0
        self.stale = True
        self._built = 0.0
        self._issued = 0  # each set is later than the one before (peers refuse replays)
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self.stale = True

    async def current(self) -> tuple[federation_pb2.SignedStandingSet, int]:
        async with self._lock:
            if (self.stale or self.signed is None
                    or time.monotonic() - self._built >= RESYNC_S / 2):
                self.stale = False  # before building: a change meanwhile marks it again
                body = await self.body()
                self.signed, self.offered = seal_set(self.node, body), len(body.queries)
                self._built = time.monotonic()
            return self.signed, self.offered

    async def body(self) -> federation_pb2.StandingSet:
        node = self.node
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> list[tuple[Watch, tuple[str, ...]]]:
            out = []
            for w in watch_tx.watches(conn, None, now, network_only=True):
                row = users_tx.find(conn, w.owner)
                if row is not None:  # a removed user's watch is never asked for
                    out.append((w, row.attributes))
            return out

        found = await node.db.read(tx)
        self._issued = max(now, self._issued + 1)
        body = federation_pb2.StandingSet(center=node.center, issued_ms=self._issued,
                                          max_hops=DEFAULT_HOPS)
        for w, attrs in found:
            body.queries.add(watch_id=w.id, user=w.owner, user_attributes=list(attrs),
                             entity_keys=list(w.params.entity_keys), kinds=list(w.params.kinds),
                             behaviors=list(w.params.behaviors), expires_ms=w.expires_ms)
        return body


class WatchClient:
    """This node's network watches at one dialled peer: register, pass on the sets
    of watchers beyond (taken from other peers), then pull hits: this node's own,
    and sealed ones for watchers beyond, kept for the next hop back."""

    def __init__(self, node: NodeService, watches: Watches, center: str,
                 channel: Any, own: OwnSet, seal_private: Sequence[X25519PrivateKey] | None = None
                 ) -> None:
        self.node = node
        self.watches = watches
        self.center = center
        self.own = own  # this node's signed set, shared by every peer's client
        self.channel = channel  # () -> grpc.aio.Channel (the link's shared channel)
        self.seal_private = seal_private  # opens hits sealed to this center
        self.changed = asyncio.Event()
        self.changed.set()
        self.relay = asyncio.Event()  # another watcher's set was taken: pass it on
        self.relay.set()
        self.sent: dict[str, tuple[int, int]] = {}  # watcher -> (issued, hops) passed on
        self.accepted: int | None = None
        self.backoff = Backoff()
        # "watch hit refused": one line a minute from this peer, the rest counted (a
        # batch with refused hits is a line, and the peer sends one a second).
        self.refusal_logs = LogLimit()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.center}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.info("watch link down", extra={"peer": self.center,
                                                   "reason": exc.code().name})
            except Exception:
                log.exception("watch link failed", extra={"peer": self.center})
            raise_if_cancelling()
            self.changed.set()  # register again after reconnecting
            self.relay.set()
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        self.sent.clear()  # the peer may have lost nothing, but a replay is only refused
        pull = asyncio.create_task(self._pull())
        try:
            while True:
                if self.changed.is_set():
                    await self._register()
                if self.relay.is_set():
                    await self._pass_on()
                self.backoff.reset()
                # Until the set changes, another watcher's set is to be passed on,
                # the resync period passes, or the hit stream ends (the peer went
                # away: reconnect and register again).
                waiters = [asyncio.ensure_future(self.changed.wait()),
                           asyncio.ensure_future(self.relay.wait())]
                try:
                    done, _ = await asyncio.wait([*waiters, pull], timeout=RESYNC_S,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
                if pull.done():
                    pull.result()  # raises what ended it
                    raise ConnectionError("watch hit stream ended")
                if not done:  # the resync period passed
                    self.changed.set()
                    self.relay.set()
        finally:
            await cancel_and_wait(pull)

    async def _register(self) -> None:
        self.changed.clear()
        signed, offered = await self.own.current()
        try:
            reply = await fed_stub(self.channel()).SetStanding(signed, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            return  # it holds this very set already (sent before a resync was due)
        if reply.accepted < offered:
            log.warning("peer kept fewer standing queries than offered", extra={
                "peer": self.center, "accepted": reply.accepted, "offered": offered})
        self.accepted = reply.accepted

    async def _pass_on(self) -> None:
        """Other watchers' sets taken here, passed on unchanged (the signed bytes)
        with one hop less and this node on the path: never to the peer a set came
        through, its watcher or a center on its path."""
        self.relay.clear()
        me = self.node.center
        for r in await self.node.db.read(watch_tx.routes):
            if (self.center in {r.center, *r.ways, *r.path} or r.signed is None
                    or self.sent.get(r.center) == (r.issued_ms, r.hops_left)):
                continue
            onward = federation_pb2.SignedStandingSet.FromString(r.signed)
            onward.hops_left = r.hops_left - 1
            onward.path.extend([*r.path, *([r.via] if r.via not in r.path else []), me])
            try:
                await fed_stub(self.channel()).SetStanding(onward, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise  # the link is down: reconnect, then pass everything on again
                # ALREADY_EXISTS: it took this set (or a newer one) another way.
                # Others (no key for that watcher there yet, a bound) are the
                # peer's decision: tried again at the next set taken or resync.
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    log.info("standing set not passed on", extra={
                        "peer": self.center, "watcher": r.center, "code": exc.code().name})
                    continue
            self.sent[r.center] = (r.issued_ms, r.hops_left)

    async def _pull(self) -> None:
        after = await self.node.db.read(lambda c: watch_tx.cursor(c, self.center))
        stream = fed_stub(self.channel()).WatchHits(federation_pb2.WatchHitsRequest(after=after))
        async for batch in stream:
            if batch.last <= after:
                continue
            stored, relayed, refused = await self.node.db.run(
                lambda c, b=batch: self._store(c, b))
            after = batch.last
            if stored:
                self.watches.hits_feed.bump()
            if relayed:
                self.watches.outbox_feed.bump()
            if refused:
                # A peer delivering hits that fail is read slowly: at most HIT_BATCH
                # signature checks a second, not a core's worth.
                await asyncio.sleep(REFUSED_PAUSE_S)

    def _store(self, conn: sqlite3.Connection, batch: federation_pb2.WatchHitBatch
               ) -> tuple[int, int, int]:
        """Verify and keep the hits of one batch (sealed hits for watchers beyond:
        kept for the next hop back); move the cursor past it. (stored, relayed,
        refused)"""
        now = now_ms()
        stored = 0
        # A node sends at most HIT_BATCH hits a batch: more is refused unread, so
        # one message costs at most HIT_BATCH signature checks on this (the
        # database writer's) thread, and one log line, however many hits it holds.
        refused = max(0, len(batch.hits) - HIT_BATCH)
        reason = f"{refused} hits over the {HIT_BATCH} a batch may hold" if refused else ""
        relayed: set[str] = set()
        for h in batch.hits[:HIT_BATCH]:
            try:
                if h.HasField("sealed") and h.sealed.watcher != self.node.center:
                    if self._relay(conn, h.sealed, now):
                        relayed.add(h.sealed.watcher)
                    continue
                hit = self._opened(conn, h, now)
            except BadSignature as exc:
                refused += 1
                reason = reason or str(exc)
                continue
            if hit is not None:
                stored += self.watches.record_hit(conn, hit)
        limits = self.node.config.limits
        for watcher in relayed:  # once per batch: each prune walks the kept rows
            watch_tx.prune_outbox(conn, watcher, limits.max_watch_hits, limits.max_relay_bytes)
        if refused:
            watch_tx.count_refused(conn, self.center, refused)
            metrics.WATCH_HITS_REFUSED.labels(self.center).inc(refused)
            held = self.refusal_logs.take(self.center, time.monotonic())
            if held is not None:
                log.warning("watch hit refused", extra={
                    "peer": self.center, "refused": refused, "of": len(batch.hits),
                    "first_reason": reason[:200], "batches_not_logged_before": held})
        watch_tx.set_cursor(conn, self.center, batch.last)
        return stored, len(relayed), refused

    def _relay(self, conn: sqlite3.Connection, s: federation_pb2.SealedWatchHit,
               now: int) -> bool:
        """A sealed hit for a watcher beyond this node: kept (ciphertext) for the
        peer its set came through. Only for a watch this node passed on and not
        back where the set came from; signature checked when the answering
        center's key is known here (the watcher checks it in any case)."""
        r = watch_tx.route(conn, s.watcher)
        if (r is None or r.via == self.center or self.node.center in s.via
                or len(s.via) >= MAX_PATH):
            return False  # back where its set came from, or round in a loop
        # Fields this node does not know are unsigned too (protobuf keeps them when
        # it parses): kept, they would pad a real hit the same way.
        s.DiscardUnknownFields()
        if not all(CENTER_ID_RE.match(v) for v in s.via):
            # Unsigned: a hop padding a real hit's `via` could make it alone fill
            # the watcher's max_relay_bytes here and push every other hit out.
            raise BadSignature("sealed watch hit: `via` is not a list of center ids")
        if not any(q.watch.id == s.watch_id for q in watch_tx.standing(conn, now, s.watcher)):
            return False  # withdrawn meanwhile: nobody waits for it
        if s.ByteSize() > self.node.config.limits.max_message_bytes // 2:
            raise BadSignature("sealed watch hit is too large")
        keys = self.node.current_keys_of(s.center)
        if keys:
            check_hit(s.sealed, s.signature, s.key_id, keys, s.watcher, s.watch_id, s.center,
                      s.number)
        # One this node could not check is kept too (the watcher checks it), but
        # goes first when the watcher's rows are over their bounds: anyone could
        # have made it, so it must not push out hits that are surely real.
        # Every way back for the watcher but the peer it came from (each way
        # holds it once, whichever peers bring it).
        return watch_tx.add_outgoing_ways(conn, watch_tx.Outgoing(
            0, s.watcher, s.watch_id, s.center, s.number, f"hit:{s.number}", 0,
            "SEALED" if keys else watch_tx.UNVERIFIED, sealed=s.SerializeToString(),
            source=self.center), r, now, besides=self.center)

    def _opened(self, conn: sqlite3.Connection, h: federation_pb2.WatchHit,
                now: int) -> watch_tx.Hit | None:
        """A hit for this node: direct from the peer (its own record), or sealed by
        a center beyond it: its signature checked, opened, then verified like a
        direct one with that center as the answering origin."""
        if not h.HasField("sealed"):
            return self._verified(conn, h, now, self.center)
        s = h.sealed
        if self.seal_private is None:
            raise BadSignature("a sealed watch hit, but this node has no encryption key")
        plain = open_hit(s.sealed, s.signature, s.key_id, self.node.current_keys_of(s.center),
                         self.seal_private, self.node.center, s.watch_id, s.center, s.number)
        inner = federation_pb2.WatchHit()
        try:
            inner.ParseFromString(plain)
        except DecodeError:
            raise BadSignature("sealed watch hit is malformed") from None
        if inner.watch_id != s.watch_id or inner.HasField("sealed"):
            raise BadSignature("sealed watch hit names another watch")
        return self._verified(conn, inner, now, s.center)

    def _verified(self, conn: sqlite3.Connection, h: federation_pb2.WatchHit,
                  now: int, answered_by: str) -> watch_tx.Hit | None:
        w = watch_tx.watch(conn, h.watch_id)
        if w is None or not w.network:
            return None  # withdrawn meanwhile (or never ours): nothing to show
        stub = self.node.verified_stub(h.stub)
        if stub.origin != answered_by:
            raise BadSignature("a center answered a standing query for another origin")
        if h.HasField("envelope"):
            body = self.node.verified_record(h.envelope)
            why = stub_mismatch(stub, body.origin, body.seq, entry_hash(h.envelope.payload), body)
            if why or body.origin != answered_by:
                raise BadSignature(why or "envelope is not the answering center's own record")
            if self.node.decide(body, Requester(self.node.center)) is not Decision.FULL:
                # Content is kept only where this node's own decision for itself is
                # FULL, whoever sent it: then the hit is the stub alone.
                return watch_tx.Hit(0, w.id, w.owner, now, answered_by, stub.origin,
                                    stub.record_id, stub.version, "POINTER", None, None, None,
                                    h.stub.stub, h.stub.signature, h.stub.key_id)
            return watch_tx.Hit(0, w.id, w.owner, now, answered_by, body.origin,
                                body.record_id, body.version, "FULL", h.envelope.payload,
                                h.envelope.signature, h.envelope.key_id, h.stub.stub,
                                h.stub.signature, h.stub.key_id)
        return watch_tx.Hit(0, w.id, w.owner, now, answered_by, stub.origin, stub.record_id,
                            stub.version, "POINTER", None, None, None, h.stub.stub,
                            h.stub.signature, h.stub.key_id)
