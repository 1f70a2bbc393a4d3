"""federation/verifypool.py: Ed25519 verification of catch-up batches in worker
processes (issue 10 item 3)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.verifypool import VerifyProcesses
from node.signing import ENTRY_DOMAIN, raw_public

# How long a test waits for something that should happen soon. Not a timing
# assertion: it turns "never happens" into a failure instead of a hang.
GUARD_S = 30.0

NODE = """
import time
from federation.verifypool import VerifyProcesses
pool = VerifyProcesses(2)
while not pool.available(1000):
    time.sleep(0.05)
print(" ".join(str(pid) for pid in pool._pool._processes), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_end_when_the_node_is_killed() -> None:
    """A node killed with SIGKILL leaves no verification process behind (they
    waited on their call queue for ever, and kept the fork server alive)."""
    node = subprocess.Popen([sys.executable, "-c", NODE], stdout=subprocess.PIPE, text=True)
    try:
        line = node.stdout.readline()  # type: ignore[union-attr]
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(GUARD_S)
    deadline = time.monotonic() + GUARD_S
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_verify_splits_the_work_and_keeps_the_order() -> None:
    key = Ed25519PrivateKey.generate()
    raw = raw_public(key.public_key())
    triples = []
    for i in range(100):
        message = ENTRY_DOMAIN + f"stub {i}".encode()
        signature = key.sign(message)
        if i % 7 == 3:
            message += b"!"  # not what was signed
        triples.append((raw, message, signature))

    async def main() -> list[bool] | None:
        pool = VerifyProcesses(2)
        try:
            while not pool.available(len(triples)):
                await asyncio.sleep(0.05)
            return await pool.verify(triples)
        finally:
            pool.shutdown()

    flags = asyncio.run(asyncio.wait_for(main(), GUARD_S))
    assert flags == [i % 7 != 3 for i in range(100)]


def test_small_batches_stay_in_the_node() -> None:
    pool = VerifyProcesses(2)
    try:
        assert not pool.available(3)
        assert pool._pool is None and not pool._starting  # nothing started for them
    finally:
        pool.shutdown()
