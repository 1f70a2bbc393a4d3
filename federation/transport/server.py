"""Federation gRPC servicer: a thin adapter between the wire and the node.

The calling center is the one whose pinned certificate the TLS handshake
verified; it is looked up again on every call (a removed peer's established
connection must not keep working) and never taken from a message field.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from federation.ratelimit import LogLimit, RateLimits
from federation.tls import PinnedTls, peer_pem
from federation.watch_sync import Refused
from node.core.sealing import COPY_OVERHEAD, SealedCopy, copy_budget
from node.core.signing import INTRODUCTIONS_DOMAIN, sign
from node.core.timeutil import now_ms
from node.core.types import Dissemination
from node.services.egress import replication_batch
from node.services.introductions import served
from node.services.service import NodeService
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage import sealed as sealed_tx
from node.telemetry import logs, metrics
from node.wire import federation_pb2, federation_pb2_grpc

log = logs.get("fcnode.federation.server")
HEARTBEAT_S = 10.0
GROUP = 8  # batches per transaction during catch-up
REFUSAL_LOGS_PER_MINUTE = 10  # refused standing sets logged per peer (the rest counted)


def fit(entries: list[log_tx.StoredEntry], budget: int,
        extra: dict[int, int] | None = None) -> list[log_tx.StoredEntry]:
    """The longest prefix within ``budget`` bytes of payload (at least one entry:
    a single record is far below the message limit). ``extra``: seq -> bytes
    going with that position besides its payload (its sealed copies)."""
    total = 0
    for i, e in enumerate(entries):
        total += len(e.payload or b"") + 64 + (extra or {}).get(e.seq, 0)
        if total > budget and i:
            return entries[:i]
    return entries


class Revocation(asyncio.Event):
    """Set when a stream must end, with the status its peer is told."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "peer was removed"

    def __init__(self) -> None:
        super().__init__()
        # origin -> seq: send again from there (a hint held there was corrected).
        self.rewinds: dict[str, int] = {}

    def revoke(self, code: grpc.StatusCode, reason: str) -> None:
        self.code, self.reason = code, reason
        self.set()


class StreamRegistry:
    """Open streams per peer, so removing a peer (or stopping) closes them."""

    def __init__(self) -> None:
        self._streams: dict[str, set[Revocation]] = defaultdict(set)

    @contextlib.contextmanager
    def open(self, center: str):  # type: ignore[no-untyped-def]
        revoked = Revocation()
        self._streams[center].add(revoked)
        try:
            yield revoked
        finally:
            self._streams[center].discard(revoked)

    def revoke(self, center: str, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED,
               reason: str = "peer was removed") -> int:
        streams = self._streams.pop(center, set())
        for r in streams:
            r.revoke(code, reason)
        return len(streams)

    def rewind(self, positions: dict[str, int]) -> None:
        """Every open stream sends these positions (origin -> seq) again."""
        for streams in self._streams.values():
            for r in streams:
                for origin, seq in positions.items():
                    r.rewinds[origin] = min(seq, r.rewinds.get(origin, seq))

    def revoke_all(self, code: grpc.StatusCode, reason: str) -> None:
        for center in list(self._streams):
            self.revoke(center, code, reason)

    def count(self, center: str) -> int:
        return len(self._streams.get(center, ()))


