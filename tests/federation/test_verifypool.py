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
from node.core.signing import ENTRY_DOMAIN, raw_public

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


def test_a_link_verifies_a_catch_up_batch_in_the_workers_and_rejects_a_forgery() -> None:
    """federation.links.PeerLink._verify with the workers ready: one forged envelope
    in a batch of 100 is rejected, the 99 others pass, and the workers did the work."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from federation.links import PeerLink
    from node.core.signing import entry_hash, key_id, seal_record
    from node.wire import federation_pb2, records_pb2

    key = Ed25519PrivateKey.generate()
    keys = {key_id(key.public_key()): key.public_key()}
    items = []
    for seq in range(1, 101):
        body = records_pb2.RecordBody(origin="org", seq=seq, record_id=f"r{seq}", version=1,
                                      kind=records_pb2.TIP, title=f"tip {seq}")
        env = seal_record(key, body)
        items.append(federation_pb2.LogItem(origin="org", seq=seq,
                                            hash=entry_hash(env.payload), envelope=env))
    items[41].envelope.signature = items[40].envelope.signature  # another entry's

    async def main() -> tuple[list[str], int]:
        procs = VerifyProcesses(2)
        calls = []
        verify = procs.verify

        async def counted(triples):  # type: ignore[no-untyped-def]
            calls.append(len(triples))
            return await verify(triples)

        procs.verify = counted  # type: ignore[method-assign]
        threads = ThreadPoolExecutor(2)
        try:
            while not procs.available(len(items)):
                await asyncio.sleep(0.05)
            node = SimpleNamespace(history_of=lambda origin: keys if origin == "org" else {},
                                   config=SimpleNamespace(limits=SimpleNamespace(
                                       max_sealed_copies=32)))
            link = PeerLink(node, None, SimpleNamespace(center="peer"), threads,  # type: ignore[arg-type]
                            lambda: None, procs=procs)
            checked = await link._verify(items)
            return [c.error for c in checked], sum(calls)
        finally:
            procs.shutdown()
            threads.shutdown()

    errors, sent = asyncio.run(asyncio.wait_for(main(), GUARD_S))
    assert sent == 100  # every envelope went to the workers
    assert [i for i, e in enumerate(errors) if e] == [41]
    assert errors[41].startswith("bad signature")


def test_verify_processes_setting() -> None:
    """[limits] verify_processes: 0 starts no pool (one-core hosts, many daemons on
    one machine), -1 one worker per core (at most 4), N exactly N."""
    from federation.verifypool import default_workers, for_config
    from node.config.home import parse_config

    def workers(value: int) -> int | None:
        cfg = parse_config({"node": {"center": "ab", "listen": "127.0.0.1:7701"},
                            "limits": {"verify_processes": value}}, "node.toml")
        procs = for_config(cfg.limits.verify_processes)
        return None if procs is None else procs.workers

    assert workers(0) is None
    assert workers(-1) == default_workers() and 1 <= default_workers() <= 4
    assert workers(3) == 3
