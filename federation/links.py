"""Per-peer replication links: one task per dialled peer that subscribes, ingests
and, on any failure, backs off with jitter and catches up from its cursors.

A slow or dead peer only ever stalls its own task: publishing, search and the
other peers go on (DESIGN.md section 6).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federation.backoff import Backoff
from federation.ingest import WRONG_KEY, Checked, IngestResult, check_items, store_batch
from federation.ratelimit import LogLimit
from federation.tls import PinnedTls
from federation.transport.client import open_channel, stub
from node.config.peers import Peer
from node.core.keyhistory import AnnouncedCert, KeyHistory, Rotation, SealAnnouncement, learn
from node.core.recovery import HELD_CHOICE, Held, OwnEntry, own_entry
from node.core.sealing import copy_budget
from node.core.timeutil import iso, now_ms
from node.services.service import NodeService
from node.services.tasks import cancel_and_wait
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import keys as keys_tx
from node.storage import log as log_tx
from node.storage import recovery as recovery_tx
from node.telemetry import logs, metrics
from node.wire import federation_pb2

log = logs.get("fcnode.federation.link")
# Batches read and being verified or verified, waiting for storage (256 items each;
# a batch is at most max_message_bytes, so this bounds the memory a peer can fill).
# Two groups of what a peer sends per read (its GROUP of 8): the storing side never
# runs dry while the peer reads its next group.
PIPELINE_DEPTH = 16
# Verified batches stored in one write transaction, at most: grouping saves
# fsyncs. A user's write (a search's audit entry) does not wait for the whole
# transaction: it joins it after the part of YIELD_EVERY items in progress, and
# that commit makes it durable (Database.run_steps). Before that yield, a group of
# 8 gave search p99 ~600 ms during a 20,000-record catch-up, 2 gave 100-340 ms;
# parts of 64 with a commit of their own for the user's write, 50-82 ms; parts of
# 32 joined, 38-46 ms (idle 2-core machine, 3 runs each; ingest ~7% slower).
STORE_GROUP = 4
YIELD_EVERY = 32
# A batch's verification (started when it arrived, so that the next batches are
# read and verified while this one is stored), and the peer's head of this
# node's own log.
Verified = tuple["asyncio.Future[list[Checked]] | None", int | None]


@dataclass
class LinkState:
    center: str
    state: str = "connecting"  # connecting | connected | backing off | refused | unreachable
    last_contact_ms: int = 0
    error: str = ""
    heads: dict[str, int] = field(default_factory=dict)
    received: int = 0
    own_head: int | None = None  # the peer's head of this node's own log, if reported

    def as_dict(self, cursors: dict[str, int]) -> dict[str, object]:
        behind = {o: max(0, h - cursors.get(o, 0)) for o, h in self.heads.items()}
        return {"center": self.center, "state": self.state,
                "last_contact": iso(self.last_contact_ms), "error": self.error,
                "received": self.received, "behind": behind}


def classify_error(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
        return "refused", details
    if "refused" in details.lower() and "connect" in details.lower():
        return "unreachable", "connection refused"
    if any(h in details for h in ("Socket closed", "SSL", "handshake", "Handshake")):
        return "refused", "TLS handshake failed (is this node pinned there?)"
    return "backing off", f"{exc.code().name}: {details[:120]}"


def raise_if_cancelling() -> None:
    """End a retry loop that was told to stop. A grpc.aio call that fails (the
    peer's UNAVAILABLE: "node shutting down") at the moment its task is cancelled
    hands the task the RPC error instead of CancelledError; the cancel request is
    then left unanswered, and a loop that retries on errors would dial on forever
    while stop() waits for it (a daemon stopped with its peers kept running)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PeerLink:
    def __init__(self, node: NodeService, tls: PinnedTls, peer: Peer, pool: Executor,
                 on_change: Callable[[], None],
                 on_rewind: Callable[[], None] = lambda: None,
                 on_corrected: Callable[[dict[str, int]], None] = lambda c: None,
                 on_keys: Callable[[list[Rotation], list[AnnouncedCert],
                                           list[SealAnnouncement]], None]
                 = lambda r, c, s: None,
                 seal_private: Sequence[X25519PrivateKey] | None = None,
                 on_forked: Callable[[], None] = lambda: None) -> None:
        self.node = node
        self.tls = tls
        self.peer = peer
        self.pool = pool
        self.on_change = on_change
        self.on_rewind = on_rewind
        self.on_corrected = on_corrected
        self.on_keys = on_keys
        self.on_forked = on_forked  # origins newly quarantined (NodeService.forked)
        self.seal_private = seal_private  # opens copies sealed to this center
        self._session_task: asyncio.Task[None] | None = None
        self._resubscribe = False
        # A claimed head of our own log beyond ours: when this link last asked the
        # peer again for it (monotonic; see _store), so a claim costs one new stream
        # a minute at most.
        self._asked_own_at: float | None = None
        self.drop_logs = LogLimit()  # 'rejected entries', 'sealed copies dropped'
        self.state = LinkState(peer.center)
        self.backoff = Backoff()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.peer.center}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._channel is not None:
            await self._channel.close()

    def wanted_origins(self) -> list[str]:
        return sorted(c for c in self.node.peers if c != self.node.center)

    def resubscribe(self) -> None:
        """End the current stream and subscribe again from the stored cursors, now.
        The serving side keeps a stream's cursors in memory: after this node moved
        its cursors back (a false placeholder was dropped), only a new stream makes
        the peer send those positions again."""
        if self._session_task is not None and not self._session_task.done():
            self._resubscribe = True
            self._session_task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                self._session_task = asyncio.create_task(self._session())
                await self._session_task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if self._resubscribe and not (me is not None and me.cancelling()):
                    self._resubscribe = False
                    log.info("replication link resubscribes from its cursors",
                             extra={"peer": self.peer.center})
                    continue
                raise
            except grpc.aio.AioRpcError as exc:
                self.state.state, self.state.error = classify_error(exc)
            except Exception as exc:  # a bug must not kill the link for good
                log.exception("replication link failed", extra={"peer": self.peer.center})
                self.state.state, self.state.error = "backing off", type(exc).__name__
            raise_if_cancelling()
            self.node.recovery.down(self.peer.center)
            delay = self.backoff.next_delay()
            log.info("replication link down", extra={
                "peer": self.peer.center, "state": self.state.state,
                "reason": self.state.error, "retry_in_s": round(delay, 2)})
            await asyncio.sleep(delay)

    def channel(self) -> grpc.aio.Channel:
        """The one channel to this peer: replication and queries share it."""
        if self._channel is None:
            self._channel = open_channel(self.tls, self.peer, self.node.config.limits)
        return self._channel

    async def _session(self) -> None:
        center = self.peer.center
        own = self.node.center
        recovering = self.node.recovery.active

        def read(c: sqlite3.Connection) -> tuple[dict[str, int], int]:
            head = log_tx.head(c, own)[0]
            hint = log_tx.first_hint(c, own) if recovering else None
            # Recovering: from below the first position held only by its hash, so
            # a peer that holds it signed (or its content) sends it.
            return fed_tx.cursors(c, center), head if hint is None else min(head, hint - 1)

        cursors, own_head = await self.node.db.read(read)
        wanted = {o: cursors.get(o, 0) for o in self.wanted_origins()}
        # This node's own origin too, from its own head: the peer reports its head
        # of our log (a restored node learns it is behind before it signs again)
        # and sends what lies beyond, which ingest takes only while recovering.
        wanted[own] = own_head
        request = federation_pb2.ReplicateRequest(
            cursors=wanted, max_batch=self.node.config.limits.max_batch, ranges=True)
        stream = stub(self.channel()).Replicate(request)
        # Verification of the next batches overlaps storage of the current one;
        # whatever has queued up by then is stored in one transaction (one fsync).
        verified: asyncio.Queue[Verified | BaseException | None] = asyncio.Queue(
            maxsize=PIPELINE_DEPTH)
        reader = asyncio.create_task(self._read(stream, verified))
        ahead: list[Verified | BaseException | None] = []  # taken, not stored yet
        try:
            while True:
                first = ahead.pop() if ahead else await verified.get()
                if first is None:
                    break
                if isinstance(first, BaseException):
                    raise first
                group, own_head = list(await _checked(first)), first[1]
                batches = 1
                while batches < STORE_GROUP and not verified.empty():
                    nxt = verified.get_nowait()
                    if (nxt is None or isinstance(nxt, BaseException)
                            or (nxt[0] is not None and not nxt[0].done())
                            or (nxt[0] is not None and nxt[0].exception() is not None)):
                        # The end, a failure, or not verified yet: store what we
                        # have first (a verified batch never waits for the next).
                        ahead.append(nxt)
                        break
                    batches += 1
                    group.extend(await _checked(nxt))
                    own_head = nxt[1] if nxt[1] is not None else own_head
                if any(c.error and _key_error(c.error) for c in group):
                    # Verified on arrival, maybe before a key rotation in a batch
                    # ahead of it was stored: check again with the keys known now
                    # (at most once a group; a forger pays twice, no more).
                    group = await self._verify([c.item for c in group])
                await self._store(group, own_head)
        finally:
            await cancel_and_wait(reader)
            for pending in [*ahead, *_drain(verified)]:
                if isinstance(pending, tuple) and pending[0] is not None:
                    pending[0].cancel()
                    if pending[0].done() and not pending[0].cancelled():
                        pending[0].exception()  # retrieved: the session ends anyway
        self.state.state = "backing off"
        self.state.error = "stream ended"

    async def _read(self, stream: grpc.aio.UnaryStreamCall,
                    out: asyncio.Queue[Verified | BaseException | None]) -> None:
        try:
            async for batch in stream:
                self.state.state, self.state.error = "connected", ""
                self.state.last_contact_ms = now_ms()
                heads = dict(batch.heads)
                own = heads.pop(self.node.center, None)
                self.state.heads = heads
                self.backoff.reset()  # contact resets backoff (Synapse #17769)
                if batch.items or own is not None:
                    # (A heartbeat's own head is handled in order with the items.)
                    checking = (asyncio.ensure_future(self._verify(list(batch.items)))
                                if batch.items else None)
                    await out.put((checking, own))
            await out.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the storing side, which raises it
            await out.put(exc)

    async def _verify(self, items: list[federation_pb2.LogItem]) -> list[Checked]:
        loop = asyncio.get_running_loop()
        copies = self.node.config.limits.max_sealed_copies
        budget = copy_budget(self.node.config.limits.max_message_bytes)
        half = (len(items) + 1) // 2
        # Two halves on the verify threads: cryptography releases the GIL while it
        # verifies (measured on 2 idle cores: two threads 1.96x one), so this uses
        # the second core while the storing thread writes the batch before.
        parts = await asyncio.gather(*(
            loop.run_in_executor(self.pool, check_items, chunk, self.node.history_of,
                                 self.seal_private, copies, budget, self.node.center)
            for chunk in (items[:half], items[half:]) if chunk))
        rotated = [c.rotation for c in parts[0] if c.rotation is not None]
        if rotated and len(parts) > 1:
            # The second half was checked without the first half's key rotation
            # (it may be signed with the new key): check it again after it.
            parts[1] = await loop.run_in_executor(
                self.pool, check_items, items[half:], self._histories_after(rotated),
                self.seal_private, copies, budget, self.node.center)
        return [c for part in parts for c in part]

    def _histories_after(self, rotations: list[Rotation]
                         ) -> Callable[[str], KeyHistory | None]:
        def history_of(origin: str) -> KeyHistory | None:
            history = self.node.history_of(origin)
            return None if history is None else learn(
                history, [r for r in rotations if r.origin == origin])
        return history_of

    async def _store(self, checked: list[Checked], reported: int | None = None) -> None:
        """``reported``: the peer's head of this node's own log (None: not reported,
        e.g. a peer of an older release)."""
        center, own = self.peer.center, self.node.center
        recovery = self.node.recovery
        self.state.own_head = reported
        failure: Exception | None = None
        stopped: set[str] = set()  # one for every part (store_batch)

        def begin(c: sqlite3.Connection, now: int) -> Begun:
            ours = log_tx.head(c, own)[0]
            # A reported head is a hint; what counts is proof: an entry beyond our
            # head that this node's own key signed (envelope or stub). (A peer
            # cannot make a node stop publishing by claiming a higher head.)
            beyond = [ch for ch in checked if ch.item.origin == own and ch.item.seq > ours
                      and not ch.error and (ch.body is not None or ch.stub is not None)]
            if beyond:
                # With this node's key history as stored now: a batch verified before
                # its own rotation committed (the stolen-key runbook) must not hold
                # it again with the retired key's entries beyond the rotation.
                history = _own_history_now(c, own, self.node.history_of(own))
                beyond = [ch for ch in beyond if _own_key_signs(history, ch)]
            if not beyond:
                return Begun(recovery.active, OwnEntry.NONE)
            # Read in this transaction: an administrator's adopt may have just
            # committed (the marker is what a restore or an adopt leaves).
            decision = own_entry(True, recovery.active or recovery_tx.marker(c) is not None,
                                 recovery_tx.held(c) is not None)
            top = max(ch.item.seq for ch in beyond)
            if decision is not OwnEntry.HOLD:
                return Begun(decision is OwnEntry.TAKE, decision, len(beyond), top)
            # Not marked by a restore: an old copy of node.db, or a thief with this
            # node's key. Adopt nothing, sign nothing; the administrator decides.
            first = min(beyond, key=lambda ch: ch.item.seq)
            proof = Held(center, first.item.seq, ours, first.item.hash, now)
            recovery_tx.hold(c, proof)
            audit_tx.append(c, self.node.sign_audit, now, "fcnode", "recovery.held",
                            {**proof.detail(), "peer_head": reported})
            return Begun(False, decision, len(beyond), top, proof)

        def step(part: list[Checked], first: bool
                 ) -> Callable[[sqlite3.Connection], tuple[IngestResult, int, Begun | None]]:
            def tx(c: sqlite3.Connection) -> tuple[IngestResult, int, Begun | None]:
                now = now_ms()
                begun = begin(c, now) if first else None
                take = begun.take if begun is not None else recovery.active
                result = store_batch(c, center, part, now, own, recover_own=take,
                                     max_copies=self.node.config.limits.max_sealed_copies,
                                     stopped=stopped)
                return result, log_tx.head(c, own)[0], begun
            return tx

        if checked:
            # In parts of YIELD_EVERY items, one transaction for all of them unless
            # a user's write (a search's audit entry) is waiting: then it goes in
            # between two parts (Database.run_steps).
            parts = [checked[i:i + YIELD_EVERY] for i in range(0, len(checked), YIELD_EVERY)]
            done: list[tuple[IngestResult, int, bool]] = []
            try:
                await self.node.db.run_steps(
                    [step(part, i == 0) for i, part in enumerate(parts)], done)
            except Exception as exc:
                if not done:
                    raise
                # Parts committed before the failure stay: what they learned
                # (rotations, rewinds, changes) is acted on below, then it raises.
                failure = exc
            result, ours, begun = IngestResult(), done[-1][1], done[0][2]
            for part_result, _, _ in done:
                result.add(part_result)
        else:  # a heartbeat: nothing to store, so no write transaction for the writer
            ours = await self.node.db.read(lambda c: log_tx.head(c, own)[0])
            result, begun = IngestResult(), None
        if begun is not None and begun.decision in (OwnEntry.HOLD, OwnEntry.HELD):
            self._held(begun, reported)
        ask_again = False
        if (recovery.heard(center, reported, ours) and not recovery.active
                and recovery.held is None):
            # A peer serves this node's own log only up to its head when the stream
            # opened: entries it took since (a thief's, signed with this node's key)
            # come only on a new stream. Ask once more, at most once a minute (a claim
            # alone is no proof and must not cost more than that: nor a log line per
            # heartbeat, which a peer may send as fast as it likes).
            at = time.monotonic()
            if self._asked_own_at is None or at - self._asked_own_at >= ASK_OWN_AGAIN_S:
                self._asked_own_at, ask_again = at, True
                log.warning("a peer reports this center's own log beyond ours without "
                            "sending a signed entry of it (asking it again)", extra={
                                "peer": center, "peer_head": reported, "own_head": ours})
        if recovery.active and recovery.caught_up(ours):
            await self._finish_recovery(ours)
        self.state.received += result.stored
        if result.rotations or result.certs or result.seals:
            self.on_keys(result.rotations, result.certs, result.seals)
        metrics.ENTRIES_INGESTED.labels(center).inc(result.stored)
        metrics.count_rejections(center, result.rejected)
        metrics.count_sealed(center, result.copies_stored, result.copies_dropped)
        # One line a minute per kind from this peer, the rest counted: a peer may
        # send bad batches as fast as this node verifies them (the metrics count
        # every item).
        at = time.monotonic()
        if result.copies_dropped:
            held = self.drop_logs.take("copies", at)
            if held is not None:
                log.warning("sealed copies dropped", extra={
                    "peer": center, "reasons": dict(result.copies_dropped),
                    "not_logged_before": held})
        if result.rejected:
            held = self.drop_logs.take("entries", at)
            if held is not None:
                log.warning("rejected entries", extra={
                    "peer": center, "reasons": dict(result.rejected),
                    "not_logged_before": held})
        for fork in result.forks:
            log.error("FORK: origin quarantined", extra={"peer": center, "fork": fork})
            self.node.forked.add(fork.partition(":")[0])
            if fork.startswith(f"{own}:"):
                log.error("this center's OWN log has forked: nothing more is signed until an "
                          "administrator resolves it", extra={"peer": center, "fork": fork})
        if result.forks:
            self.on_forked()
        if result.purged:
            await self.node.db.checkpoint()
        if result.changed:
            self.on_change()
        if result.corrected:
            self.on_corrected(result.corrected)
        if result.rewound:
            log.warning("false placeholders dropped: links fetch again from their cursors",
                        extra={"peer": center, "origins": sorted(result.rewound)})
            self.on_rewind()
        if failure is not None:
            raise failure
        if ask_again:
            self.resubscribe()  # last: it ends this session (as on_rewind does)

    def _held(self, begun: Begun, reported: int | None) -> None:
        """Entries beyond our head signed by this node's key, refused: held."""
        recovery, center = self.node.recovery, self.peer.center
        metrics.OWN_ENTRIES_HELD.labels(center).inc(begun.count)
        if begun.proof is not None:
            recovery.hold(begun.proof)
        elif recovery.held is None:  # held in the database (another link): say so here too
            return
        if begun.proof is not None or recovery.seen_held(center, begun.top):
            # For the administrator: the peer and positions, never content.
            log.error("own log HELD: a peer holds entries of this center's own log beyond "
                      "this node's head, signed by this node's key; nothing is adopted or "
                      f"signed until an administrator decides ({HELD_CHOICE})", extra={
                          "peer": center, "first_seq": begun.proof.seq if begun.proof
                          else None, "up_to_seq": begun.top, "peer_head": reported,
                          "own_head": recovery.held.own_head if recovery.held else None})

    async def _finish_recovery(self, ours: int) -> None:
        """Every reachable peer reported no own entry beyond ours: recovered."""
        recovery = self.node.recovery
        confirmed = sorted(recovery.confirmed)

        def tx(c: sqlite3.Connection) -> bool:
            top = log_tx.held(c, self.node.center, ours) if ours else None
            if top is not None and not top.signed:
                return False  # a hint at the head: wait for the signed entry
            if not recovery_tx.finish(c):
                return False
            audit_tx.append(c, self.node.sign_audit, now_ms(), "fcnode", "recovery.finish",
                            {"own_head_seq": ours, "confirmed_by": confirmed})
            return True

        if await self.node.db.run(tx):
            log.info("own log recovered: publishing again",
                     extra={"own_head": ours, "confirmed_by": confirmed})
            recovery.end()


