"""A replication or watch link that is told to stop, stops, even when the call it
was waiting on ends with an RPC error instead of CancelledError.

That is what grpc.aio does when the peer's error (UNAVAILABLE: "node shutting
down") arrives at the moment of the cancel: the call is already finished, so the
awaiting task gets the error and asyncio's cancel request is left unanswered. The
link then logged "replication link down", backed off and dialled again, and
`stop()` (awaiting the cancelled task) never returned: a daemon given SIGTERM
while its peers shut down too kept running until SIGKILL.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc

from federation.links import PeerLink
from federation.watch_sync import WatchClient


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), "node shutting down")


async def _call_that_turns_the_cancel_into_an_error() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise _unavailable() from None


async def _stops(link: Any) -> bool:
    link.start()
    await asyncio.sleep(0.05)  # the link is inside its call
    stopping = asyncio.ensure_future(link.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    # Unfixed, the loop never ends: let it (a plain call, cancels until it is done)
    # so that the test fails rather than hangs.
    link._session = lambda: asyncio.sleep(3600)
    while not link._task.done():
        link._task.cancel()
        await asyncio.sleep(0.05)
    await stopping
    return bool(done)


def test_replication_link_stops_when_its_call_ends_with_an_rpc_error() -> None:
    node = SimpleNamespace(recovery=SimpleNamespace(down=lambda center: None))
    link = PeerLink(node, None, SimpleNamespace(center="peer"), None,  # type: ignore[arg-type]
                    lambda: None)
    link._session = _call_that_turns_the_cancel_into_an_error  # type: ignore[method-assign]
    assert asyncio.run(_stops(link)), "stop() hung: the link went on dialling"


def test_watch_link_stops_when_its_call_ends_with_an_rpc_error() -> None:
    async def run() -> bool:
        client = WatchClient(None, None, "peer", None, None)  # type: ignore[arg-type]
        client._session = _call_that_turns_the_cancel_into_an_error  # type: ignore[method-assign]
        return await _stops(client)

    assert asyncio.run(run()), "stop() hung: the watch link went on registering"
