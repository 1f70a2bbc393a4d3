"""Federation inside the daemon: the mutual-TLS listener, one replication link
per dialled peer, and the admin operations on peers. The daemon creates one
Federation and calls start/stop/apply_peers; node/ never imports this."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from federation.links import PeerLink
from federation.query_answer import QueryAnswerer
from federation.query_fanout import QueryFanout
from federation.query_forward import DEFAULT_HOPS, Forwarder
from federation.tls import PinnedTls
from federation.transport.server import FederationServicer
from federation.transport.standard_services import add_standard_services
from federation.watch_sync import OwnSet, StandingServer, WatchClient
from node.config.home import HomeError, check_group
from node.config.identity import BadSealSignature, b64e, parse_card
from node.config.keys import (
    cert_der,
    cert_expiry_ms,
    cert_fingerprint,
    der_to_pem,
    generate_tls,
    load_tls,
)
from node.config.peer_edits import updated_peer, with_peer
from node.config.peers import Peer, all_groups, save_peers
from node.core.keyhistory import AnnouncedCert, Rotation, SealAnnouncement
from node.core.localtypes import Request
from node.core.query import make_params
from node.core.signing import INTRODUCTIONS_DOMAIN, BadSignature, open_signed
from node.core.timeutil import iso, now_ms, parse_duration_ms, parse_instant_ms
from node.core.types import ValidationError, check_center_id
from node.core.users import SYSTEM_USER, User
from node.services.introductions import Offer, adopt
from node.services.scrape import PeerView
from node.services.service import NodeService, NotFound
from node.services.tasks import cancel_and_wait
from node.services.watches import Watches
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import keys as keys_tx
from node.storage import watches as watch_tx
from node.telemetry import logs, metrics
from node.wire import federation_pb2, federation_pb2_grpc

log = logs.get("fcnode.federation")
Extension = Callable[[User, Request], Awaitable[Any]]
MAX_INTRODUCED = 10_000  # cards taken from one introducer's view


class Federation:
    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.tls = PinnedTls(load_tls(node.home.tls_key, node.home.tls_cert),
                             node.peers.values())
        self._pin_tls()
        self._tls_task: asyncio.Task[None] | None = None
        self._warned_ms = 0
        self.answerer = QueryAnswerer(node, Forwarder(
            node, lambda c: self.links[c].channel(), lambda: sorted(self.links)))
        self.servicer = FederationServicer(node, self.tls, self.answerer.handle)
        # This center's X25519 keys (current, then retired): sealed answers, copies
        # and hits are opened with them. The node's one list: a seal-key rotation
        # changes it in place for every link and client holding it.
        self.seal_private = node.seal_privates
        self.fanout = QueryFanout(node, lambda c: self.links[c].channel(),
                                  lambda: sorted(self.links), self.seal_private)
        self.links: dict[str, PeerLink] = {}
        self.watches: Watches | None = None
        self.watch_clients: dict[str, WatchClient] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
        self.server: grpc.aio.Server | None = None
        self._lock = asyncio.Lock()
        self._renewing = asyncio.Lock()
        self._stopping: set[asyncio.Future[None]] = set()
        self._introductions: asyncio.Task[None] | None = None
        # introducer -> center -> why: offers of another key for a center held (the
        # card held stands) and refused introductions, in each introducer's current
        # view only (names it made up once must not pile up); shown by status.
        self.conflict_views: dict[str, dict[str, str]] = {}
        # Adopted held own entries were refused by the streams open now: ask again.
        node.own_log_adopted.append(self._resubscribe_all)
        # introducer -> center -> "": offered seal keys dropped unsigned, likewise.
        self.unsigned_views: dict[str, dict[str, str]] = {}

    def attach_watches(self, watches: Watches) -> None:
        """Network watches: this node's signed set goes to its peers; theirs are
        answered here (federation/watch_sync.py)."""
        self.watches = watches
        self.own_set = OwnSet(self.node)
        self.servicer.standing = StandingServer(self.node, watches, self._sets_taken)
        watches.network_changed.append(self._watches_changed)
        self.node.users_changed.append(self._watches_changed)

    def _watches_changed(self) -> None:
        if self.watches is not None:
            self.own_set.invalidate()
        for client in self.watch_clients.values():
            client.changed.set()

    def _sets_taken(self) -> None:
        """Another watcher's standing set was taken here: pass it on (only that:
        this node's own set is not sent again for it)."""
        for client in self.watch_clients.values():
            client.relay.set()

    async def start(self) -> None:
        limits = self.node.config.limits
        self.server = grpc.aio.server(options=[
            # gRPC enables SO_REUSEPORT by default: a second node on the same
            # address would start "fine" and take half of the peers' connections.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
        ])
        federation_pb2_grpc.add_FederationServicer_to_server(self.servicer, self.server)
        hs = add_standard_services(
            self.server, [federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name])
        listen = self.node.config.listen
        try:
            port = self.server.add_secure_port(listen, self.tls.server_credentials())
        except RuntimeError as exc:
            raise HomeError(f"cannot listen on {listen}: {exc}") from None
        if not port:
            raise HomeError(f"cannot listen on {listen} (address in use?)")
        await self.server.start()
        await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        self._dialled_changed()
        for peer in self.node.peers.values():
            self._start_link(peer)
        self._tls_task = asyncio.create_task(self._tls_watch(), name="tls-watch")
        self._introductions = asyncio.create_task(self._introductions_loop(),
                                                  name="introductions")

    def _dialled_changed(self) -> None:
        """Own-log recovery waits on the dialled peers (node.core.recovery)."""
        self.node.recovery.set_dialled({c for c, p in self.node.peers.items() if p.connect})

    # -- introductions ----------------------------------------------------------
    async def _introductions_loop(self) -> None:
        """Fetch every introducer's signed view, one after the other, forever: a
        snapshot (not a log of changes), so a card the introducer removed is
        simply absent, and a missed poll costs nothing but time."""
        await asyncio.sleep(0.2)
        while True:
            for center, peer in list(self.node.peers.items()):
                if peer.introducer and center in self.links:
                    try:
                        await self.poll_introducer(center)
                    except grpc.aio.AioRpcError as exc:
                        log.info("introducer not reached", extra={
                            "peer": center, "code": exc.code().name})
                    except (BadSignature, ValidationError, DecodeError) as exc:
                        log.warning("introductions refused", extra={
                            "peer": center, "reason": str(exc)[:200]})
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # the daemon is stopping
                        # The link (and its channel) was restarted under the call:
                        # the next round asks again.
                        log.info("introducer call cancelled", extra={"peer": center})
                    except Exception:  # one bad round must not end introductions for good
                        log.exception("introductions round failed", extra={"peer": center})
            await asyncio.sleep(self.node.config.limits.introduction_poll_s)

    async def poll_introducer(self, center: str) -> None:
        stub = federation_pb2_grpc.FederationStub(self.links[center].channel())
        signed = await stub.Introductions(federation_pb2.IntroductionsRequest(), timeout=10)
        open_signed(INTRODUCTIONS_DOMAIN, signed.body, signed.signature, signed.key_id,
                    self.node.current_keys_of(center), "introductions")
        body = federation_pb2.IntroductionList.FromString(signed.body)
        if body.center != center:
            raise ValidationError(f"introductions name {body.center[:64]!r}, not {center!r}")
        offers = []
        bad, first = 0, ""
        for item in body.cards[:MAX_INTRODUCED]:
            try:
                offers.append(Offer(parse_card(item.card), tuple(
                    check_center_id(v, "via") for v in item.via)))
            except ValidationError as exc:
                # A card whose seal key its center did not sign (an introducer pairing
                # the center's real signing key with a key of its own) lands here.
                metrics.INTRODUCTIONS_REFUSED.labels(center, "seal_signature" if isinstance(
                    exc, BadSealSignature) else "invalid_card").inc()
                bad, first = bad + 1, first or str(exc)[:200]
        if bad:
            # One line a round, not one a card: an introducer's view holds up to
            # MAX_INTRODUCED cards and is fetched every introduction_poll_s.
            log.warning("introduced card refused", extra={"peer": center, "cards": bad,
                                                           "first_reason": first})
        async with self._lock:
            if not self.node.peers.get(center, None) or not self.node.peers[center].introducer:
                return  # unpinned or demoted while we asked
            result = adopt(self.node.center, self.node.own_public_key, self.node.peers,
                           center, offers, self.node.announced_seal_keys())
            metrics.INTRODUCTIONS_REFUSED.labels(center, "unsigned_seal_key").inc(
                len(result.unsigned))
            # Logged once, not every poll; what is remembered is this introducer's
            # current view only (names it made up once must not pile up), and the
            # news of one round is one line.
            news = _news(self.unsigned_views, center, dict.fromkeys(result.unsigned, ""))
            if news:
                log.warning("introduced seal key not signed", extra={
                    "peer": center, "centers": news[:10], "count": len(news), "reason": (
                        "dropped: nothing is sealed to those centers until a card "
                        "carrying its own signature of its seal key arrives")})
            # One line a round for what is new in this view (an introducer may offer
            # 10,000 cards under names it makes up at every round: a line each was a
            # log without bound).
            view = dict((*result.conflicts, *result.refused))
            news = _news(self.conflict_views, center, view)
            if news:
                log.warning("introduction conflict", extra={
                    "peer": center, "center": news[0][:64], "reason": view[news[0]][:300],
                    "count": len(news), "centers": [c[:64] for c in news[:10]]})
            if result.changed:
                await self._commit(SYSTEM_USER, result.peers, "peer.introduced", {
                    "introducer": center, "adopted": list(result.adopted),
                    "updated": list(result.updated), "removed": list(result.removed),
                    "conflicts": list(result.new_conflicts)})
                log.info("introductions applied", extra={
                    "peer": center, "adopted": len(result.adopted),
                    "removed": len(result.removed), "conflicts": len(result.new_conflicts)})

    async def stop(self) -> None:
        if self._introductions is not None:
            self._introductions.cancel()
        await cancel_and_wait(self._tls_task)
        for client in list(self.watch_clients.values()):
            await client.stop()
        self.watch_clients.clear()
        for link in list(self.links.values()):
            await link.stop()
        self.links.clear()
        if self.server is not None:
            # Replication streams never end by themselves: close them now rather
            # than wait out the grace period on shutdown.
            self.servicer.streams.revoke_all(grpc.StatusCode.UNAVAILABLE, "node shutting down")
            await self.server.stop(grace=1)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _start_link(self, peer: Peer) -> None:
        if not peer.connect:
            return
        link = PeerLink(self.node, self.tls, peer, self.pool, self.node.changes.bump,
                        self._resubscribe_all, self._serve_again, self._keys_learned,
                        self.seal_private, self._pin_tls)
        self.links[peer.center] = link
        link.start()
        if self.watches is not None:
            client = WatchClient(self.node, self.watches, peer.center, link.channel,
                                 self.own_set, self.fanout.seal_private)
            self.watch_clients[peer.center] = client
            client.start()

    def _resubscribe_all(self) -> None:
        """Cursors for an origin moved back (ingest dropped false hints): every
        link, not only the one that saw the contradiction, fetches again."""
        for link in self.links.values():
            link.resubscribe()

    @property
    def conflicts(self) -> dict[str, str]:
        """center -> why, from every introducer's current view."""
        return {c: why for view in self.conflict_views.values() for c, why in view.items()}

    def _forget_conflict(self, center: str) -> None:
        for view in self.conflict_views.values():
            view.pop(center, None)

    def _pin_tls(self) -> None:
        """Trust for TLS what is pinned and announced now (NodeService.announced_certs:
        a renewal learned, a distrust, a center quarantined for a fork)."""
        self.tls.update(self.node.peers.values(), self.node.announced_certs())

    def _keys_learned(self, rotations: list[Rotation], certs: list[AnnouncedCert],
                      seals: list[SealAnnouncement]) -> None:
        """An origin's verified key announcements were stored: verify with its new
        signing key from the rotation on, pin its new certificate, seal to its new
        seal key."""
        if rotations and self.node.learn_rotations(rotations):
            log.info("signing key rotation learned", extra={
                "origins": sorted({r.origin for r in rotations}),
                "seqs": [r.seq for r in rotations]})
        if certs and self.node.learn_certs(certs):
            self._pin_tls()
            log.info("TLS certificate renewal learned", extra={
                "origins": sorted({a.origin for a in certs}),
                "fingerprints": [a.fingerprint[:16] for a in certs]})
        if seals and self.node.learn_seals(seals):
            log.info("seal key rotation learned", extra={
                "origins": sorted({a.origin for a in seals}), "seqs": [a.seq for a in seals]})
        self.node.changes.bump()

    def _serve_again(self, corrected: dict[str, int]) -> None:
        """Positions whose hint this node replaced or dropped: it may have relayed
        the false one, so its open streams send those positions again."""
        self.servicer.streams.rewind(corrected)
        self.node.changes.bump()

    def _stop_link(self, center: str) -> None:
        client = self.watch_clients.pop(center, None)
        if client is not None:
            self._stopping.add(asyncio.ensure_future(client.stop()))
        link = self.links.pop(center, None)
        if link is not None:
            self._stopping = {t for t in self._stopping if not t.done()}
            self._stopping.add(asyncio.ensure_future(link.stop()))

    def apply_peers(self, peers: dict[str, Peer]) -> None:
        """Make a new pinned set current: TLS roots, open streams, links."""
        old = self.node.peers
        self.node.peers = peers
        self._pin_tls()
        for center, before in old.items():
            after = peers.get(center)
            if after is None:
                # An unpinned center's standing queries (and their outbox) go.
                self._stopping.add(asyncio.ensure_future(self.node.db.run(
                    lambda c, x=center: watch_tx.drop_center(c, x))))
            if after is None or after.card != before.card or after.connect != before.connect:
                closed = self.servicer.streams.revoke(center)
                self._stop_link(center)
                log.info("peer unpinned or changed", extra={"peer": center,
                                                             "streams_closed": closed})
        for center, peer in peers.items():
            if center not in self.links:
                self._start_link(peer)
        if set(old) != set(peers):
            # Each link asks for the origins pinned when it subscribed: a changed
            # set of centers means every other link subscribes again from its
            # cursors, on the channel it has (an introduction adopting a card
            # must not tear down every TLS connection of the node).
            for link in self.links.values():
                link.resubscribe()
        self._dialled_changed()
        self.node.changes.bump()  # streams re-evaluate what each peer may receive

    def peer_views(self) -> list[PeerView]:
        """Each pinned peer's link state, for the metrics page (no I/O)."""
        out = []
        for center, peer in list(self.node.peers.items()):
            link = self.links.get(center)
            if link is None:
                state, heads, contact = ("not dialled" if not peer.connect else "stopped"), {}, 0
            else:
                state, heads = link.state.state, dict(link.state.heads)
                contact = link.state.last_contact_ms
            # The certificate pinned for the peer that expires last: the card's, or
            # one it announced since (a renewal moves the gauge with no admin action).
            announced = self.node.announced_certs(center).get(center, [])
            der = max([peer.card.tls_cert_der, *(a.der for a in announced)],
                      key=lambda d: cert_expiry_ms(der_to_pem(d)))
            out.append(PeerView(center, state, heads, contact, der))
        return out

    # -- own TLS certificate: renewal, announcement, switch ---------------------
    def _next_tls(self) -> tuple[Path, Path]:
        root = self.node.home.tls_key.parent
        return root / "tls.next.key", root / "tls.next.crt"

    def _pending(self) -> AnnouncedCert | None:
        """The announced certificate not presented yet (tls.next.crt), if any."""
        _, crt = self._next_tls()
        if not crt.exists():
            return None
        fp = cert_fingerprint(crt.read_bytes())
        return next((a for a in self.node.own_announced() if a.fingerprint == fp), None)

    def switch_at_ms(self, pending: AnnouncedCert) -> int:
        """When the node starts presenting an announced certificate: switch_after_days
        after the announcement (peers learn it meanwhile), at the latest half-way
        from the announcement to the current certificate's expiry."""
        tls = self.node.config.tls
        announced = self.node.announced_at(pending.fingerprint) or now_ms()
        expiry = cert_expiry_ms(self.tls.own.cert_pem)
        return announced + int(min(tls.switch_after_days * 86_400_000,
                                   max(0, expiry - announced) / 2))

    async def renew_tls(self, actor: str) -> dict[str, Any]:
        """A new TLS key and certificate (tls.next.*), announced in this center's
        log now and presented from switch_at on."""
        async with self._renewing:
            pending = self._pending()
            if pending is not None:
                raise ValidationError(
                    f"a renewed certificate ({pending.fingerprint[:16]}) is already announced "
                    f"and will be presented from {iso(self.switch_at_ms(pending))}")
            key, crt = self._next_tls()
            key.unlink(missing_ok=True)
            crt.unlink(missing_ok=True)
            await asyncio.to_thread(generate_tls, key, crt, self.node.center,
                                    self.node.config.tls.lifetime_days)
            try:
                announced = await self.node.announce_cert(actor, cert_der(crt.read_bytes()))
            except BaseException:
                key.unlink(missing_ok=True)
                crt.unlink(missing_ok=True)
                raise
        switch = self.switch_at_ms(announced)
        log.info("TLS certificate renewed and announced", extra={
            "seq": announced.seq, "fingerprint": announced.fingerprint[:16],
            "not_after": iso(announced.not_after_ms), "switch_at": iso(switch)})
        return {"rotated": "tls", "seq": announced.seq,
                "new_fingerprint": announced.fingerprint,
                "not_after": iso(announced.not_after_ms), "switch_at": iso(switch)}

    async def _switch_tls(self, pending: AnnouncedCert) -> None:
        """Present the announced certificate: the old pair is kept as
        tls.{key,crt}.retired-SEQ, the server's next handshake uses the new one and
        every link dials again with it."""
        home = self.node.home
        key, crt = self._next_tls()
        for path in (home.tls_key, home.tls_cert):
            retired = path.with_name(f"{path.name}.retired-{pending.seq}")
            if path.exists() and not retired.exists():
                os.link(path, retired)
        os.replace(key, home.tls_key)
        os.replace(crt, home.tls_cert)
        self.tls.set_own(load_tls(home.tls_key, home.tls_cert))
        for center in list(self.links):
            self._stop_link(center)
        for peer in self.node.peers.values():
            if peer.center not in self.links:
                self._start_link(peer)
        log.info("presenting the renewed TLS certificate", extra={
            "fingerprint": pending.fingerprint[:16], "not_after": iso(pending.not_after_ms)})

    async def tls_tick(self) -> None:
        """One look at the own certificate: warn before expiry, renew ahead of it,
        switch to an announced certificate when its time has come."""
        tls = self.node.config.tls
        now = now_ms()
        expiry = cert_expiry_ms(self.tls.own.cert_pem)
        pending = self._pending()
        if pending is not None and now >= self.switch_at_ms(pending):
            await self._switch_tls(pending)
            return
        left_days = (expiry - now) / 86_400_000
        if left_days <= tls.warn_before_days and now - self._warned_ms >= min(
                86_400_000, tls.check_interval_s * 1000 * 24):
            self._warned_ms = now
            log.warning("TLS certificate expires soon", extra={
                "expires": iso(expiry), "days_left": round(left_days, 3),
                "renewal": (f"announced, presented from {iso(self.switch_at_ms(pending))}"
                            if pending else "automatic" if left_days <= tls.renew_before_days
                            else "at renew_before_days")})
        if pending is None and left_days <= tls.renew_before_days:
            await self.renew_tls("fcnode")

    async def _tls_watch(self) -> None:
        while True:
            try:
                await self.tls_tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the watch die; say why and retry
                log.error("TLS renewal check failed", extra={"reason": str(exc)})
            await asyncio.sleep(self.node.config.tls.check_interval_s)

    async def keys_op(self, user: User, req: Request) -> dict[str, Any]:
        self.node.require_admin(user, "rotating keys")
        which = req.get("which")
        if req.get("op") != "rotate" or which not in ("signing", "tls", "seal"):
            raise ValidationError("keys: use rotate --signing, --tls or --seal")
        if req.get("retire") and which != "seal":
            raise ValidationError("--retire goes with rotate --seal")
        if which == "signing":
            return await self.node.rotate_signing(user, stolen=bool(req.get("stolen")))
        if req.get("stolen"):
            raise ValidationError("--stolen goes with rotate --signing (the stolen-key runbook)")
        if which == "seal":
            return await self.node.rotate_seal(user, retire=bool(req.get("retire")))
        return await self.renew_tls(user.name)

    # -- local API extensions ------------------------------------------------
    def local_extensions(self) -> dict[str, Extension]:
        return {"status": self.status, "peers": self.peers_op, "keys": self.keys_op,
                "disseminations": self.disseminations, "query": self.query}

    async def query(self, user: User, req: Request) -> AsyncIterator[dict[str, Any]]:
        since = req.get("since")
        params = make_params(
            text=str(req.get("text") or ""), entity_pairs=req.strings("entities"),
            kinds=req.strings("kinds"), since_ms=parse_instant_ms(since) if since else 0,
            labels=req.strings("labels"), origins=req.strings("origins"),
            limit=int(req.get("limit") or 100), any_entity=bool(req.get("any_entity")),
            behaviors=req.strings("behaviors"))
        if not (params.fts_match() or params.entity_keys or params.kinds or params.labels
                or params.since_ms or params.behaviors):
            raise ValidationError("a query needs text, --entity, --kind, --label, --behavior "
                                  "or --since")
        timeout = parse_duration_ms(str(req.get("timeout") or "5s"))
        return self._counted(self.fanout.run(user, params, timeout,
                                             req.strings("centers") or None,
                                             int(req.get("hops") or DEFAULT_HOPS)))

    async def _counted(self, results: AsyncIterator[dict[str, Any]]
                       ) -> AsyncIterator[dict[str, Any]]:
        """Metrics for a federated query: one ask, its duration, and each peer's
        outcome as its summary reports it."""
        started = time.monotonic()
        metrics.QUERIES_ASKED.inc()
        async for item in results:
            if "summary" in item:
                metrics.QUERY_ASK_SECONDS.observe(time.monotonic() - started)
                metrics.count_query_summary(item["summary"], self.node.center)
            yield item

    async def status(self, user: User, req: Request) -> dict[str, Any]:
        """Cursors, rejections, quarantine and peer details for admins; anyone
        else learns only which centers this node is connected to."""
        if not user.admin:
            return {"connected": sorted(c for c, link in self.links.items()
                                        if link.state.state == "connected")}

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            return {"cursors": {p: fed_tx.cursors(conn, p) for p in self.node.peers},
                    "quarantined": fed_tx.quarantined(conn),
                    "rejected": fed_tx.rejection_counts(conn)}

        data = await self.node.db.read(tx)
        peers = []
        for center, peer in sorted(self.node.peers.items()):
            link = self.links.get(center)
            if link is None:
                peers.append({"center": center, "state": "not dialled" if not peer.connect
                              else "stopped", "last_contact": "", "behind": {}})
            else:
                peers.append(link.state.as_dict(data["cursors"].get(center, {})))
        pending = self._pending()
        tls = {"fingerprint": self.tls.own.fingerprint,
               "expires": iso(cert_expiry_ms(self.tls.own.cert_pem))}
        if pending is not None:
            tls["next"] = {"fingerprint": pending.fingerprint,
                           "expires": iso(pending.not_after_ms),
                           "presented_from": iso(self.switch_at_ms(pending))}
        conflicts = {**self.conflicts, **{c: p.conflict for c, p in self.node.peers.items()
                                           if p.conflict}}
        return {"listen": self.node.config.listen, "peers": peers, "tls": tls,
                "key_conflicts": [{"center": c, "why": w} for c, w in sorted(conflicts.items())],
                "quarantined": [{"origin": o, "reason": r, "since": iso(t)}
                                for o, (r, t) in sorted(data["quarantined"].items())],
                "rejected": data["rejected"]}

    async def disseminations(self, user: User, req: Request) -> list[dict[str, Any]]:
        self.node.require_admin(user, "reading the dissemination log")
        record_id = req.get("record_id") or None
        limit = int(req.get("limit") or 1000)
        rows = await self.node.db.read(lambda c: fed_tx.disseminations(c, record_id, limit))
        return [{"time": iso(r[0]), "center": r[1], "user": r[2], "origin": r[3],
                 "record_id": r[4], "version": r[5], "seq": r[6], "channel": r[7],
                 "decision": r[8], **({"via": r[9]} if r[9] else {})} for r in rows]

    async def peers_op(self, user: User, req: Request) -> Any:
        op = req.get("op")
        # Addresses, groups, fingerprints and link states are network metadata:
        # need-to-know, like status details.
        self.node.require_admin(user, f"peers {op}" if op in ("list", "show", "groups")
                                else "changing peers")
        if op == "list":
            return [self._peer_view(p) for _, p in sorted(self.node.peers.items())]
        if op == "show":
            peer = self.node.peers.get(str(req.get("center")))
            if peer is None:
                raise NotFound(f"no pinned peer {req.get('center')!r}")
            return {**self._peer_view(peer), "card": peer.card.line(),
                    **await self._key_view(peer)}
        if op == "groups":
            return all_groups(self.node.config.groups, self.node.peers.values())
        async with self._lock:  # one writer of peers.toml at a time
            if op == "add":
                return await self._add(user, req)
            if op == "remove":
                return await self._remove(user, str(req.get("center")))
            if op == "update":
                return await self._update(user, req)
        raise ValidationError(f"unknown peers operation {op!r}")

    async def _key_view(self, peer: Peer) -> dict[str, Any]:
        """The peer's signing-key history and the certificates pinned for it."""
        history = self.node.history_of(peer.center)
        keys = [{"key_id": s.key_id, "key": b64e(s.key), "from_seq": s.from_seq,
                 "until_seq": s.until_seq, "current": s.until_seq is None}
                for s in (history.spans if history else ())]
        certs = [{"fingerprint": peer.card.tls_fingerprint, "source": "card",
                  "expires": iso(cert_expiry_ms(peer.card.tls_cert_pem))}]
        for a in self.node.announced_certs(peer.center).get(peer.center, []):
            if a.fingerprint != peer.card.tls_fingerprint:
                certs.append({"fingerprint": a.fingerprint, "source": f"announced at seq {a.seq}",
                              "expires": iso(a.not_after_ms)})
        distrusted = await self.node.db.read(lambda c: keys_tx.distrusted(c, peer.center))
        sealing = self.node.seal_key_for(peer.center)
        out: dict[str, Any] = {"keys": keys, "certificates": certs,
                               "seal_key_in_use": b64e(sealing.key),
                               "seal_key_source": sealing.source if sealing.key else ""}
        if peer.distrust_after is not None:
            out["distrust_after"] = peer.distrust_after
        if distrusted:
            out["distrusted_entries"] = [{"seq": q, "key_id": k, "via": v, "received": iso(t)}
                                         for q, k, v, t in distrusted]
        return out

    def _peer_view(self, p: Peer) -> dict[str, Any]:
        link = self.links.get(p.center)
        return {"center": p.center, "name": p.card.name, "address": p.address,
                "groups": list(p.groups), "connect": p.connect, "introducer": p.introducer,
                "introduced_by": p.introduced_by, "conflict": p.conflict,
                "tls_fingerprint": p.card.tls_fingerprint,
                "state": link.state.state if link else ("not dialled" if not p.connect
                                                          else "stopped"),
                "seal_key": self._seal_state(p)}

    def _seal_state(self, p: Peer) -> str:
        """The card's seal-key state, or the announcement that replaced it."""
        sealing = self.node.seal_key_for(p.center)
        return f"announced (log seq {sealing.seq})" if sealing.seq else p.seal_key_state

    async def _add(self, user: User, req: Request) -> dict[str, Any]:
        card = parse_card(str(req.get("card") or ""))
        groups = tuple(check_group(g) for g in req.strings("groups"))
        peer = Peer(card, groups, bool(req.get("connect", True)),
                    introducer=bool(req.get("introducer")))
        if peer.introducer and not peer.connect:
            raise ValidationError("an introducer must be dialled (drop --no-connect)")
        self._forget_conflict(card.center)  # an administrator decided
        peers = with_peer(self.node.peers, peer, self.node.center, self.node.own_public_key)
        await self._commit(user.name, peers, "peer.add", {
            "peer": card.center, "address": card.address, "groups": list(groups),
            "connect": peer.connect, "introducer": peer.introducer,
            "tls_fingerprint": card.tls_fingerprint})
        return self._peer_view(peer)

    async def _update(self, user: User, req: Request) -> dict[str, Any]:
        """A center's new card after a compromise or a lost key (see the runbook)."""
        card = parse_card(str(req.get("card") or ""))
        old = self.node.peers.get(card.center)
        if old is None:
            raise NotFound(f"no pinned peer {card.center!r} (pin it with: fcnode peers add)")
        raw = req.get("distrust_after")
        distrust = None if raw is None else int(raw)
        held = await self.node.db.read(lambda c: keys_tx.held_head(c, card.center))
        peer = updated_peer(old, card, distrust, held)
        peers = with_peer(self.node.peers, peer, self.node.center, self.node.own_public_key)
        await self._commit(user.name, peers, "peer.update", {
            "peer": card.center, "address": card.address, "tls_fingerprint":
            card.tls_fingerprint, "signing_key": b64e(card.signing_key),
            "distrust_after": peer.distrust_after})
        moved = await self.node.apply_distrust(card.center)
        if moved:
            log.warning("entries signed by a distrusted key moved out of the log for review",
                        extra={"peer": card.center, "entries": moved,
                               "after_seq": peer.distrust_after})
            self._pin_tls()
            self._resubscribe_all()
        return {**self._peer_view(peer), "distrust_after": peer.distrust_after,
                "quarantined_for_review": moved}

    async def _remove(self, user: User, center: str) -> dict[str, Any]:
        if center not in self.node.peers:
            raise NotFound(f"no pinned peer {center!r}")
        peers = {c: p for c, p in self.node.peers.items() if c != center}
        self._forget_conflict(center)
        self.conflict_views.pop(center, None)  # an introducer's views go with it
        self.unsigned_views.pop(center, None)
        await self._commit(user.name, peers, "peer.remove", {"peer": center})
        return {"removed": center}

    async def _commit(self, actor: str, peers: dict[str, Peer], action: str,
                      detail: dict[str, Any]) -> None:
        path = self.node.home.peers
        await asyncio.get_running_loop().run_in_executor(
            None, save_peers, path, list(peers.values()))
        await self.node.db.run(lambda c: audit_tx.append(
            c, self.node.sign_audit, now_ms(), actor, action, detail))
        self.apply_peers(peers)


def _news(views: dict[str, dict[str, str]], introducer: str, view: dict[str, str]
          ) -> list[str]:
    """Keep ``view`` as the introducer's current one (only that: names it offered
    once must not pile up); the centers in it that are new or changed since."""
    before = views.get(introducer, {})
    views[introducer] = view
    return sorted(c for c, why in view.items() if before.get(c) != why)