class FederationServicer(federation_pb2_grpc.FederationServicer):
    def __init__(self, node: NodeService, tls: PinnedTls,
                 query_handler: Callable[..., AsyncIterator[federation_pb2.QueryAnswer]] | None
                 = None) -> None:
        self.node = node
        self.tls = tls
        self.streams = StreamRegistry()
        self.query_handler = query_handler
        self.standing: Any = None  # federation.watch_sync.StandingServer, once attached
        # Per peer: Replicate requests that start some origin over from seq 0 (a
        # full resend costs this node a read and a dissemination check per entry).
        self.restarts = RateLimits(node.config.limits.restarts_per_minute)
        # Per peer: refused standing sets logged a minute (a peer may call as fast
        # as it likes, each refusal was a line: the log without bound).
        self.refusal_logs = LogLimit(REFUSAL_LOGS_PER_MINUTE)
        # Calls from certificates that are not pinned: one line a minute for all of
        # them together (whoever reaches the port can make new certificates at will,
        # so a key per certificate or address would itself grow without bound).
        self.unpinned_logs = LogLimit()
        # Other refusals a peer can repeat at will (streams over the cap, restarts
        # and re-pulls over their rate): one line a minute per peer and kind.
        self.limit_logs = LogLimit()
        # Streams opened: a peer that is up to date may open and drop them as fast
        # as it likes within every cap (no restart, never over the stream cap), and
        # each open was a line. One a minute per peer, counting the rest.
        self.open_logs = LogLimit()

    async def authenticate(self, context: grpc.aio.ServicerContext) -> str:
        pem = peer_pem(context)
        center = self.tls.center_for_pem(pem) if pem else None
        if center is None or center not in self.node.peers:
            held = self.unpinned_logs.take("unpinned", time.monotonic())
            if held is not None:
                log.warning("refused call from an unpinned certificate",
                            extra={"peer": context.peer(), "not_logged_before": held})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate is not pinned")
        return center  # type: ignore[return-value]

    def _limit_log(self, peer: str, event: str, limit: int) -> None:
        held = self.limit_logs.take(f"{event}\x00{peer}", time.monotonic())
        if held is not None:
            log.warning(event, extra={"peer": peer, "limit": limit, "not_logged_before": held})

    async def _stream_cap(self, peer: str, context: grpc.aio.ServicerContext,
                          what: str) -> None:
        """Refuse a stream beyond ``max_streams_per_peer`` open from this peer
        (replication and watch-hit streams together)."""
        limit = self.node.config.limits.max_streams_per_peer
        if self.streams.count(peer) >= limit:
            self._limit_log(peer, f"{what} stream refused: too many open", limit)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many {what} streams open from {peer} (limit {limit})")

    async def Replicate(self, request: federation_pb2.ReplicateRequest,
                        context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[federation_pb2.ReplicateBatch]:
        peer = await self.authenticate(context)
        limits = self.node.config.limits
        max_batch = min(request.max_batch or limits.max_batch, limits.max_batch)
        cursors = dict(request.cursors)
        await self._stream_cap(peer, context, "replication")
        if cursors:
            # A restart is any request that would re-serve more than one batch of an
            # origin, not only one from seq 0: from seq 1 it costs the same, and a
            # peer asking that again and again made this node resend its whole log.
            heads = await self.node.db.read(log_tx.heads)  # origins held: bounded
            restart = any(h > 0 and (cursors[o] == 0 or h - cursors[o] > limits.max_batch)
                          for o, h in heads.items() if o in cursors)
            self.restarts.per_minute = limits.restarts_per_minute
            if restart and not self.restarts.allow(peer, time.monotonic()):
                self._limit_log(peer, "replication restart refused: rate limit",
                                limits.restarts_per_minute)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"too many replication restarts from seq 0 (or more "
                                    f"than a batch behind) by {peer} "
                                    f"(limit {limits.restarts_per_minute} per minute)")
        # The peer's own log is served up to what this node held when the stream
        # opened (what a restored peer must take back); later entries of it can only
        # be the peer's own new ones, which it needs no echo of: heads only.
        own_cap = (await self.node.db.read(lambda c: log_tx.head(c, peer)[0])
                   if peer in cursors else 0)
        held = self.open_logs.take(peer, time.monotonic())
        if held is not None:
            log.info("replication stream opened", extra={
                "peer": peer, "origins": len(cursors), "not_logged_before": held})
        with self.streams.open(peer) as revoked:
            # During a catch-up the next group is read (on a reader) while this one
            # is sent: the peer's verification and storage never wait for this
            # node's read of the next 2,048 entries. (Its change generation is the
            # one noted when that read began, so no change is missed.)
            ahead: tuple[asyncio.Future[Any], int] | None = None
            try:
                while not revoked.is_set():
                    if revoked.rewinds:
                        if ahead is not None:  # read from cursors that go back now
                            _discard(ahead[0])
                            ahead = None
                        for origin, seq in revoked.rewinds.items():
                            if origin in cursors:
                                cursors[origin] = min(cursors[origin], seq - 1)
                        revoked.rewinds.clear()
                    if ahead is not None:
                        (batches, cursors, sent), seen = await ahead[0], ahead[1]
                        ahead = None
                    else:
                        seen = self.node.changes.generation
                        batches, cursors, sent = await self._read_group(
                            peer, cursors, max_batch, own_cap, request.ranges)
                    # The dissemination rows in one short write, committed before
                    # any batch is sent (and before the next group is read).
                    if sent:
                        await self.node.db.run(
                            lambda conn, s=sent: fed_tx.log_disseminations(conn, s, now_ms()))
                    if batches[-1].items:
                        ahead = (asyncio.ensure_future(self._read_group(
                            peer, cursors, max_batch, own_cap, request.ranges)),
                            self.node.changes.generation)
                    for batch in batches:
                        yield batch  # an empty one is a heartbeat: heads, and "caught up"
                    if not batches[-1].items:
                        await self._wait_for_change(seen, revoked)
            finally:
                if ahead is not None:
                    _discard(ahead[0])
            log.info("replication stream closed", extra={"peer": peer, "reason": revoked.reason})
            await context.abort(revoked.code, revoked.reason)

    def _read_group(self, peer: str, cursors: dict[str, int], max_batch: int, own_cap: int,
                    ranges: bool) -> Awaitable[tuple[list[federation_pb2.ReplicateBatch],
                                                     dict[str, int], list[Dissemination]]]:
        """The next group of batches, read on a reader (never behind ingest)."""
        return self.node.db.read(lambda conn, c=dict(cursors): self._next_batches(
            conn, peer, c, max_batch, own_cap, ranges))

    def _next_batches(self, conn: sqlite3.Connection, peer: str, cursors: dict[str, int],
                      max_batch: int, own_cap: int = 0, ranges: bool = False
                      ) -> tuple[list[federation_pb2.ReplicateBatch], dict[str, int],
                                 list[Dissemination]]:
        """Up to GROUP batches read in one read transaction, with the
        dissemination rows the caller logs in one write: the log is durable,
        and one fsync per 256 records was the sender's limit during catch-up.
        Rows of earlier batches of the group count as sent for later ones, as
        when they were written in the same transaction."""
        batches: list[federation_pb2.ReplicateBatch] = []
        sent: list[Dissemination] = []
        pending: dict[tuple[str, str, str], int] = {}  # newest version in `sent`
        for _ in range(GROUP):
            batch, cursors, read = self._next_batch(conn, peer, cursors, max_batch, sent,
                                                    pending, own_cap, ranges)
            batches.append(batch)
            if read < max_batch:  # (rows read: ranges make fewer items than rows)
                break
        return batches, cursors, sent

    def _next_batch(self, conn: sqlite3.Connection, peer: str, cursors: dict[str, int],
                    max_batch: int, sent: list[Dissemination],
                    pending: dict[tuple[str, str, str], int], own_cap: int = 0,
                    ranges: bool = False
                    ) -> tuple[federation_pb2.ReplicateBatch, dict[str, int], int]:
        quarantined = fed_tx.quarantined(conn)
        batch = federation_pb2.ReplicateBatch()
        new_cursors = dict(cursors)
        room = max_batch
        # Bytes as well as count: 256 large records could exceed the message size
        # limit, and a batch that can never be sent would stall the peer forever.
        budget = self.node.config.limits.max_message_bytes // 2
        for origin, after in sorted(cursors.items()):
            # The peer's own origin is served too: a node restored from a backup
            # takes its own entries back (and learns its head here) before it signs
            # again; an up-to-date node asks from its head and gets only the head.
            if origin in quarantined:
                continue
            head = log_tx.head(conn, origin)[0]
            batch.heads[origin] = head
            upto = min(head, own_cap) if origin == peer else head
            if room <= 0 or upto <= after:
                continue
            entries = log_tx.items_after(conn, origin, after, min(room, upto - after))
            # (A fixed share per position, not what is left of this batch: a position
            # near the end of a full batch goes in the next one, with all its copies.)
            held = {seq: _within(cs, copy_budget(self.node.config.limits.max_message_bytes))
                    for seq, cs in (
                sealed_tx.for_positions(conn, origin, entries[0].seq, entries[-1].seq)
                if entries else {}).items()}
            # Copies count against the message budget too (each is entry-sized).
            extra = {seq: sum(len(c.sealed) + 128 for _, c in cs) for seq, cs in held.items()}
            entries = fit(entries, budget, extra)
            budget -= sum(len(e.payload or b"") + extra.get(e.seq, 0) for e in entries)
            ids = {e.record_id for e in entries if e.record_id}
            states = log_tx.record_states(conn, origin, ids)
            # What was sent before, for the whole batch in one query (not one per entry).
            full = fed_tx.last_sent_many(conn, peer, origin, ids)

            def sent_before(o: str, r: str, ids: set[str] = ids, full: dict[str, int] = full,
                            origin: str = origin) -> int | None:
                logged = full.get(r) if o == origin and r in ids else fed_tx.last_sent(
                    conn, peer, o, r)
                return _newest(logged, pending.get((o, r, "FULL")))

            items, rows = replication_batch(
                entries, peer, self.node.center, sent_before,
                lambda o, r, s=states: s[r][1] if r in s else None,
                lambda o, r: _newest(fed_tx.last_sent(conn, peer, o, r, "RECALL"),
                                     pending.get((o, r, "RECALL"))), ranges,
                lambda o, seq, cs=held: cs.get(seq, []))
            sent.extend(rows)
            for d in rows:
                key = (d.origin, d.record_id, d.decision)
                pending[key] = max(pending.get(key, d.version), d.version)
            batch.items.extend(items)
            if entries:
                new_cursors[origin] = entries[-1].seq
            room -= len(entries)
            if budget <= 0:
                room = 0
        return batch, new_cursors, max_batch - room

    async def _wait_for_change(self, seen: int, revoked: Revocation) -> None:
        waiters = [asyncio.ensure_future(self.node.changes.wait(seen, HEARTBEAT_S)),
                   asyncio.ensure_future(revoked.wait())]
        try:
            await asyncio.wait(waiters, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def Query(self, request: federation_pb2.SignedQuery,
                    context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[federation_pb2.QueryAnswer]:
        peer = await self.authenticate(context)
        if self.query_handler is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "queries are not served here")
        started, result = time.monotonic(), "refused"  # an abort leaves it 'refused'
        try:
            async for answer in self.query_handler(peer, request, context):  # type: ignore[misc]
                yield answer
            result = "answered"
            metrics.QUERY_ANSWER_SECONDS.observe(time.monotonic() - started)
        except (asyncio.CancelledError, GeneratorExit):
            result = "cancelled"
            raise
        finally:
            metrics.QUERIES_ANSWERED.labels(peer, result).inc()

    async def SetStanding(self, request: federation_pb2.SignedStandingSet,
                          context: grpc.aio.ServicerContext) -> federation_pb2.StandingReply:
        peer = await self.authenticate(context)
        if self.standing is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "watches are not served here")
        try:
            return await self.standing.set_standing(peer, request)
        except Refused as exc:
            held = self.refusal_logs.take(peer, time.monotonic())
            if held is not None:
                log.warning("standing set refused", extra={
                    "peer": peer, "reason": str(exc), "not_logged_before": held})
            await context.abort(exc.code, str(exc))
        raise AssertionError("unreachable")

    async def WatchHits(self, request: federation_pb2.WatchHitsRequest,
                        context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[federation_pb2.WatchHitBatch]:
        peer = await self.authenticate(context)
        if self.standing is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "watches are not served here")
        limits = self.node.config.limits
        # Counted with the replication streams: parallel calls from one cursor
        # would each re-seal the same hits.
        await self._stream_cap(peer, context, "watch hits")
        if not self.standing.may_pull(peer, request.after):
            limit = limits.restarts_per_minute
            self._limit_log(peer, "watch hits re-pull refused: rate limit", limit)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many pulls of watch hits already sent by {peer} "
                                f"(limit {limit} per minute)")
        with self.streams.open(peer) as revoked:
            async for batch in self.standing.hits(peer, request, revoked):
                yield batch
            await context.abort(revoked.code, revoked.reason)

    async def Introductions(self, request: federation_pb2.IntroductionsRequest,
                            context: grpc.aio.ServicerContext
                            ) -> federation_pb2.SignedIntroductions:
        """This node's trusted cards, signed: what a peer that pinned it as an
        introducer adopts for verification (node.services.introductions)."""
        peer = await self.authenticate(context)
        body = federation_pb2.IntroductionList(center=self.node.center, issued_ms=now_ms(),
                                               cards=[federation_pb2.IntroducedCard(
                                                   card=o.card.line(), via=list(o.via))
                                                   for o in served(self.node.peers, peer)])
        raw = body.SerializeToString(deterministic=True)
        return federation_pb2.SignedIntroductions(
            body=raw, signature=sign(self.node.key, INTRODUCTIONS_DOMAIN, raw),
            key_id=self.node.own_key_id)


def _within(copies: list[tuple[bytes, SealedCopy]], budget: int
            ) -> list[tuple[bytes, SealedCopy]]:
    """The copies of one position that fit ``budget`` bytes: 32 copies of a
    record at the size limit would not fit one message (the rest are dropped
    here, as any hop may; the origin's own node made them all)."""
    out, total = [], 0
    for c in copies:
        total += len(c[1].sealed) + COPY_OVERHEAD
        if total > budget:
            break
        out.append(c)
    return out


def _discard(read: asyncio.Future[Any]) -> None:
    """Drop a read started ahead (it has no side effects): cancelled, and its
    error, if it already failed, retrieved (not logged as never retrieved)."""
    read.cancel()
    read.add_done_callback(lambda f: f.cancelled() or f.exception())


def _newest(logged: int | None, pending: int | None) -> int | None:
    """The newest version sent (or recalled): the logged one, or one in this
    group's rows not yet written."""
    if logged is None or pending is None:
        return pending if logged is None else logged
    return max(logged, pending)
