"""Answering a federated query from a peer.

The peer is the center whose pinned certificate the handshake verified. Its
query must be signed by that center's key, fresh (deadline ahead, issued not in
the future), new (query ids are remembered per requesting center until their
deadline: a replay is refused, another center's id is not a replay), within the
size and rate limits. Each matching record is judged by the one policy function
for that center and that user, then by the discovery rule (node.core.query): FULL
records match every filter and go back as their signed envelopes; a record the
asker may not read is found only by an exact entity-key match, and goes back as
a POINTER carrying the origin's signed stub (no stub held: no pointer, it could
not be verified); restricted hits go back as nothing and leave, at the origin,
at most one deconfliction notice per query (record ids and text capped, kept
within [limits] max_notices). Restricted matches count against max_results, so
one query's work is bounded. A hub answers for the copies it holds by the same
rules (its own notices only for its own records).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from federation.query_forward import Forwarder, hops_left
from federation.ratelimit import LogLimit, RateLimits
from node.core.query import MAX_ENTITY_KEYS, MAX_TEXT, SearchParams, discovered
from node.core.record import check_behaviors, kind_name
from node.core.sealing import padded_within, seal_answer
from node.core.signing import BadSignature, open_query
from node.core.timeutil import now_ms
from node.core.types import Decision, Dissemination, Requester, ValidationError
from node.services.service import NodeService
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage import notices as notices_tx
from node.telemetry import logs
from node.wire import federation_pb2, records_pb2

log = logs.get("fcnode.federation.query")
CHUNK = 64
MAX_SKEW_MS = 30_000
MAX_WINDOW_MS = 5 * 60_000
# What one deconfliction notice keeps of the query that caused it: every write a
# peer's request causes is bounded (a notice is at most a few KiB).
NOTICE_RECORDS = 50
NOTICE_ENTITIES = 16
NOTICE_TEXT = 256
NOTICE_NAME = 128
FORWARD_MEMORY = 10_000  # queries whose forwarding reach is remembered (until their deadline)
SCAN_FACTOR = 20  # rows one answer may examine: this many times max_results


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Answer:
    records: list[records_pb2.Envelope] = field(default_factory=list)
    pointers: list[federation_pb2.Pointer] = field(default_factory=list)
    truncated: bool = False
    # What committing the answer writes (disseminations, notice, audit).
    released: list[Dissemination] = field(default_factory=list)
    restricted: list[str] = field(default_factory=list)


def deconfliction_notice(peer: str, body: federation_pb2.QueryBody,
                         record_ids: list[str]) -> dict[str, Any]:
    """The one notice a query leaves at the origin for its restricted matches:
    who asked and on what, bounded whatever the query held (NOTICE_* caps)."""
    return {"searched_by": f"{peer}/{body.user[:NOTICE_NAME]}",
            "query_id": body.query_id[:NOTICE_NAME],
            "records": record_ids[:NOTICE_RECORDS], "matched": len(record_ids),
            "entities": [k[:NOTICE_NAME] for k in body.entity_keys[:NOTICE_ENTITIES]],
            "text": body.text[:NOTICE_TEXT],
            "why": "restricted records matched another center's query; they were told "
                   "nothing"}


def params_of(body: federation_pb2.QueryBody, max_results: int) -> SearchParams:
    return SearchParams(text=body.text, entity_keys=tuple(body.entity_keys),
                        kinds=tuple(body.kinds), since_ms=body.since_ms,
                        labels=tuple(body.labels), origins=tuple(body.origins),
                        limit=max_results, any_entity=body.any_entity,
                        behaviors=tuple(body.behaviors))


class QueryAnswerer:
    def __init__(self, node: NodeService, forwarder: Forwarder | None = None) -> None:
        self.node = node
        self.forwarder = forwarder
        self.forwarded: dict[tuple[str, str], tuple[int, int]] = {}  # -> (hops left, deadline)
        self.rates = RateLimits(node.config.limits.query_rate_per_minute)
        # One "query refused" line a minute per peer (the rest counted): a peer over
        # its rate limit is refused at every call, and each was a line.
        self.refusal_logs = LogLimit()

    def check(self, peer: str, request: federation_pb2.SignedQuery) -> federation_pb2.QueryBody:
        """The query's body, checked: signed by its requester (the TLS peer, or a
        center beyond it whose key is pinned or introduced here), fresh, in
        bounds. The rate limit is per TLS peer, checked first (a hub that forwards
        is charged for what it forwards: [limits] query_rate_per_minute sizes a
        hub's budget too)."""
        limits = self.node.config.limits
        if request.ByteSize() > limits.max_query_bytes:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"query is larger than this node's max_query_bytes "
                          f"({limits.max_query_bytes})")
        self.rates.per_minute = limits.query_rate_per_minute
        if not self.rates.allow(peer, time.monotonic()):
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"rate limit: at most {limits.query_rate_per_minute} queries per "
                          "minute from one center")
        if not request.body or not request.signature:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "query is not signed")
        body = federation_pb2.QueryBody()
        try:
            body.ParseFromString(request.body)
        except DecodeError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "query body is malformed") from None
        requester = body.center
        if requester == self.node.center:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          "query names this node as its requester (a loop, or a forgery)")
        keys = self.node.keys_of(requester)
        if requester != peer and not keys:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"forwarded query from {requester[:64]!r}, whose key is neither "
                          "pinned nor introduced here")
        try:
            # Only the requester's current key: a retired one signs nothing new.
            open_query(request.body, request.signature, request.key_id,
                       self.node.current_keys_of(requester))
        except BadSignature as exc:
            if requester != peer:  # a hop may pass a query on, never speak for its requester
                raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                              f"forwarded query is not signed by {requester!r}: {exc}") from None
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"query signature: {exc}") from None
        if requester != peer and not self.node.seal_key_of(requester):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"no seal key for {requester!r} that this center believes (its "
                          "card predates sealed answers, or an introducer handed its seal key "
                          "on unsigned): a forwarded answer cannot be sealed to it")
        now = now_ms()
        if body.deadline_ms <= now:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "query has expired")
        if body.issued_ms > now + MAX_SKEW_MS or body.deadline_ms - body.issued_ms > MAX_WINDOW_MS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "query times are implausible "
                          "(issued in the future, or a deadline over five minutes)")
        if len(body.query_id) < 32:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "query id is too short")
        if body.limit > limits.max_results:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"limit {body.limit} exceeds this node's max_results "
                          f"({limits.max_results})")
        # What this node's own requester never sends: refused, not cut, so the
        # audit holds the query as it was asked.
        if len(body.text) > MAX_TEXT:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"query text is longer than {MAX_TEXT} characters")
        if len(body.entity_keys) > MAX_ENTITY_KEYS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"query has more than {MAX_ENTITY_KEYS} entity keys")
        if not (body.text or body.entity_keys or body.kinds or body.labels or body.since_ms
                or body.behaviors):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "query has no search terms")
        try:
            check_behaviors(body.behaviors)
        except ValidationError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return body

    def answer(self, conn: sqlite3.Connection, peer: str,
               body: federation_pb2.QueryBody) -> Answer:
        """The search under policy and the discovery rule (a read: it runs on a
        reader connection, never waiting behind ingest); ``commit`` then writes
        what it released."""
        node = self.node
        now = now_ms()
        limits = node.config.limits
        requester = Requester(peer, body.user, frozenset(body.user_attributes))
        limit = min(body.limit or limits.max_results, limits.max_results)
        params = params_of(body, limit)
        answer = Answer()
        released = answer.released
        restricted = answer.restricted  # this center's restricted records that matched
        unseen = 0  # restricted matches, this center's or copies of others'
        for examined, (entry, content_match) in enumerate(log_tx.matches(conn, params, now)):
            if examined >= SCAN_FACTOR * limits.max_results:
                # Rows that yield nothing (e.g. readable ones failing the text) cost
                # work too: one answer's walk is bounded whatever the store holds.
                answer.truncated = True
                break
            b = entry.body()
            decision = discovered(node.decide(b, requester), params, content_match)
            if decision is Decision.DENY:
                continue
            if decision is Decision.NOTIFY_ONLY:
                # Restricted matches have their own work limit, so a query on a
                # common entity cannot make this node walk (and note) without
                # end; what is released is bounded by the asker's limit below.
                # Stopping early sets `truncated`: "there was more", never what.
                if unseen >= limits.max_results:
                    answer.truncated = True
                    break
                # Noted whatever the asker's limit: were the answer cut here for
                # it, `truncated` would tell the asker that a restricted record
                # matched, and its origin would never learn of the hit.
                unseen += 1
                if b.origin == node.center:  # a hub's copy: its origin notes its own
                    restricted.append(b.record_id)
                continue
            # FULL records and POINTERs each get the limit: one cut for both, in
            # time order, would tell by which made it when a record the asker
            # may not read was created (node.services.service.NodeService.visible).
            if decision is Decision.FULL:
                if len(answer.records) >= limit:
                    answer.truncated = True  # a record the asker may see was left out
                    if not params.entity_keys:
                        break  # no pointer or restricted match can follow
                    continue
                answer.records.append(entry.envelope())  # type: ignore[arg-type]
            else:
                if len(answer.pointers) >= limit:
                    answer.truncated = True
                    continue
                stub = entry.signed_stub()
                if stub is None:
                    unseen += 1  # it was work all the same
                    continue  # nothing the origin signed to show: it could not be verified
                answer.pointers.append(federation_pb2.Pointer(
                    origin=b.origin, record_id=b.record_id, kind=kind_name(b),
                    contact=b.contact, stub=stub))
            released.append(Dissemination(peer, body.user, b.origin, b.record_id, b.version,
                                          b.seq, "query", decision.name))
        # Not in time order: where a pointer sits would date it (see above).
        answer.pointers.sort(key=lambda p: (p.origin, p.record_id))
        return answer

    def commit(self, conn: sqlite3.Connection, peer: str, body: federation_pb2.QueryBody,
               answer: Answer, via: str = "") -> None:
        """One short write transaction, committed before anything is sent:
        replay check (here, in the writer, so two copies of one query cannot
        both pass), egress log, at most one deconfliction notice, audit. A
        replay raises and writes nothing."""
        node = self.node
        now = now_ms()
        limits = node.config.limits
        if not fed_tx.remember_query(conn, body.query_id, peer, body.deadline_ms, now):
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "replayed query (id already seen)")
        released, restricted = answer.released, answer.restricted
        fed_tx.log_disseminations(conn, released, now)
        if restricted:
            notices_tx.deconfliction(conn, now, node.center, deconfliction_notice(
                peer, body, restricted), limits.max_notices)
        audit_tx.append(conn, node.sign_audit, now, f"{peer}/{body.user}", "query.answer", {
            "center": peer, "user": body.user, "query_id": body.query_id,
            "attributes": sorted(body.user_attributes), "text": body.text,
            "entities": list(body.entity_keys), "kinds": list(body.kinds),
            "released": [[d.origin, d.record_id, d.version, d.decision] for d in released],
            "restricted_hits": len(restricted), "truncated": answer.truncated,
            **({"via": via} if via and via != peer else {})})

    async def handle(self, peer: str, request: federation_pb2.SignedQuery,
                     context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[federation_pb2.QueryAnswer]:
        body: federation_pb2.QueryBody | None = None
        try:
            body = self.check(peer, request)
            requester = body.center
            # A replay is refused only in the write: one search's work, bounded
            # (SCAN_FACTOR), and the replayed query still gets nothing. The same
            # query reaching this node over a second path is such a replay: a
            # center answers once.
            answer = await self.node.db.read(lambda conn: self.answer(conn, requester, body))
            await self.node.db.run(lambda conn: self.commit(conn, requester, body, answer,
                                                            peer))
        except Refused as exc:
            if (body is not None and exc.code == grpc.StatusCode.ALREADY_EXISTS
                    and self.reach_further(body, request)):
                # It arrived first over a longer path, with fewer hops left: this
                # copy may reach centers that one could not. Forward only.
                relay = self.forwarder.start(peer, request, body) if self.forwarder else None
                if relay is not None:
                    try:
                        async for sealed in relay:
                            yield federation_pb2.QueryAnswer(relayed=[sealed])
                    finally:
                        await relay.aclose()
                return
            held = self.refusal_logs.take(peer, time.monotonic())
            if held is not None:
                log.warning("query refused", extra={"peer": peer, "reason": exc.reason,
                                                    "not_logged_before": held})
            await context.abort(exc.code, exc.reason)
            return
        self.reach_further(body, request)
        log.info("query answered", extra={"peer": peer, "requester": requester,
                                          "records": len(answer.records),
                                          "pointers": len(answer.pointers)})
        relay = self.forwarder.start(peer, request, body) if self.forwarder else None
        try:
            padded = requester != peer and body.pad_answers
            if requester == peer:
                for msg in self.chunks(answer, padded):
                    yield msg  # straight to the requester over its own TLS session
            else:
                # Sealed parts say how many there are (when the requester asks: an
                # older one could not open them otherwise), so a hop that drops the
                # tail is seen. The answer is in memory already: its parts too.
                msgs = list(self.chunks(answer, padded))
                parts = len(msgs) if body.count_parts else 0
                for part, msg in enumerate(msgs):
                    yield federation_pb2.QueryAnswer(relayed=[self.seal(requester, body, part,
                                                                        msg, parts)])
            if relay is not None:
                async for sealed in relay:
                    yield federation_pb2.QueryAnswer(relayed=[sealed])
        finally:
            if relay is not None:
                await relay.aclose()

    def reach_further(self, body: federation_pb2.QueryBody,
                      request: federation_pb2.SignedQuery) -> bool:
        """Note how many hops this query may still travel from here; True when
        that is more than any earlier copy of it allowed. A query flooded
        through a mesh of hubs often arrives first over the longest path (with
        the fewest hops left): without this the copy that could still reach a
        hub's spokes would be refused as a replay, and they never asked. Each
        re-forward needs strictly more hops left, so a query is forwarded at
        most MAX_HOPS times by one node. Bounded: entries live until the query's
        deadline, at most FORWARD_MEMORY of them."""
        now = now_ms()
        if len(self.forwarded) >= FORWARD_MEMORY:
            self.forwarded = {k: v for k, v in self.forwarded.items() if v[1] > now}
        key = (body.center, body.query_id)
        hops = hops_left(request, body)
        before = self.forwarded.get(key)
        if before is not None and before[0] >= hops:
            return False
        if len(self.forwarded) < FORWARD_MEMORY:
            self.forwarded[key] = (hops, body.deadline_ms)
        return before is not None

    def seal(self, requester: str, body: federation_pb2.QueryBody, part: int,
             msg: federation_pb2.QueryAnswer, parts: int = 0) -> federation_pb2.SealedAnswer:
        """One part of this node's answer, sealed to the requester and signed:
        the hubs it crosses see ciphertext, and cannot forge, alter or (with
        ``parts``, the count of this answer's parts) drop any of it unseen."""
        sealed, signature, kid = seal_answer(
            self.node.key, self.node.seal_key_of(requester), requester, body.query_id,
            self.node.center, part, msg.SerializeToString(), body.pad_answers, parts)
        return federation_pb2.SealedAnswer(center=self.node.center, part=part, sealed=sealed,
                                           signature=signature, key_id=kid,
                                           padded=body.pad_answers, parts=parts)

    def chunks(self, answer: Answer, padded: bool = False
               ) -> Iterator[federation_pb2.QueryAnswer]:
        """Parts of at most half a message each (one record alone may be more).
        ``padded``: each part is padded before it is sealed (seal_answer), which
        rounds it up to a power of two: parts then stay within the largest one
        inside half a message, or a part just over it would double past the
        message limit and the whole answer fail on the wire."""
        records, pointers = answer.records, answer.pointers
        budget = self.node.config.limits.max_message_bytes // 2
        if padded:
            budget = padded_within(budget)
        while True:
            # Each field costs its bytes, a tag and a length (8 covers both).
            n, size = 0, 8 + sum(p.ByteSize() + 8 for p in pointers[:CHUNK])
            while n < min(CHUNK, len(records)):
                more = records[n].ByteSize() + 8
                if n and size + more > budget:
                    break
                size += more
                n += 1
            msg = federation_pb2.QueryAnswer(records=records[:n], pointers=pointers[:CHUNK])
            records, pointers = records[n:], pointers[CHUNK:]
            last = not records and not pointers
            msg.truncated = answer.truncated and last
            yield msg
            if last:
                return
