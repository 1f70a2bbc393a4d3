"""Federation inside the daemon: the mutual-TLS listener, one replication link
per dialled peer, and the admin operations on peers. The daemon creates one
Federation and calls start/stop/apply_peers; node/ never imports this."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from federation.links import PeerLink
from federation.query_answer import QueryAnswerer
from federation.query_fanout import QueryFanout
from federation.tls import PinnedTls
from federation.transport.server import FederationServicer
from federation.watch_sync import StandingServer, WatchClient
from node import logs, metrics
from node.home import HomeError, check_group
from node.identity import parse_card
from node.keys import load_tls
from node.localapi import Request
from node.peer_edits import with_peer
from node.peers import Peer, all_groups, save_peers
from node.query import make_params
from node.service import NodeService, NotFound
from node.standard_services import add_standard_services
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import watches as watch_tx
from node.timeutil import iso, now_ms, parse_duration_ms, parse_instant_ms
from node.types import ValidationError
from node.users import User
from node.watches import Watches
from node.wire import federation_pb2, federation_pb2_grpc

log = logs.get("fcnode.federation")
Extension = Callable[[User, Request], Awaitable[Any]]


class Federation:
    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.tls = PinnedTls(load_tls(node.home.tls_key, node.home.tls_cert),
                             node.peers.values())
        self.answerer = QueryAnswerer(node)
        self.servicer = FederationServicer(node, self.tls, self.answerer.handle)
        self.fanout = QueryFanout(node, lambda c: self.links[c].channel(),
                                  lambda: sorted(self.links))
        self.links: dict[str, PeerLink] = {}
        self.watches: Watches | None = None
        self.watch_clients: dict[str, WatchClient] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
        self.server: grpc.aio.Server | None = None
        self._lock = asyncio.Lock()
        self._stopping: set[asyncio.Future[None]] = set()

    def attach_watches(self, watches: Watches) -> None:
        """Network watches: this node's signed set goes to its peers; theirs are
        answered here (federation/watch_sync.py)."""
        self.watches = watches
        self.servicer.standing = StandingServer(self.node, watches)
        watches.network_changed.append(self._watches_changed)
        self.node.users_changed.append(self._watches_changed)

    def _watches_changed(self) -> None:
        for client in self.watch_clients.values():
            client.changed.set()

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
        for peer in self.node.peers.values():
            self._start_link(peer)

    async def stop(self) -> None:
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
                        self._resubscribe_all, self._serve_again)
        self.links[peer.center] = link
        link.start()
        if self.watches is not None:
            client = WatchClient(self.node, self.watches, peer.center, link.channel)
            self.watch_clients[peer.center] = client
            client.start()

    def _resubscribe_all(self) -> None:
        """Cursors for an origin moved back (ingest dropped false hints): every
        link, not only the one that saw the contradiction, fetches again."""
        for link in self.links.values():
            link.resubscribe()

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
        self.tls.update(peers.values())
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
        if set(old) != set(peers):
            # Each link asks for the origins pinned when it subscribed: a changed
            # set of centers means every link subscribes again (from its cursors).
            for center in list(self.links):
                self._stop_link(center)
        for center, peer in peers.items():
            if center not in self.links:
                self._start_link(peer)
        self.node.changes.bump()  # streams re-evaluate what each peer may receive

    def peer_views(self) -> list[metrics.PeerView]:
        """Each pinned peer's link state, for the metrics page (no I/O)."""
        out = []
        for center, peer in list(self.node.peers.items()):
            link = self.links.get(center)
            if link is None:
                state, heads, contact = ("not dialled" if not peer.connect else "stopped"), {}, 0
            else:
                state, heads = link.state.state, dict(link.state.heads)
                contact = link.state.last_contact_ms
            out.append(metrics.PeerView(center, state, heads, contact, peer.card.tls_cert_der))
        return out

    # -- local API extensions ------------------------------------------------
    def local_extensions(self) -> dict[str, Extension]:
        return {"status": self.status, "peers": self.peers_op,
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
                                             req.strings("centers") or None))

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
        return {"listen": self.node.config.listen, "peers": peers,
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
                 "decision": r[8]} for r in rows]

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
            return {**self._peer_view(peer), "card": peer.card.line()}
        if op == "groups":
            return all_groups(self.node.config.groups, self.node.peers.values())
        async with self._lock:  # one writer of peers.toml at a time
            if op == "add":
                return await self._add(user, req)
            if op == "remove":
                return await self._remove(user, str(req.get("center")))
        raise ValidationError(f"unknown peers operation {op!r}")

    def _peer_view(self, p: Peer) -> dict[str, Any]:
        link = self.links.get(p.center)
        return {"center": p.center, "name": p.card.name, "address": p.address,
                "groups": list(p.groups), "connect": p.connect,
                "tls_fingerprint": p.card.tls_fingerprint,
                "state": link.state.state if link else ("not dialled" if not p.connect
                                                          else "stopped")}

    async def _add(self, user: User, req: Request) -> dict[str, Any]:
        card = parse_card(str(req.get("card") or ""))
        groups = tuple(check_group(g) for g in req.strings("groups"))
        peer = Peer(card, groups, bool(req.get("connect", True)))
        peers = with_peer(self.node.peers, peer, self.node.center, self.node.own_public_key)
        await self._commit(user, peers, "peer.add", {
            "peer": card.center, "address": card.address, "groups": list(groups),
            "connect": peer.connect, "tls_fingerprint": card.tls_fingerprint})
        return self._peer_view(peer)

    async def _remove(self, user: User, center: str) -> dict[str, Any]:
        if center not in self.node.peers:
            raise NotFound(f"no pinned peer {center!r}")
        peers = {c: p for c, p in self.node.peers.items() if c != center}
        await self._commit(user, peers, "peer.remove", {"peer": center})
        return {"removed": center}

    async def _commit(self, user: User, peers: dict[str, Peer], action: str,
                      detail: dict[str, Any]) -> None:
        path = self.node.home.peers
        await asyncio.get_running_loop().run_in_executor(
            None, save_peers, path, list(peers.values()))
        await self.node.db.run(lambda c: audit_tx.append(
            c, self.node.sign_audit, now_ms(), user.name, action, detail))
        self.apply_peers(peers)
