"""Watches: users' standing searches, and other centers' standing queries.

The matcher drains the queue of records whose current version changed (filled by
triggers in the schema whenever a record is published here, replicated in or
updated, and only while some watch exists) and judges each record:

* against this node's own watches, with each owner's CURRENT attributes (a removed
  user's watches are gone; a stripped attribute narrows the next hit), through
  the one discovery rule (node.core.watch.judge): FULL hits and entity-only POINTERs.
  Hits are kept per owner (at most [limits] max_watch_hits, the oldest dropped and
  counted) and noticed (kind ``watch``);
* if the record is this center's own (origin == self), against the standing
  queries other centers registered here, directly or through hops
  (federation/watch_sync.py): FULL or POINTER hits go to the durable outbox
  (bounded the same way) for the peer the watcher's set came through, pulled by
  that node with a cursor (sealed to the watcher when it is further away); a
  restricted record leaves one deconfliction notice per (watch, record) naming
  the watcher instead.

Hits are judged again when shown (``view``): what the owner may see now.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

from node.core.query import SearchParams
from node.core.signing import BadSignature
from node.core.timeutil import DAY_MS, iso, now_ms
from node.core.types import Decision, Requester, ValidationError
from node.core.users import User
from node.core.watch import Watch, WatchIndex, check_watch, judge
from node.services.service import ChangeFeed, NodeService, NotFound, Visible
from node.services.tasks import cancel_and_wait
from node.storage import audit as audit_tx
from node.storage import log as log_tx
from node.storage import notices as notices_tx
from node.storage import users as users_tx
from node.storage import watches as watch_tx
from node.telemetry import logs
from node.wire import records_pb2

log = logs.get("fcnode.watch")
BATCH = 256
MAX_WATCHES_PER_USER = 100


def new_watch_id() -> str:
    return secrets.token_hex(8)


class Watches:
    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.hits_feed = ChangeFeed()  # wakes `watch hits --follow`
        self.outbox_feed = ChangeFeed()  # wakes other centers' hit streams
        # Called when this node's set of network watches changes (federation
        # re-sends the signed set to its peers).
        self.network_changed: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    # -- the user's operations ---------------------------------------------------
    async def add(self, user: User, params: SearchParams, network: bool,
                  expires_in_ms: int | None) -> dict[str, Any]:
        check_watch(params, network)
        limits = self.node.config.limits
        cap = limits.max_watch_days * DAY_MS
        span = expires_in_ms if expires_in_ms is not None else cap
        if span <= 0:
            raise ValidationError("--expires must be in the future")
        now = now_ms()
        w = Watch(new_watch_id(), user.name, params, network, now, now + min(span, cap))

        def tx(conn: sqlite3.Connection) -> None:
            if watch_tx.count_of(conn, user.name) >= MAX_WATCHES_PER_USER:
                raise ValidationError(f"{user.name!r} already has {MAX_WATCHES_PER_USER} "
                                      "watches; remove one first")
            watch_tx.add_watch(conn, w)
            audit_tx.append(conn, self.node.sign_audit, now, user.name, "watch.add",
                            {"watch_id": w.id, "network": network, **w.to_json(),
                             "expires": iso(w.expires_ms)})

        await self.node.db.run(tx)
        if network:
            self._network_changed()
        return self._listing(w)

    @staticmethod
    def _listing(w: Watch) -> dict[str, Any]:
        return {"watch_id": w.id, "owner": w.owner, "network": w.network,
                "created": iso(w.created_ms), "expires": iso(w.expires_ms), **w.to_json()}

    async def list(self, user: User, remote: bool = False) -> list[dict[str, Any]]:
        now = now_ms()
        if remote:
            self.node.require_admin(user, "listing other centers' standing queries")
            rows, ways = await self.node.db.read(
                lambda c: (watch_tx.standing(c, now),
                           {r.center: r.also for r in watch_tx.routes(c, every=True)}))
            return [{"center": s.center, "user": s.watch.owner, "watch_id": s.watch.id,
                     "registered": iso(s.registered_ms), "expires": iso(s.watch.expires_ms),
                     **({"via": s.via} if s.via and s.via != s.center else {}),
                     **({"also_via": list(ways[s.center])} if ways.get(s.center) else {}),
                     **s.watch.to_json()} for s in rows]
        rows = await self.node.db.read(lambda c: watch_tx.watches(c, user.name, now))
        return [self._listing(w) for w in rows]

    async def remove(self, user: User, watch_id: str) -> dict[str, Any]:
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> Watch:
            w = watch_tx.watch(conn, watch_id)
            if w is None or (w.owner != user.name and not user.admin):
                raise NotFound(f"no watch {watch_id!r} of yours")
            watch_tx.remove_watch(conn, watch_id)
            audit_tx.append(conn, self.node.sign_audit, now, user.name, "watch.remove",
                            {"watch_id": watch_id, "owner": w.owner})
            return w

        w = await self.node.db.run(tx)
        if w.network:
            self._network_changed()
        return {"removed": watch_id}

    def _network_changed(self) -> None:
        for callback in self.network_changed:
            callback()

    async def hits(self, user: User, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return (await self._hits_after(user, after, limit))[0]

    async def _hits_after(self, user: User, after: int, limit: int
                          ) -> tuple[list[dict[str, Any]], int]:
        def tx(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            rows = watch_tx.hits(conn, user.name, after, limit)
            out = [v for h in rows if (v := view(self.node, conn, user, h)) is not None]
            return out, (rows[-1].id if rows else after)

        return await self.node.db.read(tx)

    async def follow(self, user: User, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Hits as they happen (after those already there), until the caller goes."""
        while True:
            seen = self.hits_feed.generation
            shown, after = await self._hits_after(user, after, 500)
            for item in shown:
                yield item
            await self.hits_feed.wait(seen, 5.0)
            # Judged with the user's current attributes; a removed user stops here.
            user = await self.node.current_user(user.name)

    # -- the matcher -----------------------------------------------------------
    async def start(self) -> None:
        await self.node.db.run(lambda c: watch_tx.set_self(c, self.node.center))
        self._task = asyncio.create_task(self._run(), name="watch-matcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        last_expiry = 0
        while True:
            seen = self.node.changes.generation
            try:
                if now_ms() - last_expiry > 60_000:
                    await self.expire()
                    last_expiry = now_ms()
                while await self.drain():
                    pass
            except Exception:  # the matcher must not die; it retries at the next change
                log.exception("watch matcher failed")
            await self.node.changes.wait(seen, 1.0)

    async def expire(self) -> None:
        now = now_ms()
        gone, standing = await self.node.db.run(lambda c: (watch_tx.expire_watches(c, now),
                                                           watch_tx.expire_standing(c, now)))
        if gone or standing:
            log.info("watches expired", extra={"watches": len(gone), "standing": standing})
        if gone:
            self._network_changed()

    async def drain(self) -> int:
        """Judge one batch of queued records against every watch; True-ish when
        there may be more."""
        node = self.node
        now = now_ms()
        counts = {"hits": 0, "outbox": 0}

        def tx(conn: sqlite3.Connection) -> int:
            batch = watch_tx.queued(conn, BATCH)
            if not batch:
                return 0
            local = WatchIndex(watch_tx.watches(conn, None, now))
            # Standing queries are judged against this center's own records only:
            # a batch of other origins' records (replication ingest) skips them.
            own = any(e is not None and e.origin == node.center for _, e in batch)
            remote = watch_tx.standing(conn, now) if own else []
            remote_index = WatchIndex(s.watch for s in remote)
            remote_of = {(s.watch.id, s.watch.owner): s for s in remote}
            touched: set[str] = set()
            if not local and not remote_index:  # nothing here can match: just drain
                watch_tx.dequeue(conn, [rec for rec, _ in batch])
                return len(batch)
            owners: dict[str, User | None] = {}
            for _, entry in batch:
                if entry is None:
                    continue
                body = entry.body()
                keys = frozenset(k for e in body.entities for k in e.keys)
                for w in local.candidates(keys):
                    if w.owner not in owners:
                        row = users_tx.find(conn, w.owner)
                        owners[w.owner] = (User(row.name, frozenset(row.attributes), row.admin)
                                           if row else None)
                    owner = owners[w.owner]
                    if owner is None:
                        continue
                    d = judge(node.decide(body, node.requester(owner)), w.params, body, keys)
                    if d < Decision.POINTER:
                        continue
                    hit = watch_tx.Hit(0, w.id, w.owner, now, "local", body.origin,
                                       body.record_id, body.version, d.name)
                    counts["hits"] += self.record_hit(conn, hit)
                if body.origin == node.center and remote_index:
                    for w in remote_index.candidates(keys):
                        s = remote_of[(w.id, w.owner)]
                        if self._standing_hit(conn, s, body, entry, keys, now):
                            counts["outbox"] += 1
                            touched.add(s.center)
            for center in touched:  # once per batch: each prune walks the kept rows
                watch_tx.prune_outbox(conn, center, node.config.limits.max_watch_hits)
            watch_tx.dequeue(conn, [rec for rec, _ in batch])
            return len(batch)

        n = await node.db.run(tx)
        if counts["hits"]:
            self.hits_feed.bump()
        if counts["outbox"]:
            self.outbox_feed.bump()
        return n

    def record_hit(self, conn: sqlite3.Connection, hit: watch_tx.Hit) -> int:
        """Keep a hit for its owner and notice it (kind ``watch``): 1 when new."""
        hit_id = watch_tx.add_hit(conn, hit, self.node.config.limits.max_watch_hits)
        if not hit_id:
            return 0
        notices_tx.add(conn, hit.ts_ms, "watch", hit.origin, hit.record_id,
                       {"watch_id": hit.watch_id, "owner": hit.owner, "hit": hit_id,
                        "access": hit.access, "version": hit.version})
        return 1

    def _standing_hit(self, conn: sqlite3.Connection, s: watch_tx.Standing,
                      body: records_pb2.RecordBody, entry: log_tx.StoredEntry,
                      keys: frozenset[str], now: int) -> int:
        """One of this center's records judged for another center's standing query,
        with this node's own policy, for that center's user as it asserted them."""
        node = self.node
        requester = Requester(s.center, s.watch.owner, frozenset(s.attributes))
        d = judge(node.decide(body, requester), s.watch.params, body, keys)
        if d is Decision.NOTIFY_ONLY:
            if watch_tx.notify_once(conn, s.center, s.watch.id, body.record_id):
                notices_tx.deconfliction(conn, now, node.center, {
                    "searched_by": f"{s.center}/{s.watch.owner[:64]}",
                    "watch_id": s.watch.id, "records": [body.record_id], "matched": 1,
                    "entities": list(s.watch.params.entity_keys[:8]),
                    "why": "a restricted record matched another center's standing watch; "
                           "they were told nothing"}, node.config.limits.max_notices)
            return 0
        if d < Decision.POINTER or (d is Decision.POINTER and entry.stub is None):
            return 0
        # To the peer the watcher's set came through: the watcher itself, or the
        # next hop back towards it (then sealed to the watcher when sent), and every
        # other peer the same set came through (a hop may drop what it carries).
        out = watch_tx.Outgoing(0, s.center, s.watch.id, body.origin, body.seq,
                                body.record_id, body.version, d.name, s.via or s.center)
        route = watch_tx.route(conn, s.center)
        if route is None:  # (a standing query is always taken with its route)
            return int(watch_tx.add_outgoing(conn, out, now))
        return int(watch_tx.add_outgoing_ways(conn, out, route, now))


def hit_view(node: NodeService, conn: sqlite3.Connection, user: User,
             hit_id: int) -> dict[str, Any] | None:
    hit = watch_tx.hit(conn, int(hit_id))
    return view(node, conn, user, hit) if hit is not None else None


def view(node: NodeService, conn: sqlite3.Connection, user: User,
         hit: watch_tx.Hit) -> dict[str, Any] | None:
    """A hit as its owner may see it NOW (judged again with their current
    attributes): the record if they may read it in full, a pointer if the watch
    found it by entity, else nothing."""
    w = watch_tx.watch(conn, hit.watch_id)
    if w is None or w.owner != user.name:
        return None
    requester = node.requester(user)
    held = log_tx.record_state(conn, hit.origin, hit.record_id)
    if held is not None and held[2] != "active":
        return None  # retracted, purged or recalled here since: nothing to show
    base = {"hit": hit.id, "watch_id": hit.watch_id, "time": iso(hit.ts_ms),
            "from": hit.source}
    for entry, state in log_tx.current(conn, hit.record_id):
        if entry.origin != hit.origin or state != "active":
            continue
        body = entry.body()
        d = judge(node.decide(body, requester), w.params, body)
        if d >= Decision.POINTER:
            return {**base, **Visible(d, body, entry).summary()}
        return None
    if hit.payload is not None:  # a network hit on a record this node does not hold
        body = records_pb2.RecordBody()
        body.ParseFromString(hit.payload)
        d = judge(node.decide(body, requester), w.params, body)
        if d >= Decision.POINTER:
            return {**base, **Visible(d, body, log_tx.StoredEntry(
                body.origin, body.seq, b"", None, None, None)).summary()}
        return None
    if hit.stub is not None and w.params.entity_keys:
        try:  # verified when it arrived; verified again against the keys pinned now
            stub = node.verified_stub(records_pb2.SignedStub(
                stub=hit.stub, signature=hit.stub_signature, key_id=hit.stub_key_id or ""))
        except BadSignature:
            return None
        if stub.origin != hit.origin:
            return None
        return {**base, "record_id": stub.record_id, "origin": stub.origin,
                "kind": records_pb2.Kind.Name(stub.kind), "access": "POINTER",
                "contact": stub.contact}
    return None

