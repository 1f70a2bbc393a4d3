"""Asking the network: the requesting side of a federated query.

The node signs the query (center, user, the user's attributes as this center
asserts them, a random id, a deadline), searches its own store and asks every
dialled peer at once. Results stream back as they arrive, and the last item is
a per-center summary (answered, timed out, refused, unreachable, with `dropped`
and `truncated`) so partial results never hide who did not answer.

Nothing an answering peer says is shown on its word:
- every FULL record is verified against its origin's pinned key, and judged by
  its own signed policy for this user;
- every POINTER must carry the origin's signed, content-free stub: it is
  verified like a record and only the stub's fields are shown (origin, record
  id, version, kind, contact). A pointer without a valid stub, or whose kind is
  not a content kind, or that answers a query with no entity key (pointers come
  only from entity matches), is dropped and counted;
- results are deduplicated by (origin, record id): the newest version wins, and
  FULL beats a POINTER of the same or an older version, so a lying peer cannot
  displace the origin's real pointer with its own.

A hostile answer cannot freeze the asker: the envelopes and stubs of each
message are verified in one batch on a small thread pool, never on the event
loop, and what one peer may send for one query is capped (records and pointers:
the asked limit; bytes: [limits] max_answer_bytes; messages: the limit + 1).
The excess is dropped and counted, the call is cancelled, and the summary says
`truncated`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from federation.query_forward import DEFAULT_HOPS, MAX_HOPS
from node.core.query import SearchParams
from node.core.record import body_policy, kind_name
from node.core.sealing import open_answer
from node.core.signing import BadSignature, seal_query
from node.core.timeutil import iso, now_ms
from node.core.types import Decision, Requester, ValidationError
from node.core.users import User
from node.services.service import NodeService, Visible
from node.storage import audit as audit_tx
from node.storage import log as log_tx
from node.telemetry import logs
from node.wire import federation_pb2, federation_pb2_grpc, records_pb2

log = logs.get("fcnode.federation.fanout")
T = TypeVar("T")
MIN_TIMEOUT_MS, MAX_TIMEOUT_MS = 100, 60_000
QUEUED_MESSAGES = 64  # answer messages waiting to be verified, all peers together
ChannelFor = Callable[[str], grpc.aio.Channel]
Known = Callable[[str, str], tuple[int, int, str] | None]


def timed(fn: Callable[[], T]) -> tuple[T, int]:
    started = time.monotonic()
    out = fn()
    return out, int((time.monotonic() - started) * 1000)


@dataclass
class Outcome:
    status: str = "pending"
    results: int = 0
    pointers: int = 0
    dropped: int = 0
    ms: int = 0
    reason: str = ""
    truncated: bool = False
    via: list[str] = field(default_factory=list)  # hops a relayed answer came through
    tampered: int = 0  # sealed answers relayed by this peer that failed to verify
    # A relayed answer: "complete", "parts missing" or "unknown" (see Relayed.judge).
    completeness: str = ""
    parts: int = 0  # its parts that arrived and verified
    parts_expected: int = 0  # as its center signed them (0: not counted)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "results": self.results,
                               "pointers": self.pointers, "ms": self.ms}
        if self.via:
            out["via"] = self.via
        if self.tampered:
            out["tampered"] = self.tampered
        if self.dropped:
            out["dropped"] = self.dropped
        if self.reason:
            out["reason"] = self.reason
        if self.truncated:
            out["truncated"] = True
        if self.completeness:
            out["completeness"] = self.completeness
            out["parts"] = self.parts
            out["parts_expected"] = self.parts_expected
        return out


def full_result(body: records_pb2.RecordBody, via: str) -> dict[str, Any]:
    return {"record_id": body.record_id, "origin": body.origin, "kind": kind_name(body),
            "title": body.title, "version": body.version, "tlp": body_policy(body).tlp.label,
            "created": iso(body.created_ms), "access": "FULL", "contact": body.contact,
            "entities": [{"type": e.type, "value": e.value} for e in body.entities],
            "from": via}


def pointer_result(stub: records_pb2.EntryStub, via: str) -> dict[str, Any]:
    """A POINTER as shown: only what its origin signed in the stub."""
    return {"record_id": stub.record_id, "origin": stub.origin,
            "kind": records_pb2.Kind.Name(stub.kind), "version": stub.version,
            "access": "POINTER", "contact": stub.contact, "from": via}


@dataclass
class Merger:
    """Deduplication by (origin, record id): the newest version wins, and FULL
    beats a POINTER of the same version (so also of an older one)."""

    shown: dict[tuple[str, str], tuple[int, bool]] = field(default_factory=dict)

    def admit(self, result: dict[str, Any]) -> bool:
        key = (result["origin"], result["record_id"])
        rank = (int(result.get("version", 0)), result["access"] == "FULL")
        if key in self.shown and self.shown[key] >= rank:
            return False
        self.shown[key] = rank
        return True


@dataclass
class AnswerCap:
    """What one peer may send for one query (pure): ``take`` returns the part of
    a message to keep (None: none of it) and notes what was cut."""

    items: int  # records and pointers still allowed (the asked limit)
    bytes_left: int
    messages_left: int
    dropped: int = 0
    reason: str = ""

    @property
    def cut(self) -> bool:
        return bool(self.reason)

    def take(self, answer: federation_pb2.QueryAnswer) -> federation_pb2.QueryAnswer | None:
        n = len(answer.records) + len(answer.pointers)
        if self.messages_left <= 0:
            return self._cut(n, "more answer messages than the limit needs")
        size = answer.ByteSize()
        if size > self.bytes_left:
            return self._cut(n, "answer larger than max_answer_bytes")
        self.messages_left -= 1
        self.bytes_left -= size
        if n <= self.items:
            self.items -= n
            return answer
        records = list(answer.records[:self.items])
        pointers = list(answer.pointers[:self.items - len(records)])
        self._cut(n - self.items, "more results than the limit asked")
        self.items = 0
        return federation_pb2.QueryAnswer(records=records, pointers=pointers,
                                          truncated=answer.truncated)

    def _cut(self, n: int, reason: str) -> None:
        self.dropped += n
        self.reason = self.reason or reason
        return None


@dataclass(frozen=True)
class Checked:
    """One answer message after verification: per record its verified body, per
    pointer its verified stub (None where verification failed)."""

    records: list[records_pb2.RecordBody | None]
    stubs: list[records_pb2.EntryStub | None]
    truncated: bool


@dataclass
class Relayed:
    """A center beyond the direct peers, as its sealed parts arrive: the first
    path it answered through is the only one taken (a center answers once)."""

    via: tuple[str, ...]
    cap: AnswerCap
    outcome: Outcome
    parts: set[int] = field(default_factory=set)  # part numbers that verified
    counts: set[int] = field(default_factory=set)  # each part's signed count of parts

    def judge(self) -> None:
        """Set the outcome's completeness from the parts that arrived. Complete
        only when every part the center counted (its signature binds the count)
        arrived: a hop that dropped any, the tail included, leaves it "parts
        missing"; parts with no count (a center of an older release) leave it
        "unknown". Either is reported "incomplete", never "answered"."""
        o = self.outcome
        expected = max(self.counts, default=0)
        o.parts, o.parts_expected = len(self.parts), expected
        if 0 in self.counts or not self.counts:
            o.completeness = "unknown"
            o.reason = o.reason or ("completeness unknown: the answering center's release "
                                    "does not count the parts of its answer")
        elif len(self.counts) == 1 and len(self.parts) == expected:
            o.completeness = "complete"  # every part number is below the count (open_answer)
        else:
            o.completeness = "parts missing"
            if len(self.counts) > 1:
                o.reason = o.reason or "its signed parts disagree on how many there are"
            # The count is the answering center's word, up to 2**32: the first few
            # missing numbers are found without listing them all.
            first = list(itertools.islice((i for i in range(expected) if i not in self.parts),
                                          10))
            o.reason = o.reason or (f"{expected - len(self.parts)} of {expected} answer parts "
                                    f"did not arrive (dropped on the way back): parts "
                                    f"{', '.join(map(str, first))}")
        if o.completeness != "complete" and o.status == "answered":
            o.status = "incomplete"


class QueryFanout:
    def __init__(self, node: NodeService, channel_for: ChannelFor,
                 dialled: Callable[[], list[str]],
                 seal_private: Sequence[X25519PrivateKey] | None = None) -> None:
        self.node = node
        self.seal_private = seal_private
        self.channel_for = channel_for
        self.dialled = dialled
        # Ed25519 verification releases the GIL: two threads, off the event loop.
        self._verifier = ThreadPoolExecutor(max_workers=2, thread_name_prefix="query-verify")

    def sign(self, user: User, params: SearchParams, timeout_ms: int, hops: int = DEFAULT_HOPS
             ) -> tuple[federation_pb2.SignedQuery, federation_pb2.QueryBody]:
        now = now_ms()
        body = federation_pb2.QueryBody(
            center=self.node.center, user=user.name,
            user_attributes=sorted(user.attributes), query_id=secrets.token_hex(16),
            issued_ms=now, deadline_ms=now + timeout_ms, text=params.text,
            entity_keys=list(params.entity_keys), kinds=list(params.kinds),
            since_ms=params.since_ms, labels=list(params.labels), limit=params.limit,
            origins=list(params.origins), any_entity=params.any_entity,
            behaviors=list(params.behaviors), max_hops=hops, pad_answers=True,
            count_parts=True)
        raw = body.SerializeToString(deterministic=True)
        signature, kid = seal_query(self.node.key, raw)
        return federation_pb2.SignedQuery(body=raw, signature=signature, key_id=kid,
                                          hops_left=hops - 1, path=[self.node.center]), body

    def open_relayed(self, body: federation_pb2.QueryBody,
                     sealed: federation_pb2.SealedAnswer) -> federation_pb2.QueryAnswer | None:
        """A sealed part: the answering center's signature checked against its
        pinned or introduced key, then opened with this node's key (runs on the
        verifier threads). None: a hop altered it, or it is not for this query."""
        if self.seal_private is None:
            return None
        try:
            plain = open_answer(sealed.sealed, sealed.signature, sealed.key_id,
                                self.node.current_keys_of(sealed.center), self.seal_private,
                                self.node.center, body.query_id, sealed.center, sealed.part,
                                sealed.padded, sealed.parts)
            answer = federation_pb2.QueryAnswer()
            answer.ParseFromString(plain)
        except (BadSignature, DecodeError):
            return None
        if answer.relayed:
            return None  # a center's own answer holds no relayed parts
        return answer

    def verify(self, env: records_pb2.Envelope) -> records_pb2.RecordBody | None:
        """Verify against the key its origin used at that position, then parse;
        None if it fails."""
        try:
            return self.node.verified_record(env)
        except BadSignature:
            return None

    def verify_stub(self, pointer: federation_pb2.Pointer) -> records_pb2.EntryStub | None:
        """The pointer's stub, verified against its origin's key; None if it has
        none, or it fails."""
        if not pointer.HasField("stub"):
            return None
        try:
            return self.node.verified_stub(pointer.stub)
        except BadSignature:
            return None

    def check(self, answer: federation_pb2.QueryAnswer) -> Checked:
        """Verify one message in a batch (runs on the verifier threads)."""
        return Checked([self.verify(env) for env in answer.records],
                       [self.verify_stub(p) for p in answer.pointers], answer.truncated)

    async def _ask(self, center: str, signed: federation_pb2.SignedQuery, timeout_s: float,
                   limit: int, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        started = time.monotonic()
        outcome = Outcome()
        cap = AnswerCap(limit, self.node.config.limits.max_answer_bytes, limit + 1)
        # Everything relayed through this peer shares one budget (bytes, messages).
        relay = AnswerCap(0, self.node.config.limits.max_answer_bytes,
                          (limit + 1) * max(1, len(self.node.peers)))
        try:
            call = federation_pb2_grpc.FederationStub(self.channel_for(center)).Query(
                signed, timeout=timeout_s)
            async for answer in call:
                if answer.relayed:
                    relayed = list(answer.relayed)
                    del answer.relayed[:]
                    if relay.take(federation_pb2.QueryAnswer(relayed=relayed)) is None:
                        call.cancel()
                        cap.reason = cap.reason or f"relayed answers: {relay.reason}"
                        break
                    for part in relayed:
                        await queue.put((center, part))
                    if not (answer.records or answer.pointers or answer.truncated):
                        continue
                kept = cap.take(answer)
                if kept is not None:
                    await queue.put((center, kept))
                if cap.cut:
                    call.cancel()  # the rest is not read: this peer has sent its share
                    break
            outcome.status = "answered"
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome.status = "timed out"
            elif code == grpc.StatusCode.UNAVAILABLE:
                outcome.status, outcome.reason = "unreachable", details[:160]
            else:
                outcome.status, outcome.reason = "refused", f"{code.name}: {details[:160]}"
        outcome.ms = int((time.monotonic() - started) * 1000)
        outcome.dropped, outcome.truncated = cap.dropped, cap.cut
        if cap.cut:
            outcome.reason = f"answer cut: {cap.reason}"
        await queue.put((center, outcome))

    async def run(self, user: User, params: SearchParams, timeout_ms: int,
                  centers: list[str] | None, hops: int = DEFAULT_HOPS
                  ) -> AsyncIterator[dict[str, Any]]:
        if not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS:
            raise ValidationError("timeout must be between 100ms and 60s")
        if not 1 <= hops <= MAX_HOPS:
            raise ValidationError(f"hops must be between 1 and {MAX_HOPS}")
        dialled = self.dialled()
        asked = sorted(dialled)
        include_local = True
        if centers:
            unknown = [c for c in centers if c != self.node.center and c not in dialled]
            if unknown:
                raise ValidationError(f"not a dialled peer: {', '.join(unknown)} "
                                      "(see fcnode peers list)")
            asked = sorted(c for c in centers if c != self.node.center)
            include_local = self.node.center in centers
        signed, body = self.sign(user, params, timeout_ms, hops)
        relayed: dict[str, Relayed] = {}
        direct: set[str] = set()  # peers that sent an answer of their own
        started = time.monotonic()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUED_MESSAGES)
        tasks = [asyncio.create_task(self._ask(c, signed, timeout_ms / 1000, params.limit,
                                               queue)) for c in asked]
        loop = asyncio.get_running_loop()
        merger = Merger()
        summary: dict[str, Outcome] = {c: Outcome() for c in asked}
        shown: list[list[Any]] = []
        try:
            if include_local:
                # Timed inside the database call: awaiting it lets the peer calls
                # start, and that time is not this node's answer.
                local, local_ms = await self.node.db.read(lambda conn: timed(
                    lambda: self.node.visible(conn, params, self.node.requester(user),
                                              now_ms())))
                mine = summary[self.node.center] = Outcome("answered", ms=local_ms)
                for v in local:
                    result = self._local_result(v)
                    if merger.admit(result):
                        mine.results += result["access"] == "FULL"
                        mine.pointers += result["access"] == "POINTER"
                        shown.append([result["origin"], result["record_id"],
                                      result.get("version", 0), result["access"]])
                        yield result
            pending = len(tasks)
            while pending:
                center, item = await queue.get()
                if isinstance(item, Outcome):
                    pending -= 1
                    done = summary[center]
                    item.results, item.pointers = done.results, done.pointers
                    item.dropped += done.dropped
                    item.tampered = done.tampered
                    item.truncated = item.truncated or done.truncated
                    summary[center] = item
                    continue
                if isinstance(item, federation_pb2.SealedAnswer):
                    opened = await self._relayed_part(center, item, body, relayed, direct,
                                                      summary, params.limit, started, loop)
                    if opened is None:
                        continue
                    hop, (center, item) = center, opened
                else:
                    direct.add(center)
                    hop = ""
                checked = await loop.run_in_executor(self._verifier, self.check, item)
                ids = {(x.origin, x.record_id) for x in (*checked.records, *checked.stubs)
                       if x is not None}
                states = {} if not ids else await self.node.db.read(
                    lambda conn, ids=ids: {(o, r): log_tx.record_state(conn, o, r)
                                           for o, r in ids})
                known = lambda o, r, s=states: s.get((o, r))  # noqa: E731
                outcome = relayed[center].outcome if hop else summary[center]
                for result in self._remote_results(center, checked, outcome, known,
                                                   self.node.requester(user),
                                                   bool(params.entity_keys)):
                    if hop:
                        result["via"] = list(relayed[center].via)
                    if merger.admit(result):
                        shown.append([result["origin"], result["record_id"],
                                      result.get("version", 0), result["access"]])
                        yield result
        finally:
            for t in tasks:
                t.cancel()
        for c, r in relayed.items():
            if c not in direct:
                # Its answer came through others (the direct call was refused as
                # the duplicate, or only forwarded): say so, and whether all of it came.
                r.judge()
                summary[c] = r.outcome
        answered = {c for c, o in summary.items() if o.status == "answered"}
        not_answered = sorted(set(self.node.peers) - answered)
        report = {c: o.as_dict() for c, o in sorted(summary.items())}
        await self.node.db.run(lambda conn: audit_tx.append(
            conn, self.node.sign_audit, now_ms(), user.name, "query", {
                "query_id": body.query_id, "text": body.text,
                "entities": list(body.entity_keys), "kinds": list(body.kinds),
                "centers": asked, "results": shown, "hops": hops,
                "summary": {c: o["status"] for c, o in report.items()}}))
        yield {"summary": report, "not_answered": not_answered, "query_id": body.query_id}

    async def _relayed_part(self, hop: str, sealed: federation_pb2.SealedAnswer,
                            body: federation_pb2.QueryBody, relayed: dict[str, Relayed],
                            direct: set[str], summary: dict[str, Outcome], limit: int,
                            started: float, loop: asyncio.AbstractEventLoop
                            ) -> tuple[str, federation_pb2.QueryAnswer] | None:
        """One sealed part relayed by ``hop``: (answering center, its opened
        answer), or None when it is dropped. A part that does not verify is
        counted against the hop that delivered it (a hop that tampers is seen)."""
        center = sealed.center
        if center == self.node.center or center in direct:
            return None  # a center answers once: directly here, so not again
        via = (*sealed.via, ) or (hop,)
        known = relayed.get(center)
        if known is not None and known.via != via:
            return None  # the same center over a second path: its first answer stands
        opened = await loop.run_in_executor(self._verifier, self.open_relayed, body, sealed)
        if opened is None:
            summary[hop].dropped += 1
            summary[hop].tampered += 1
            if summary[hop].tampered == 1:
                # The first a hop and query: a hop may send thousands of tiny parts
                # within its relay budget, each a line; the summary (and the audit
                # entry of the query) counts them all as `tampered`.
                log.warning("relayed answer failed verification", extra={
                    "peer": hop, "center": center[:64], "query_id": body.query_id,
                    "note": "further failures from this hop for this query are counted, "
                            "not logged"})
            return None
        if known is None:
            known = relayed[center] = Relayed(via, AnswerCap(
                limit, self.node.config.limits.max_answer_bytes, limit + 1),
                Outcome("answered", via=list(via)))
            known.outcome.ms = int((time.monotonic() - started) * 1000)
        if sealed.part in known.parts:
            # A part number already taken (a hop repeating the center's own bytes):
            # not taken again, or the repeats would use up the center's share of
            # this answer (messages, bytes) and its later parts, all arrived, would
            # be cut as if by the asker's own limit.
            return None
        # Counted before this node's own cap: what arrived, whether or not it is shown.
        known.parts.add(sealed.part)
        known.counts.add(sealed.parts)
        kept = known.cap.take(opened)
        known.outcome.dropped, known.outcome.truncated = known.cap.dropped, known.cap.cut
        if kept is None:
            return None
        return center, kept

    def _local_result(self, v: Visible) -> dict[str, Any]:
        if v.decision is Decision.FULL:
            return full_result(v.body, self.node.center)
        return {**v.summary(), "version": v.body.version, "from": self.node.center}

    def _remote_results(self, center: str, answer: Checked, outcome: Outcome, known: Known,
                        requester: Requester, pointers_asked: bool) -> list[dict[str, Any]]:
        out = []
        now = now_ms()
        for body in answer.records:
            if body is None or body.kind not in log_tx.CONTENT:
                outcome.dropped += 1
                continue
            # The record's own signed policy is judged here too: a buggy or hostile
            # answering node cannot hand content to a user it does not allow.
            if self.node.decide(body, requester) is not Decision.FULL:
                outcome.dropped += 1
                continue
            if self._stale(known, body.origin, body.record_id, body.version):
                continue
            outcome.results += 1
            out.append(full_result(body, center))
        for stub in answer.stubs:
            if stub is None or stub.kind not in log_tx.CONTENT or not pointers_asked:
                # Unsigned, forged, or not a record; or the query had no entity key,
                # so no honest node answers it with a pointer: a real stub relayed
                # by a hostile peer must not turn words into "the origin holds one".
                outcome.dropped += 1
                continue
            if stub.expires_ms <= now or self._stale(known, stub.origin, stub.record_id,
                                                      stub.version):
                continue
            outcome.pointers += 1
            out.append(pointer_result(stub, center))
        outcome.truncated = outcome.truncated or answer.truncated
        return out

    @staticmethod
    def _stale(known: Known, origin: str, record_id: str, version: int) -> bool:
        """We hold a newer version, or know it was withdrawn since."""
        held = known(origin, record_id)
        return held is not None and (held[1] > version
                                     or (held[2] != "active" and held[1] >= version))
