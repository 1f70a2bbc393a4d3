"""Network watches between centers: signed standing queries and a pulled hit stream.

Watcher side (``WatchClient``): for every dialled peer, one task sends this node's
whole set of network watches as one signed ``StandingSet`` (its center, each
watch's id, user, the user's attributes as this center asserts them now, entity
keys, kinds, behaviour codes, expiry), whenever the set changes, after every
reconnect and every few minutes (attributes may change; the set is the truth, so
a withdrawn or expired watch is simply left out). Then it pulls hits from the
peer's durable outbox with a cursor (``WatchHits(after)``), so a hit made while
this node was away arrives when it comes back. Every hit is verified here: the
stub against the origin's pinned key, and a FULL envelope against the origin's
key too, with the stub naming the same position; the origin must be the peer
itself (each answering node judges only its own records). Hits are re-judged for
the watch's owner when shown (node/watches.py ``view``).

Answering side (``StandingServer``): the set is verified against the pinned key of
the TLS peer, must name that center, must be newer than the last one taken
(replays are refused), is bounded (``max_watches_per_peer`` queries, expiry capped
by ``max_watch_days``) and is stored durably; node/watches.py judges every new or
updated record of this center against it with this node's own policy. The hit
stream re-checks each outbox row against the standing query as it is now
(withdrawn: nothing), sends the origin's signed bytes, and writes the
dissemination log (channel ``watch``).

Why pull, not push: the outbox is the answering node's, bounded per watcher, and a
watcher that is offline loses nothing (the same cursor model as replication).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from federation.backoff import Backoff
from federation.links import raise_if_cancelling
from federation.transport.client import stub as fed_stub
from node import logs
from node.egress import Dissemination
from node.entities import MAX_VALUE
from node.query import MAX_ENTITY_KEYS, SearchParams
from node.record import CONTENT_KINDS, check_behaviors
from node.service import NodeService
from node.signing import (
    STANDING_DOMAIN,
    BadSignature,
    entry_hash,
    key_id,
    open_signed,
    sign,
    stub_mismatch,
)
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage import users as users_tx
from node.storage import watches as watch_tx
from node.timeutil import DAY_MS, now_ms
from node.types import Decision, Requester, ValidationError
from node.watch import Watch, judge
from node.watches import Watches
from node.wire import federation_pb2

log = logs.get("fcnode.federation.watch")
RESYNC_S = 300.0   # the set is sent again this often (attributes and expiry change)
MAX_SKEW_MS = 5 * 60_000
MAX_NAME = 64
MAX_ATTRS = 64
HIT_BATCH = 128
HEARTBEAT_S = 10.0


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def seal_set(node: NodeService, body: federation_pb2.StandingSet
             ) -> federation_pb2.SignedStandingSet:
    data = body.SerializeToString(deterministic=True)
    return federation_pb2.SignedStandingSet(
        body=data, signature=sign(node.key, STANDING_DOMAIN, data),
        key_id=key_id(node.key.public_key()))


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
    """This node answering other centers' standing queries."""

    def __init__(self, node: NodeService, watches: Watches) -> None:
        self.node = node
        self.watches = watches

    async def set_standing(self, peer: str, request: federation_pb2.SignedStandingSet
                           ) -> federation_pb2.StandingReply:
        limits = self.node.config.limits
        if request.ByteSize() > limits.max_query_bytes * 64:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "standing set is too large")
        # Like a query: signed now, so only the center's current key (a retired or
        # distrusted one signs nothing new).
        try:
            open_signed(STANDING_DOMAIN, request.body, request.signature, request.key_id,
                        self.node.current_keys_of(peer), "standing set")
        except BadSignature as exc:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"standing set: {exc}") from None
        body = federation_pb2.StandingSet()
        try:
            body.ParseFromString(request.body)
        except DecodeError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "standing set is malformed") from None
        if body.center != peer:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          "standing set names a center other than the one that sent it")
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

        def tx(conn: sqlite3.Connection) -> tuple[int, int]:
            if body.issued_ms <= watch_tx.standing_issued(conn, peer):
                raise Refused(grpc.StatusCode.ALREADY_EXISTS,
                              "standing set is not newer than the one taken (a replay)")
            return watch_tx.replace_standing(conn, peer, body.issued_ms, [
                watch_tx.Standing(peer, w, attrs[w.id], now) for w in kept])

        added, withdrawn = await self.node.db.run(tx)
        if added or withdrawn:
            log.info("standing queries changed", extra={
                "peer": peer, "added": added, "withdrawn": withdrawn, "held": len(kept)})
        if len(kept) < len(items):
            log.warning("standing queries over the per-peer limit were not kept", extra={
                "peer": peer, "offered": len(items), "limit": limits.max_watches_per_peer})
        return federation_pb2.StandingReply(accepted=len(kept), offered=len(body.queries))

    async def hits(self, peer: str, request: federation_pb2.WatchHitsRequest,
                   revoked: asyncio.Event) -> AsyncIterator[federation_pb2.WatchHitBatch]:
        after = request.after
        await self.node.db.run(lambda c: watch_tx.ack_outgoing(c, peer, after))
        while not revoked.is_set():
            seen = self.watches.outbox_feed.generation
            batch = await self.node.db.run(lambda c, a=after: self._batch(c, peer, a))
            if batch.last > after:
                after = batch.last
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
        """The next outbox rows for ``peer``, each judged again against its standing
        query as it is now, as the origin's signed bytes; logged as disseminations."""
        node = self.node
        now = now_ms()
        rows = watch_tx.outgoing(conn, peer, after, HIT_BATCH)
        batch = federation_pb2.WatchHitBatch(last=rows[-1].id if rows else after)
        current = {s.watch.id: s for s in watch_tx.standing(conn, now, peer)}
        sent: list[Dissemination] = []
        for row in rows:
            s = current.get(row.watch_id)
            entry = log_tx.entry(conn, row.origin, row.seq)
            if s is None or entry is None or entry.payload is None or row.origin != node.center:
                continue
            signed_stub = entry.signed_stub()
            if signed_stub is None:
                continue
            body = entry.body()
            d = judge(node.decide(body, Requester(peer, s.watch.owner, frozenset(s.attributes))),
                      s.watch.params, body)
            if d < Decision.POINTER:
                continue
            hit = federation_pb2.WatchHit(id=row.id, watch_id=row.watch_id, stub=signed_stub)
            if d is Decision.FULL:
                hit.envelope.CopyFrom(entry.envelope())
            batch.hits.append(hit)
            sent.append(Dissemination(peer, s.watch.owner, body.origin, body.record_id,
                                      body.version, body.seq, "watch", d.name))
        fed_tx.log_disseminations(conn, sent, now)
        return batch


