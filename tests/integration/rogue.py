"""A hand-driven peer for tests: its own keys and a Federation server in the test
process, so a test can send exactly the envelopes it wants (tampered, forked,
replayed) to a real node over real mutual TLS."""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.config import keys
from node.config.identity import IdentityCard, parse_card
from node.core.signing import (
    INTRODUCTIONS_DOMAIN,
    entry_hash,
    key_id,
    raw_public,
    seal_query,
    seal_record,
    sign,
    sign_seal_key,
)
from node.devnet import free_port
from node.wire import federation_pb2, federation_pb2_grpc, records_pb2


class Rogue(federation_pb2_grpc.FederationServicer):
    def __init__(self, root: Path, center: str, cert_days: int = 30) -> None:
        self.center = center
        d = root / f"rogue-{center}"
        d.mkdir()
        self.signing = keys.generate_signing_key(d / "signing.key")
        self.seal = X25519PrivateKey.generate()  # in its card: sealed answers and hits
        keys.generate_tls(d / "tls.key", d / "tls.crt", center, days=cert_days)
        self.tls = keys.load_tls(d / "tls.key", d / "tls.crt")
        self.port = free_port()
        self.items: list[federation_pb2.LogItem] = []
        self.heads: dict[str, int] = {}  # reported on the batch (claims, not proof)
        self.heartbeats = 0  # more batches of heads alone after the first, at once
        self.repeats = 0  # the first batch sent again this many times, at once (a flood)
        self.requests: list[object] = []
        self.answers: list[records_pb2.Envelope] = []
        self.pointers: list[federation_pb2.Pointer] = []  # sent with `answers`
        self.flood: tuple[federation_pb2.QueryAnswer, int] | None = None  # (message, times)
        # A forwarding hop: (listen, card) of the node it passes queries on to, and
        # what it does to each sealed answer on the way back.
        self.relay_to: tuple[str, str] | None = None
        self.tamper: Callable[[federation_pb2.SealedAnswer], None] | None = None
        # ... and which of the sealed parts it passes back at all (all of them: None).
        self.passes: Callable[[list[federation_pb2.SealedAnswer]],
                              list[federation_pb2.SealedAnswer]] | None = None
        self.relayed_bytes: list[bytes] = []  # every answer it passed back, as it saw it
        self.introduces: list[tuple[str, list[str]]] = []  # (card line, via) it serves
        self.introductions_served = 0
        # Network watches: the standing sets peers sent it, and the hit batches it
        # serves to whoever pulls (a test puts them there, tampered or not).
        self.standing_sets: list[federation_pb2.SignedStandingSet] = []
        self.hit_batches: dict[str, queue.Queue[federation_pb2.WatchHitBatch]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def card(self) -> IdentityCard:
        seal = self.seal.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return IdentityCard(self.center, f"127.0.0.1:{self.port}",
                            raw_public(self.signing.public_key()), self.tls.fingerprint,
                            f"Rogue {self.center}", keys.cert_der(self.tls.cert_pem),
                            seal, sign_seal_key(self.signing, self.center, seal))

    def body(self, seq: int, prev: bytes, title: str, audience: Iterable[str] = ("members",),
             record_id: str | None = None, version: int = 1) -> records_pb2.RecordBody:
        return records_pb2.RecordBody(
            origin=self.center, seq=seq, prev=prev, record_id=record_id or f"r{seq}",
            version=version, created_ms=1_700_000_000_000 + seq,
            expires_ms=4_000_000_000_000, kind=records_pb2.BULLETIN, title=title,
            policy=records_pb2.AccessPolicy(tlp=records_pb2.GREEN, audience=list(audience),
                                            discoverability=records_pb2.POINTER, relay=True))

    def item(self, body: records_pb2.RecordBody) -> federation_pb2.LogItem:
        env = seal_record(self.signing, body)
        return federation_pb2.LogItem(origin=body.origin, seq=body.seq,
                                      hash=entry_hash(env.payload), envelope=env)

    def chain(self, titles: list[str], **kw) -> list[federation_pb2.LogItem]:
        out, prev = [], b""
        for i, title in enumerate(titles, start=1):
            it = self.item(self.body(i, prev, title, **kw))
            prev = it.hash
            out.append(it)
        return out

    # -- server ------------------------------------------------------------------
    async def Replicate(self, request, context):
        self.requests.append(request)
        cursors = dict(request.cursors)
        batch = federation_pb2.ReplicateBatch(
            items=[i for i in self.items if i.seq > cursors.get(i.origin, 0)],
            heads=self.heads)
        yield batch
        for _ in range(self.repeats):
            yield batch
        for _ in range(self.heartbeats):
            yield federation_pb2.ReplicateBatch(heads=self.heads)
        await asyncio.sleep(3600)

    async def Query(self, request, context):
        self.requests.append(request)
        if self.relay_to is not None:
            for answer in await asyncio.to_thread(self._forward, request):
                yield answer
            return
        if self.flood is not None:
            message, times = self.flood
            for _ in range(times):
                yield message
            return
        yield federation_pb2.QueryAnswer(records=self.answers, pointers=self.pointers)

    async def SetStanding(self, request, context):
        self.standing_sets.append(request)
        body = federation_pb2.StandingSet.FromString(request.body)
        return federation_pb2.StandingReply(accepted=len(body.queries),
                                            offered=len(body.queries))

    def hits_for(self, center: str) -> queue.Queue[federation_pb2.WatchHitBatch]:
        return self.hit_batches.setdefault(center, queue.Queue())

    async def WatchHits(self, request, context):
        # Each puller (named by its certificate) gets the batches put for it.
        names = context.auth_context().get("x509_subject_alternative_name") or [b""]
        batches = self.hits_for(names[0].decode())
        while True:
            try:
                yield batches.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.05)

    def serve(self, trusted_card_line: str) -> Rogue:
        trusted = parse_card(trusted_card_line)
        ready = threading.Event()

        async def main() -> None:
            self._server = grpc.aio.server()
            federation_pb2_grpc.add_FederationServicer_to_server(self, self._server)
            creds = grpc.ssl_server_credentials(
                [(self.tls.key_pem, self.tls.cert_pem)], root_certificates=trusted.tls_cert_pem,
                require_client_auth=True)
            self._server.add_secure_port(f"127.0.0.1:{self.port}", creds)
            await self._server.start()
            ready.set()
            await self._server.wait_for_termination()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(10)
        if self._thread:
            self._thread.join(10)

    async def Introductions(self, request, context):
        self.introductions_served += 1
        body = federation_pb2.IntroductionList(
            center=self.center, issued_ms=int(time.time() * 1000),
            cards=[federation_pb2.IntroducedCard(card=c, via=v) for c, v in self.introduces])
        raw = body.SerializeToString()
        return federation_pb2.SignedIntroductions(
            body=raw, signature=sign(self.signing, INTRODUCTIONS_DOMAIN, raw),
            key_id=key_id(self.signing.public_key()))

    def _forward(self, request: federation_pb2.SignedQuery
                 ) -> list[federation_pb2.QueryAnswer]:
        assert self.relay_to is not None
        onward = federation_pb2.SignedQuery()
        onward.CopyFrom(request)
        onward.hops_left = max(0, request.hops_left - 1)
        onward.path.append(self.center)
        _, answers = self.ask(*self.relay_to, onward)
        self.relayed_bytes += [a.SerializeToString() for a in answers]
        for a in answers:
            for sealed in a.relayed:
                if self.tamper is not None:
                    self.tamper(sealed)
                sealed.via.append(self.center)
        if self.passes is not None:
            kept = self.passes([sealed for a in answers for sealed in a.relayed])
            answers = [federation_pb2.QueryAnswer(relayed=[sealed]) for sealed in kept]
        return answers

    def signed_query(self, **fields: object) -> federation_pb2.SignedQuery:
        """A query signed with this rogue's key: fresh, a random id, ``fields`` set."""
        now = int(time.time() * 1000)
        body = federation_pb2.QueryBody(center=self.center, user="u",
                                        query_id=secrets.token_hex(16), issued_ms=now,
                                        deadline_ms=now + 10_000)
        for k, v in fields.items():
            if isinstance(v, (list, tuple)):
                getattr(body, k).extend(v)
            else:
                setattr(body, k, v)
        raw = body.SerializeToString()
        sig, kid = seal_query(self.signing, raw)
        return federation_pb2.SignedQuery(body=raw, signature=sig, key_id=kid)

    def ask(self, node_listen: str, node_card: str, query: federation_pb2.SignedQuery
            ) -> tuple[grpc.StatusCode, list[federation_pb2.QueryAnswer]]:
        """Send a query to a real node over mutual TLS: its status and answers."""
        with self.channel(node_listen, node_card) as ch:
            try:
                answers = list(federation_pb2_grpc.FederationStub(ch).Query(query, timeout=10))
                return grpc.StatusCode.OK, answers
            except grpc.RpcError as exc:
                return exc.code(), []

    def channel(self, target: str, server_card: str) -> grpc.Channel:
        """A client channel presenting this rogue's certificate."""
        card = parse_card(server_card)
        creds = grpc.ssl_channel_credentials(card.tls_cert_pem, self.tls.key_pem,
                                             self.tls.cert_pem)
        return grpc.secure_channel(target, creds,
                                   options=[("grpc.ssl_target_name_override", card.center)])

    def set_standing(self, node_listen: str, node_card: str,
                     req: federation_pb2.SignedStandingSet) -> grpc.StatusCode:
        """Send ``req`` to a node's SetStanding as this rogue; the status it got
        (a pin just added applies to the node's listener within a moment: retried)."""
        deadline = time.monotonic() + 15
        while True:
            with self.channel(node_listen, node_card) as ch:
                try:
                    federation_pb2_grpc.FederationStub(ch).SetStanding(req, timeout=10)
                    return grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        return exc.code()
            time.sleep(0.3)
