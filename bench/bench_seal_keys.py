"""What asking which seal key is in use for a center costs when its log holds many
SEAL_KEY_ROTATION entries (a hostile center may announce at every entry), per call
of NodeService.seal_key_for: asked for every sealed answer part, copy and hit.

Before session 17's red team every call sorted all the center's announcements
(node.core.keyhistory.seal_key_in_use); now that is done once per change and a call
is a lookup. Also prints the memory the announcements hold (every node keeps them
in memory: see README, known limits). In-process, no daemons; CPU time.

    .venv/bin/python bench/bench_seal_keys.py [--announcements 200000]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from types import SimpleNamespace

from node.config.identity import IdentityCard
from node.config.peers import Peer
from node.core.keyhistory import SealAnnouncement, seal_key_in_use
from node.services.service import NodeService


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--announcements", type=int, default=200_000)
    ap.add_argument("--calls", type=int, default=20)
    n = ap.parse_args().announcements
    calls = ap.parse_args().calls
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    card = IdentityCard("evil", "127.0.0.1:1", os.urandom(32), "00" * 32, "Evil", b"")
    tracemalloc.start()
    keys = [b"", *(os.urandom(32) for _ in range(n))]
    anns = {i: SealAnnouncement("evil", i, keys[i - 1], keys[i]) for i in range(1, n + 1)}
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{n:,} announcements held in memory: {held / 1e6:.0f} MB")

    t = time.process_time()
    for _ in range(calls):
        seal_key_in_use(b"", anns.values(), 0)
    before = (time.process_time() - t) / calls
    node = SimpleNamespace(peers={"evil": Peer(card, connect=False)}, _seal_use={},
                           _seal_generation=1, _seals={"evil": anns})
    t = time.process_time()
    NodeService.seal_key_for(node, "evil")  # type: ignore[arg-type]
    first = time.process_time() - t
    t = time.process_time()
    for _ in range(calls * 1000):
        NodeService.seal_key_for(node, "evil")  # type: ignore[arg-type]
    after = (time.process_time() - t) / (calls * 1000)
    print(f"per call, sorting every time (before): {before * 1000:.1f} ms CPU")
    print(f"first call after a change (now):       {first * 1000:.1f} ms CPU")
    print(f"per call after that (now):             {after * 1e6:.2f} us CPU "
          f"({before / after:,.0f}x less)")


if __name__ == "__main__":
    main()