class WatchClient:
    """This node's network watches at one dialled peer: register, then pull hits."""

    def __init__(self, node: NodeService, watches: Watches, center: str,
                 channel: Any) -> None:
        self.node = node
        self.watches = watches
        self.center = center
        self.channel = channel  # () -> grpc.aio.Channel (the link's shared channel)
        self.changed = asyncio.Event()
        self.changed.set()
        self.accepted: int | None = None
        self._issued = 0  # each set is later than the one before (the peer refuses replays)
        self.backoff = Backoff()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.center}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        pull = asyncio.create_task(self._pull())
        try:
            while True:
                await self._register()
                self.backoff.reset()
                # Until the set changes, the resync period passes, or the hit
                # stream ends (the peer went away: reconnect and register again).
                changed = asyncio.ensure_future(self.changed.wait())
                try:
                    await asyncio.wait([changed, pull], timeout=RESYNC_S,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if pull.done():
                    pull.result()  # raises what ended it
                    raise ConnectionError("watch hit stream ended")
        finally:
            pull.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pull

    async def standing_set(self) -> federation_pb2.StandingSet:
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
        body = federation_pb2.StandingSet(center=node.center, issued_ms=self._issued)
        for w, attrs in found:
            body.queries.add(watch_id=w.id, user=w.owner, user_attributes=list(attrs),
                             entity_keys=list(w.params.entity_keys), kinds=list(w.params.kinds),
                             behaviors=list(w.params.behaviors), expires_ms=w.expires_ms)
        return body

    async def _register(self) -> None:
        self.changed.clear()
        body = await self.standing_set()
        reply = await fed_stub(self.channel()).SetStanding(seal_set(self.node, body),
                                                            timeout=10)
        if reply.accepted < len(body.queries):
            log.warning("peer kept fewer standing queries than offered", extra={
                "peer": self.center, "accepted": reply.accepted, "offered": len(body.queries)})
        self.accepted = reply.accepted

    async def _pull(self) -> None:
        after = await self.node.db.read(lambda c: watch_tx.cursor(c, self.center))
        stream = fed_stub(self.channel()).WatchHits(federation_pb2.WatchHitsRequest(after=after))
        async for batch in stream:
            if batch.last <= after:
                continue
            stored = await self.node.db.run(lambda c, b=batch: self._store(c, b))
            after = batch.last
            if stored:
                self.watches.hits_feed.bump()

    def _store(self, conn: sqlite3.Connection, batch: federation_pb2.WatchHitBatch) -> int:
        """Verify and keep the hits of one batch; move the cursor past it."""
        now = now_ms()
        stored = 0
        for h in batch.hits:
            try:
                hit = self._verified(conn, h, now)
            except BadSignature as exc:
                log.warning("watch hit refused", extra={"peer": self.center, "reason": str(exc)})
                continue
            if hit is not None:
                stored += self.watches.record_hit(conn, hit)
        watch_tx.set_cursor(conn, self.center, batch.last)
        return stored

    def _verified(self, conn: sqlite3.Connection, h: federation_pb2.WatchHit,
                  now: int) -> watch_tx.Hit | None:
        w = watch_tx.watch(conn, h.watch_id)
        if w is None or not w.network:
            return None  # withdrawn meanwhile (or never ours): nothing to show
        stub = self.node.verified_stub(h.stub)
        if stub.origin != self.center:
            raise BadSignature("a peer answered a standing query for another origin")
        if h.HasField("envelope"):
            body = self.node.verified_record(h.envelope)
            why = stub_mismatch(stub, body.origin, body.seq, entry_hash(h.envelope.payload), body)
            if why or body.origin != self.center:
                raise BadSignature(why or "envelope is not the peer's own record")
            if self.node.decide(body, Requester(self.node.center)) is not Decision.FULL:
                # Content is kept only where this node's own decision for itself is
                # FULL, whoever sent it: then the hit is the stub alone.
                return watch_tx.Hit(0, w.id, w.owner, now, self.center, stub.origin,
                                    stub.record_id, stub.version, "POINTER", None, None, None,
                                    h.stub.stub, h.stub.signature, h.stub.key_id)
            return watch_tx.Hit(0, w.id, w.owner, now, self.center, body.origin,
                                body.record_id, body.version, "FULL", h.envelope.payload,
                                h.envelope.signature, h.envelope.key_id, h.stub.stub,
                                h.stub.signature, h.stub.key_id)
        return watch_tx.Hit(0, w.id, w.owner, now, self.center, stub.origin, stub.record_id,
                            stub.version, "POINTER", None, None, None, h.stub.stub,
                            h.stub.signature, h.stub.key_id)

