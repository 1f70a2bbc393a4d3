"""Asking the network: the requesting side of a federated query.

The node signs the query (center, user, the user's attributes as this center
asserts them, a random id, a deadline), searches its own store and asks every
dialled peer at once. Results stream back as they arrive: every FULL record is
verified against its origin's pinned key before it is shown (a bad one is
dropped and counted), results are deduplicated by (origin, record id), newest
version wins, and the last item is a per-center summary (answered, timed out,
refused, unreachable) so partial results never hide who did not answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from node.query import SearchParams
from node.record import body_policy, kind_name
from node.service import NodeService, Visible
from node.signing import BadSignature, open_record, seal_query
from node.storage import audit as audit_tx
from node.storage import log as log_tx
from node.timeutil import iso, now_ms
from node.types import Decision, Requester, ValidationError
from node.users import User
from node.wire import federation_pb2, federation_pb2_grpc, records_pb2

T = TypeVar("T")
MIN_TIMEOUT_MS, MAX_TIMEOUT_MS = 100, 60_000
ChannelFor = Callable[[str], grpc.aio.Channel]
Known = Callable[[str, str], tuple[int, int, str] | None]


def timed(fn: Callable[[], T]) -> tuple[T, int]:
    started = time.monotonic()
    out = fn()
    return out, int((time.monotonic() - started) * 1000)


def parse_unverified(env: records_pb2.Envelope) -> records_pb2.RecordBody | None:
    """Only to look up local state before verifying; never shown."""
    body = records_pb2.RecordBody()
    try:
        body.ParseFromString(env.payload)
    except DecodeError:
        return None
    return body


@dataclass
class Outcome:
    status: str = "pending"
    results: int = 0
    pointers: int = 0
    dropped: int = 0
    ms: int = 0
    reason: str = ""
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "results": self.results,
                               "pointers": self.pointers, "ms": self.ms}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.reason:
            out["reason"] = self.reason
        if self.truncated:
            out["truncated"] = True
        return out


def full_result(body: records_pb2.RecordBody, via: str) -> dict[str, Any]:
    return {"record_id": body.record_id, "origin": body.origin, "kind": kind_name(body),
            "title": body.title, "version": body.version, "tlp": body_policy(body).tlp.label,
            "created": iso(body.created_ms), "access": "FULL", "contact": body.contact,
            "entities": [{"type": e.type, "value": e.value} for e in body.entities],
            "from": via}


def pointer_result(p: federation_pb2.Pointer, via: str) -> dict[str, Any]:
    return {"record_id": p.record_id, "origin": p.origin, "kind": p.kind,
            "access": "POINTER", "contact": p.contact, "from": via}


@dataclass
class Merger:
    """Deduplication by (origin, record id): newest version wins; a POINTER is
    shown only for a record not already shown in full."""

    shown: dict[tuple[str, str], int] = field(default_factory=dict)  # version, 0 = pointer

    def admit(self, result: dict[str, Any]) -> bool:
        key = (result["origin"], result["record_id"])
        version = result.get("version", 0) if result["access"] == "FULL" else 0
        if key in self.shown and self.shown[key] >= version:
            return False
        self.shown[key] = version
        return True


class QueryFanout:
    def __init__(self, node: NodeService, channel_for: ChannelFor,
                 dialled: Callable[[], list[str]]) -> None:
        self.node = node
        self.channel_for = channel_for
        self.dialled = dialled

    def sign(self, user: User, params: SearchParams, timeout_ms: int
             ) -> tuple[federation_pb2.SignedQuery, federation_pb2.QueryBody]:
        now = now_ms()
        body = federation_pb2.QueryBody(
            center=self.node.center, user=user.name,
            user_attributes=sorted(user.attributes), query_id=secrets.token_hex(16),
            issued_ms=now, deadline_ms=now + timeout_ms, text=params.text,
            entity_keys=list(params.entity_keys), kinds=list(params.kinds),
            since_ms=params.since_ms, labels=list(params.labels), limit=params.limit,
            origins=list(params.origins), any_entity=params.any_entity)
        raw = body.SerializeToString(deterministic=True)
        signature, kid = seal_query(self.node.key, raw)
        return federation_pb2.SignedQuery(body=raw, signature=signature, key_id=kid), body

    def verify(self, env: records_pb2.Envelope) -> records_pb2.RecordBody | None:
        """Verify against the signer's pinned key, then parse; None if it fails."""
        origin = self.node.signer_of(env.key_id)
        if origin is None:
            return None
        try:
            body = open_record(env, self.node.keys_of(origin))
        except BadSignature:
            return None
        return body if body.origin == origin else None

    async def _ask(self, center: str, signed: federation_pb2.SignedQuery, timeout_s: float,
                   queue: asyncio.Queue[tuple[str, Any]]) -> None:
        started = time.monotonic()
        outcome = Outcome()
        try:
            call = federation_pb2_grpc.FederationStub(self.channel_for(center)).Query(
                signed, timeout=timeout_s)
            async for answer in call:
                await queue.put((center, answer))
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
        await queue.put((center, outcome))

    async def run(self, user: User, params: SearchParams, timeout_ms: int,
                  centers: list[str] | None) -> AsyncIterator[dict[str, Any]]:
        if not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS:
            raise ValidationError("timeout must be between 100ms and 60s")
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
        signed, body = self.sign(user, params, timeout_ms)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        tasks = [asyncio.create_task(self._ask(c, signed, timeout_ms / 1000, queue))
                 for c in asked]
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
                    item.dropped, item.truncated = done.dropped, done.truncated
                    summary[center] = item
                    continue
                states = {} if not item.records else await self.node.db.read(
                    lambda conn, a=item: {
                        (b.origin, b.record_id): log_tx.record_state(conn, b.origin,
                                                                     b.record_id)
                        for b in map(parse_unverified, a.records) if b is not None})
                known = lambda o, r, s=states: s.get((o, r))  # noqa: E731
                for result in self._remote_results(center, item, summary[center], known,
                                                   self.node.requester(user)):
                    if merger.admit(result):
                        shown.append([result["origin"], result["record_id"],
                                      result.get("version", 0), result["access"]])
                        yield result
        finally:
            for t in tasks:
                t.cancel()
        report = {c: o.as_dict() for c, o in sorted(summary.items())}
        await self.node.db.run(lambda conn: audit_tx.append(
            conn, self.node.sign_audit, now_ms(), user.name, "query", {
                "query_id": body.query_id, "text": body.text,
                "entities": list(body.entity_keys), "kinds": list(body.kinds),
                "centers": asked, "results": shown,
                "summary": {c: o["status"] for c, o in report.items()}}))
        yield {"summary": report, "query_id": body.query_id}

    def _local_result(self, v: Visible) -> dict[str, Any]:
        if v.decision is Decision.FULL:
            return full_result(v.body, self.node.center)
        return {**v.summary(), "from": self.node.center}

    def _remote_results(self, center: str, answer: federation_pb2.QueryAnswer,
                        outcome: Outcome, known: Known, requester: Requester
                        ) -> list[dict[str, Any]]:
        out = []
        for env in answer.records:
            body = self.verify(env)
            if body is None or body.kind not in log_tx.CONTENT:
                outcome.dropped += 1
                continue
            # The record's own signed policy is judged here too: a buggy or hostile
            # answering node cannot hand content to a user it does not allow.
            if self.node.decide(body, requester) is not Decision.FULL:
                outcome.dropped += 1
                continue
            held = known(body.origin, body.record_id)
            if held is not None and (held[1] > body.version
                                     or (held[2] != "active" and held[1] >= body.version)):
                continue  # we hold a newer version, or know it was withdrawn since
            outcome.results += 1
            out.append(full_result(body, center))
        for p in answer.pointers:
            outcome.pointers += 1
            out.append(pointer_result(p, center))
        outcome.truncated = outcome.truncated or answer.truncated
        return out
