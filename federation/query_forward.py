"""Forwarding a federated query beyond this node's direct peers.

A node that answered a query (signature checked against the requester's pinned
or introduced key, not seen before: node answers once per (requester, query id))
passes it on to its dialled peers, unchanged but for the unsigned routing fields:
`hops_left` one less (capped by the signed `max_hops`), and itself appended to
`path`. Centers on the path, the peer it came from and the requester are not
asked. What comes back is only sealed answers (SealedAnswer): each center beyond
a hop seals its own answer to the requester, so this node passes back ciphertext
it cannot read, adding itself to `via`. Plain records or pointers from a
forwarded call are never relayed (an honest node never sends them to a hop), and
what one forwarded call may send back is capped ([limits] max_answer_bytes, and
a message count), so a hostile node downstream cannot make a hub buffer or relay
without end. Amplification is bounded by the hop limit, by de-duplication at
every node, and by each node's dialled set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from node.core.timeutil import now_ms
from node.services.service import NodeService
from node.telemetry import logs
from node.wire import federation_pb2, federation_pb2_grpc

log = logs.get("fcnode.federation.forward")
DEFAULT_HOPS = 3
MAX_HOPS = 6
HOP_MARGIN_MS = 100  # left to each hop to pass back what arrived just before the deadline
MIN_FORWARD_MS = 100
MAX_PATH = 16
QUEUED = 64
MESSAGES_PER_CENTER = 64  # relayed messages one forwarded call may send, per known center

ChannelFor = Callable[[str], grpc.aio.Channel]


def hops_left(request: federation_pb2.SignedQuery, body: federation_pb2.QueryBody) -> int:
    """How many more hops this node may forward the query: the unsigned counter,
    never above what the requester signed."""
    return max(0, min(request.hops_left, body.max_hops - 1, MAX_HOPS - 1))


class Forwarder:
    def __init__(self, node: NodeService, channel_for: ChannelFor,
                 dialled: Callable[[], list[str]]) -> None:
        self.node = node
        self.channel_for = channel_for
        self.dialled = dialled

    def targets(self, peer: str, request: federation_pb2.SignedQuery,
                body: federation_pb2.QueryBody) -> list[str]:
        if hops_left(request, body) <= 0 or len(request.path) >= MAX_PATH:
            return []
        skip = {peer, body.center, self.node.center, *request.path}
        return [c for c in self.dialled() if c not in skip]

    def start(self, peer: str, request: federation_pb2.SignedQuery,
              body: federation_pb2.QueryBody
              ) -> AsyncIterator[federation_pb2.SealedAnswer] | None:
        targets = self.targets(peer, request, body)
        timeout_ms = body.deadline_ms - now_ms() - HOP_MARGIN_MS
        if not targets or timeout_ms < MIN_FORWARD_MS:
            return None
        onward = federation_pb2.SignedQuery(
            body=request.body, signature=request.signature, key_id=request.key_id,
            hops_left=hops_left(request, body) - 1,
            path=[*request.path, *([peer] if peer not in request.path else []),
                  self.node.center])
        return self._relay(targets, onward, body, timeout_ms / 1000)

    async def _relay(self, targets: list[str], onward: federation_pb2.SignedQuery,
                     body: federation_pb2.QueryBody, timeout_s: float
                     ) -> AsyncIterator[federation_pb2.SealedAnswer]:
        queue: asyncio.Queue[federation_pb2.SealedAnswer | None] = asyncio.Queue(QUEUED)
        not_back = {*onward.path, body.center}
        tasks = [asyncio.create_task(self._ask(c, onward, timeout_s, not_back, queue))
                 for c in targets]
        try:
            pending = len(tasks)
            while pending:
                item = await queue.get()
                if item is None:
                    pending -= 1
                    continue
                item.via.append(self.node.center)
                yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _ask(self, center: str, onward: federation_pb2.SignedQuery, timeout_s: float,
                   not_back: set[str],
                   queue: asyncio.Queue[federation_pb2.SealedAnswer | None]) -> None:
        limits = self.node.config.limits
        bytes_left = limits.max_answer_bytes
        messages_left = MESSAGES_PER_CENTER * max(1, len(self.node.peers))
        try:
            call = federation_pb2_grpc.FederationStub(self.channel_for(center)).Query(
                onward, timeout=timeout_s)
            async for answer in call:
                messages_left -= 1
                bytes_left -= answer.ByteSize()
                if messages_left < 0 or bytes_left < 0:
                    call.cancel()
                    log.warning("forwarded answer cut", extra={"peer": center})
                    break
                for sealed in answer.relayed:
                    if sealed.center in not_back or len(sealed.via) >= MAX_PATH:
                        continue  # nonsense routing: never passed on
                    await queue.put(sealed)
        except grpc.aio.AioRpcError as exc:
            # Another path got there first (ALREADY_EXISTS), or the peer is away:
            # the requester's summary names who did not answer.
            log.info("forwarded query not answered", extra={
                "peer": center, "code": exc.code().name})
        except KeyError:
            pass  # the link went away (peer removed) between choosing and dialling
        await queue.put(None)  # not when cancelled: nobody reads the queue then
