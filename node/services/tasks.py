"""Background tasks of the daemon (matchers, links, sweeps): one way to end them."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Future[object] | None) -> None:
    """Cancel the task and wait until it has ended (its CancelledError is the
    expected end, not an error): nothing of it runs after this returns."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
