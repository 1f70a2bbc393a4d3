"""Watches (issue 12): publish-to-hit latency, and what 1,000 standing queries cost.

    .venv/bin/python bench/bench_watch.py                     # defaults: a few minutes
    .venv/bin/python bench/bench_watch.py --samples 20 --records 1000

1. Latency, two hops. origin -- hub -- watcher (the watcher dials only the hub;
   origin and watcher pin each other's keys without dialling). The watcher's
   network watch is a standing query FORWARDED by the hub to the origin; the
   record (AMBER, for the origin and the watcher only) is one the hub may not
   hold, so the only way it reaches the watcher is the origin's hit, sealed to
   the watcher and passed back through the hub's outbox (pull, then pull again).
   Measured from just before the origin's Publish call to the moment
   `watch hits --follow` (the local API stream) yields the hit at the watcher.
   Prints p50/p99.
2. Latency, one hop, network watch: a direct peer's standing query answered by
   the origin for a record it does not replicate (origin-only, a POINTER hit),
   delivered through the origin's outbox stream.
3. Cost of 1,000 standing queries. A node (A) with none, then a fresh node with
   1,000 registered by a peer (10 users x 100 network watches, max_watches_per_peer
   raised to 1,000); that peer is then stopped, so only A's work is measured.
   Prints (a) replication ingest at A of --records records from a third center,
   until stored and judged (the watch queue empty), and (b) batch
   publish at A of --records records of its own, each matching one standing query
   (so each is judged and written to the outbox), until judged. Ratios with/without.

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from typing import Any

import _harness as h

from node.cli.client import Client

PLATE = "plate=BW 0001"


def _user(node: h.Node, name: str, *attrs: str) -> Client:
    node.add_user(name, *attrs)
    return node.client(name)


def _watch(client: Client, **req: Any) -> str:
    filters = {k: v for k, v in req.items() if k not in ("network", "expires")}
    w = client.call("AddWatch", {**{k: v for k, v in req.items() if k not in filters},
                                 "filters": filters})
    return w["watch_id"]


def _db(node: h.Node) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.home / 'node.db'}?mode=ro", uri=True)


def _count(node: h.Node, sql: str) -> int:
    with contextlib.closing(_db(node)) as c:
        return int(c.execute(sql).fetchone()[0])


def _latency(origin: h.Node, follower: Client, samples: int, draft: dict[str, Any],
             what: str) -> list[float]:
    """Publish ``samples`` records one at a time; time each until the follow stream
    at the watcher yields its hit."""
    arrived: dict[str, float] = {}
    lock = threading.Condition()

    def follow() -> None:
        with contextlib.suppress(Exception):
            for hit in follower.stream("WatchHits", {"follow": True},
                                       timeout=3600):
                with lock:
                    arrived[hit["record_id"]] = time.perf_counter()
                    lock.notify_all()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(1.0)
    out: list[float] = []
    for i in range(samples):
        d = dict(draft, title=f"{draft['title']} {i}")
        t0 = time.perf_counter()
        (rec,) = origin.publish_drafts([d])
        with lock:
            if not lock.wait_for(lambda r=rec["record_id"]: r in arrived, timeout=30):
                h.info(f"{what}: sample {i} did not arrive in 30 s")
                continue
            out.append(arrived[rec["record_id"]] - t0)
        time.sleep(0.05)
    follower.close()  # ends the follow stream (and its thread) before the cluster goes
    return out


def _report(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    h.figure(f"{name} p50", f"{h.percentile(ms, 50):.1f} ms")
    h.figure(f"{name} p99", f"{h.percentile(ms, 99):.1f} ms", note=f"({len(ms)} samples)")


def bench_latency(samples: int) -> dict[str, Any]:
    h.section("publish -> hit latency")
    with h.Cluster() as cl:
        origin, hub, watcher = cl.init(["origin", "hub", "watcher"])
        cl.start([origin, hub, watcher])
        for a, b in ((origin, hub), (hub, origin), (hub, watcher), (watcher, hub)):
            a.pin(b)
        watcher.call("AddPeer", {"card": origin.card(), "connect": False})
        origin.call("AddPeer", {"card": watcher.card(), "connect": False})
        analyst = _user(watcher, "analyst", "sworn_le")
        wid = _watch(analyst, entities=[PLATE], network=True)
        # Registered at the origin through the hub (not a direct peer).
        h.wait_until(lambda: _count(origin, "SELECT count(*) FROM standing_queries q JOIN "
                                    "standing_sync s ON s.center = q.center WHERE "
                                    f"q.watch_id = '{wid}' AND s.via = 'hub'") == 1, 30)
        sealed = {"kind": "BOLO", "title": "bench forwarded", "entities": [PLATE],
                  "policy": {"tlp": "AMBER", "audience": ["origin", "watcher"]}}
        two = _latency(origin, analyst, samples, sealed, "two hops")
        _report("two hops (forwarded standing query, FULL sealed through the hub)", two)
        held = _count(hub, "SELECT count(*) FROM entries WHERE origin = 'origin' "
                           "AND payload IS NOT NULL")
        h.info(f"entries of the origin whose content the hub holds: {held} (of {samples})")
    with h.Cluster() as cl:
        origin, watcher = cl.init(["origin", "watcher"])
        cl.start([origin, watcher])
        origin.pin(watcher)
        watcher.pin(origin)
        analyst = _user(watcher, "analyst", "sworn_le")
        wid = _watch(analyst, entities=[PLATE], network=True)
        h.wait_until(lambda: _count(origin, "SELECT count(*) FROM standing_queries "
                                    f"WHERE watch_id = '{wid}'") == 1, 20)
        pointer = {"kind": "BOLO", "title": "bench pointer", "entities": [PLATE],
                   "policy": {"tlp": "AMBER", "audience": []}}
        one = _latency(origin, analyst, samples, pointer, "one hop")
        _report("one hop (network watch, POINTER)", one)
    return {"two_hops_ms": [v * 1000 for v in two], "one_hop_ms": [v * 1000 for v in one]}


def _drain_wait(node: h.Node, timeout: float = 300) -> None:
    h.wait_until(lambda: _count(node, "SELECT count(*) FROM watch_queue") == 0, timeout, 0.02)


def _ingest_run(records: int, standing: int) -> tuple[float, float]:
    corpus = h.Corpus(records)
    with h.Cluster() as cl:
        a, b, c = cl.init(["alpha", "bravo", "charlie"])
        text = (a.home / "node.toml").read_text()
        (a.home / "node.toml").write_text(text.replace("max_watches_per_peer = 100",
                                                       "max_watches_per_peer = 1000"))
        cl.start([a, b, c])
        for x, y in ((a, b), (b, a), (a, c), (c, a)):
            x.pin(y)
        if standing:
            per_user = 100
            for u in range(standing // per_user):
                client = _user(b, f"u{u}", "sworn_le")
                for i in range(per_user):
                    _watch(client, entities=[f"plate={corpus.plate(u * per_user + i)}"],
                           network=True)
            h.wait_until(lambda: _count(a, "SELECT count(*) FROM standing_queries")
                         == standing, 60)
            h.info(f"{_count(a, 'SELECT count(*) FROM standing_queries')} standing queries "
                   "registered at alpha")
        # (a) replication ingest of charlie's records at alpha. bravo (whose 1,000
        # watches would judge every relayed record on the same two cores) is stopped:
        # its standing queries stay registered at alpha, durably.
        cl.stop([a, b])
        for first, n in h.batches(0, records, 500):
            c.publish_drafts(corpus.drafts(first, n))
        cl.start([a])
        t0 = time.perf_counter()
        h.wait_until(lambda: _count(a, "SELECT count(*) FROM records WHERE origin = 'charlie'")
                     >= records, 300, 0.02)
        _drain_wait(a)
        ingest = records / (time.perf_counter() - t0)
        # (b) alpha's own publish, each record matching one standing query
        t0 = time.perf_counter()
        for first, n in h.batches(0, records, 500):
            a.publish_drafts(corpus.drafts(first, n))
        _drain_wait(a)
        publish = records / (time.perf_counter() - t0)
        if standing:
            h.info(f"outbox rows for bravo: {_count(a, 'SELECT count(*) FROM watch_outbox')}")
    return ingest, publish


def bench_cost(records: int) -> dict[str, Any]:
    h.section(f"1,000 standing queries vs none ({records} records each way)")
    base = _ingest_run(records, 0)
    h.figure("ingest, no standing queries", f"{base[0]:.0f} rec/s")
    h.figure("own publish, no standing queries", f"{base[1]:.0f} rec/s")
    loaded = _ingest_run(records, 1000)
    h.figure("ingest, 1,000 standing queries", f"{loaded[0]:.0f} rec/s",
             note=f"ratio {loaded[0] / base[0]:.2f}")
    h.figure("own publish, 1,000 standing queries", f"{loaded[1]:.0f} rec/s",
             note=f"ratio {loaded[1] / base[1]:.2f} (every record judged and queued)")
    return {"ingest": [base[0], loaded[0]], "publish": [base[1], loaded[1]]}


def main() -> int:
    p = h.arg_parser(__doc__ or "")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    h.machine_note()
    out = {} if args.skip_latency else bench_latency(args.samples)
    out.update(bench_cost(args.records))
    h.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    h.run_main(main)
