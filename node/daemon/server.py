"""`fcnode serve`: the daemon. Owns the event loop, signals, sockets and reload;
composes the node service, the local API and federation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from federation.transport.standard_services import add_standard_services
from node.config import keys
from node.config.home import AlreadyRunning, Home, HomeError, acquire_lock, load_config
from node.config.peers import load_peers
from node.core.recovery import HELD_CHOICE
from node.core.signing import raw_public
from node.daemon.localapi import LocalServicer
from node.services.lifecycle import Lifecycle
from node.services.service import NodeService
from node.services.watches import Watches
from node.storage.db import Database
from node.telemetry import logs
from node.wire import local_pb2, local_pb2_grpc

log = logs.get("fcnode.daemon")
__all__ = ["AlreadyRunning", "acquire_lock", "serve"]


async def _start_local(node: NodeService, lifecycle: Lifecycle, socket: Path,
                       extensions: dict[str, Any], watches: Watches) -> grpc.aio.Server:
    socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    node.home.socket_dir_is_private()
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()  # stale from a killed daemon: we hold the lock, so it is ours
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    local_pb2_grpc.add_LocalServicer_to_server(LocalServicer(node, lifecycle, extensions, watches),
                                              server)
    hs = add_standard_services(server, [local_pb2.DESCRIPTOR.services_by_name["Local"].full_name])
    old_umask = os.umask(0o077)  # the socket is for this node's operators only
    try:
        if not server.add_insecure_port(f"unix:{socket}"):
            raise HomeError(f"cannot bind the local API socket {socket}")
    finally:
        os.umask(old_umask)
    await server.start()
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    return server


async def serve(home: Home) -> None:
    config = load_config(home)
    signing = keys.load_signing_key(home.signing_key)
    if keys.finish_tls_switch(home.tls_key, home.tls_cert):
        log.warning("finished installing the renewed TLS certificate (interrupted before)")
    keys.load_tls(home.tls_key, home.tls_cert)  # fail now on a bad TLS key file, not later
    peers = load_peers(home.peers, config.center, raw_public(signing.public_key()))
    config.check_routing(set(peers))
    lock = acquire_lock(home)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lock.close)
        db = Database(home.database)
        await db.open()
        stack.push_async_callback(db.close)
        node = NodeService(home, config, signing, db, peers)
        await node.load_key_history()  # learned rotations; finishes an interrupted swap
        await node.load_recovery()  # a restore (or a peer seen ahead) left it recovering
        if node.recovery.active:
            log.warning("recovering own log from peers before publishing",
                        extra={"reason": node.recovery.reason})
        elif node.recovery.held is not None:
            log.error("own log HELD: nothing is adopted or signed until an administrator "
                      f"decides ({HELD_CHOICE})", extra={
                          "peer": node.recovery.held.peer, "first_seq": node.recovery.held.seq,
                          "own_head": node.recovery.held.own_head})
        stubbed = await node.sign_missing_stubs()  # entries from before stubs existed
        if stubbed:
            log.info("signed stubs for older entries", extra={"entries": stubbed})

        from federation.runtime import Federation  # daemon composes; node/ core never does

        lifecycle = Lifecycle(node)
        # Runs after federation.stop (no purge arrives after it), before db.close.
        stack.push_async_callback(lifecycle.finish)
        federation = Federation(node)
        stack.push_async_callback(federation.stop)
        stack.push_async_callback(lifecycle.stop)
        watches = Watches(node)
        federation.attach_watches(watches)
        stack.push_async_callback(watches.stop)
        local = await _start_local(node, lifecycle, home.socket, federation.local_extensions(),
                                   watches)
        stack.push_async_callback(_stop_local, local, home.socket)
        await federation.start()
        lifecycle.start()
        await watches.start()
        if config.metrics_listen:
            from node.services.scrape import MetricsServer, NodeCollector

            metrics = MetricsServer(config.metrics_listen, NodeCollector(
                home.database, home.tls_cert, federation.peer_views))
            metrics.start()
            stack.callback(metrics.stop)
            log.info("metrics listening", extra={"metrics": config.metrics_listen})
        await _run_until_signalled(home, node, federation)
    log.info("stopped", extra={"center": config.center})


async def _stop_local(server: grpc.aio.Server, socket: Path) -> None:
    await server.stop(grace=2)
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()


async def _run_until_signalled(home: Home, node: NodeService, federation: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload() -> None:
        try:
            # Both files are read before either applies: a refused peers.toml
            # keeps the whole running configuration, node.toml included.
            config = load_config(home)
            peers = load_peers(home.peers, node.center, node.own_public_key)
            config.check_routing(set(peers))
            node.config = config
            federation.apply_peers(peers)
            log.info("reloaded configuration", extra={"peers": sorted(node.peers)})
        except HomeError as exc:
            log.error("reload refused; keeping the running configuration",
                      extra={"reason": str(exc)})

    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("serving", extra={"center": node.center, "socket": str(home.socket),
                               "federation": node.config.listen, "peers": sorted(node.peers)})
    await stop.wait()
    log.info("shutting down", extra={"center": node.center})
