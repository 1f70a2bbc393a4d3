"""Ed25519 verification of catch-up batches in worker processes.

cryptography holds the GIL while it verifies (its Ed25519 ``verify`` does not
release it; measured on this 2-core machine: two threads verify at 1.1-1.3x
one thread, and a busy Python thread beside a verifying one more than halves
its rate). In one process, ingest is therefore bound by one core for
verification, storage, and the reads of the node's own users together. Here
the Ed25519 arithmetic of a large batch runs in other processes, as plain
(key, message, signature) triples (node.core.signing.verify_triples); every other
check of an entry still runs in the node (federation.ingest.check_items, which
skips only the arithmetic of a triple that verified, for exactly those bytes).

The pool starts when the first large batch arrives (a node that never catches
up never starts it) and is used once its workers answered; until then, and if
it ever breaks, batches are verified in the node's threads as before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

from node.core.signing import Triple, verify_triples
from node.telemetry import logs

log = logs.get("fcnode.federation.verify")

# Below this many envelopes a batch is verified in the node's own threads: a live
# entry or two is not worth the round trip to another process.
MIN_BATCH = 64


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _outlive_no_node(node_pid: int) -> None:
    """A worker's initializer: exit when the node is gone. A worker waits on its
    call queue, whose write end it holds itself, so a node killed with SIGKILL
    (a crash, the OOM killer) would otherwise leave its workers, and through them
    the fork server, running for ever."""
    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            try:
                os.kill(node_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid was reused by another user's process
                os._exit(0)

    threading.Thread(target=watch, name="node-watch", daemon=True).start()


WATCH_S = 1.0


def for_config(workers: int) -> VerifyProcesses | None:
    """``[limits] verify_processes``: -1 one per core (at most 4), 0 none, N that many."""
    if workers == 0:
        return None
    return VerifyProcesses(workers if workers > 0 else None)


class VerifyProcesses:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ProcessPoolExecutor | None = None
        self._ready = False
        self._broken = False
        self._starting = False

    def _start(self) -> None:
        """Runs in a thread: starting the fork server waits for it to answer."""
        # forkserver, not fork: the daemon has gRPC and SQLite threads, which a
        # forked child would inherit in whatever state they were. Every child
        # imports the daemon's main module (multiprocessing's spawn preparation):
        # the fork server imports it once, so the children have it already.
        # (`python -m node.cli.main serve` names it; the `fcnode` script imports it.)
        context = multiprocessing.get_context("forkserver")
        main = getattr(sys.modules.get("__main__"), "__spec__", None)
        preload = ["node.core.signing", *([main.name] if main else []),
                   *(m for m in ("node.cli.main",) if m in sys.modules)]
        context.set_forkserver_preload(list(dict.fromkeys(preload)))
        pool = ProcessPoolExecutor(self.workers, mp_context=context,
                                   initializer=_outlive_no_node, initargs=(os.getpid(),))

        def started(f: Future[list[bool]]) -> None:
            if f.exception() is None:
                self._ready = True
            else:
                self._broken = True
                log.warning("verification processes did not start; verifying in threads",
                            extra={"error": repr(f.exception())})

        # One call per worker, so that every worker has imported what it needs.
        for _ in range(self.workers):
            pool.submit(verify_triples, []).add_done_callback(started)
        self._pool = pool
        if self._broken:  # shut down while starting
            pool.shutdown(wait=False, cancel_futures=True)

    def available(self, size: int) -> bool:
        """Whether a batch of ``size`` envelopes goes to the processes (starting
        them on the first large batch)."""
        if size < MIN_BATCH or self._broken:
            return False
        if not self._starting:
            self._starting = True
            threading.Thread(target=self._start_or_fail, name="verify-start",
                             daemon=True).start()
        return self._ready

    def _start_or_fail(self) -> None:
        try:
            self._start()
        except Exception as exc:  # no processes on this host: threads, as before
            self._broken = True
            log.warning("verification processes did not start; verifying in threads",
                        extra={"error": repr(exc)})

    async def verify(self, triples: list[Triple]) -> list[bool] | None:
        """Each triple's validity, the work split over the workers; None if the
        pool broke (a worker killed): the caller verifies itself."""
        pool = self._pool
        if pool is None or not triples:
            return None
        loop = asyncio.get_running_loop()
        size = -(-len(triples) // self.workers)
        chunks = [triples[i:i + size] for i in range(0, len(triples), size)]
        try:
            parts = await asyncio.gather(*(loop.run_in_executor(pool, verify_triples, chunk)
                                           for chunk in chunks))
        except Exception as exc:  # BrokenProcessPool, a pickling error: never fatal
            if not self._broken:
                log.warning("verification processes failed; verifying in threads",
                            extra={"error": repr(exc)})
            self._broken = True
            return None
        return [ok for part in parts for ok in part]

    def shutdown(self) -> None:
        self._broken = True  # nothing starts after this
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