@dataclass(frozen=True)
class Begun:
    """What a batch's own entries beyond our head decided (node.core.recovery)."""
    take: bool                  # ingest takes own entries (recovering)
    decision: OwnEntry
    count: int = 0              # own entries beyond our head that this node's key signed
    top: int = 0                # the highest of them
    proof: Held | None = None   # set when this batch put the node in the held state


ASK_OWN_AGAIN_S = 60.0


def _own_history_now(c: sqlite3.Connection, own: str, history: KeyHistory | None
                     ) -> KeyHistory | None:
    """This node's key history with its rotations stored so far (one committed a
    moment ago may not be installed in memory yet)."""
    return None if history is None else learn(
        history, [r for r in keys_tx.rotations(c) if r.origin == own])


def _own_key_signs(history: KeyHistory | None, ch: Checked) -> bool:
    """Signed by a key of this node valid at that position."""
    if history is None:
        return False
    item = ch.item
    if item.HasField("envelope"):
        return not history.signs(item.envelope.key_id, item.seq)
    return not history.stub_signs(item.stub.key_id, item.seq)


def _key_error(error: str) -> bool:
    """A refusal that a key learned since (a rotation stored meanwhile) may lift."""
    return "unknown signing key" in error or WRONG_KEY in error


async def _checked(pending: Verified) -> list[Checked]:
    return await pending[0] if pending[0] is not None else []


def _drain(queue: asyncio.Queue[Verified | BaseException | None]
           ) -> list[Verified | BaseException | None]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
