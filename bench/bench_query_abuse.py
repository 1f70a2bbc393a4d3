"""What one hostile peer can cost a node through federated query (issue 8, items 7 and 8).

    .venv/bin/python bench/bench_query_abuse.py                  # defaults: about a minute
    .venv/bin/python bench/bench_query_abuse.py --seconds 5 --restricted 200 --queries 20

1. Answer flood. One requester daemon and one hand-driven hostile peer (the
   tests' Rogue, in this process) whose every answer is --flood-messages messages
   of --flood-records signed 200 KB records each. Queries run back to back from
   one thread for --seconds while another thread times `status` through the
   requester's local API. Prints `status` p50/p99 with no query running, then
   during the flood, and the ratio; and what the requester took of each answer
   (records, dropped, truncated).
2. Restricted hits. One origin daemon holding --restricted restricted records on
   one phone number; the hostile peer sends --queries signed queries for it,
   each with the longest text and the most entity keys a query may carry.
   Prints, per query, the bytes of rows the origin wrote (notices, audit,
   disseminations, replay memory: sum of column lengths) and the growth of its
   database files (node.db + WAL).

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import _harness as h

from node.core import entities
from node.core.query import MAX_ENTITY_KEYS, MAX_TEXT
from node.wire import federation_pb2, records_pb2
from tests.integration.rogue import Rogue

PHONE = ("phone", "555 010 4242")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = h.arg_parser(__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="flood duration (default 20)")
    p.add_argument("--flood-records", type=int, default=30,
                   help="200 KB records per flood message (default 30: 6 MB)")
    p.add_argument("--flood-messages", type=int, default=1000,
                   help="messages per flood answer (default 1000)")
    p.add_argument("--restricted", type=int, default=1000,
                   help="restricted records on one entity at the origin (default 1000)")
    p.add_argument("--queries", type=int, default=50,
                   help="hostile queries for the restricted records (default 50)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def timed_status(node: h.Node, stop: threading.Event, out: list[float]) -> None:
    client = h.Client(h.Home(node.home), node.token, timeout=60.0)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            client.call("Status")
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.01)
    finally:
        client.close()


def wait_connected(node: h.Node, center: str, timeout: float = 30) -> bool:
    return h.wait_until(lambda: any(p.get("center") == center and p.get("state") == "connected"
                                    for p in node.status().get("peers", [])), timeout, 0.2)


def bench_flood(cluster: h.Cluster, args: argparse.Namespace, out: dict[str, Any]) -> None:
    h.section("1. status while one peer floods its query answers")
    (req,) = cluster.init(["req"])
    cluster.start([req])
    rogue = Rogue(cluster.root, "flood")
    big = "flood " + "x" * 200_000
    envs = [rogue.item(records_pb2.RecordBody(
        origin="flood", seq=i, record_id=f"f{i}", version=1, created_ms=1_700_000_000_000,
        expires_ms=4_000_000_000_000, kind=records_pb2.BULLETIN, title=f"flood {i}",
        narrative=big, policy=records_pb2.AccessPolicy(
            tlp=records_pb2.GREEN, audience=["members"], discoverability=records_pb2.POINTER,
            relay=True))).envelope for i in range(1, args.flood_records + 1)]
    message = federation_pb2.QueryAnswer(records=envs)
    rogue.flood = (message, args.flood_messages)
    rogue.serve(req.card())
    req.call("AddPeer", {"card": rogue.card.line()})
    if not wait_connected(req, "flood"):
        h.info("the requester did not connect to the flooding peer; measuring anyway")
    h.info(f"each answer offered: {args.flood_messages} messages x "
           f"{message.ByteSize() / 2**20:.1f} MiB "
           f"({args.flood_messages * message.ByteSize() / 2**30:.1f} GiB)")

    def measure(seconds: float, flood: bool) -> tuple[list[float], list[dict[str, Any]]]:
        stop, samples, summaries = threading.Event(), [], []
        timer = threading.Thread(target=timed_status, args=(req, stop, samples))
        timer.start()
        deadline = time.monotonic() + seconds
        client = h.Client(h.Home(req.home), req.token, timeout=120.0)
        try:
            while time.monotonic() < deadline:
                if not flood:
                    time.sleep(0.1)
                    continue
                rows = list(client.stream("Query", {"filters": {"text": "flood", "limit": 500},
                                                    "timeout": "30s"}))
                summaries.append(rows[-1]["summary"]["flood"])
        finally:
            stop.set()
            timer.join()
            client.close()
        return samples, summaries

    quiet, _ = measure(min(5.0, args.seconds), flood=False)
    loud, summaries = measure(args.seconds, flood=True)
    p99_quiet, p99_loud = h.percentile(quiet, 99), h.percentile(loud, 99)
    h.figure("status p50 / p99, no query", f"{h.percentile(quiet, 50):.1f} / {p99_quiet:.1f} ms")
    h.figure("status p50 / p99, during the flood",
             f"{h.percentile(loud, 50):.1f} / {p99_loud:.1f} ms",
             note=f"({len(loud)} calls, ratio p99 {p99_loud / max(p99_quiet, 1e-9):.1f}x)")
    if summaries:
        s = summaries[-1]
        h.figure("flooded queries completed", f"{len(summaries)}",
                 note=f"(last: {s.get('results', 0)} records taken, {s.get('dropped', 0)} "
                      f"dropped, truncated={s.get('truncated', False)}, {s.get('ms')} ms; "
                      f"{s.get('reason', '')})")
    out["flood"] = {"status_quiet_ms": {"p50": h.percentile(quiet, 50), "p99": p99_quiet},
                    "status_flood_ms": {"p50": h.percentile(loud, 50), "p99": p99_loud},
                    "queries": len(summaries), "last": summaries[-1] if summaries else None}
    rogue.stop()
    cluster.stop([req])


def written(db: Path) -> dict[str, int]:
    """Bytes held in the tables a query answer writes (sum of column lengths)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        q = {"notices": "SELECT coalesce(sum(length(detail) + length(record_id) + 40), 0) "
                        "FROM notices",
             "audit": "SELECT coalesce(sum(length(detail) + length(actor) + length(action) "
                      "+ 80), 0) FROM audit",
             "disseminations": "SELECT coalesce(sum(length(center) + length(origin) "
                               "+ length(record_id) + 40), 0) FROM disseminations",
             "seen_queries": "SELECT coalesce(sum(length(center) + length(query_id) + 8), 0) "
                             "FROM seen_queries"}
        return {k: conn.execute(v).fetchone()[0] for k, v in q.items()}


def files(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("node.db*"))


def bench_restricted(cluster: h.Cluster, args: argparse.Namespace,
                     out: dict[str, Any]) -> None:
    h.section("2. what one hostile query makes the origin write")
    (origin,) = cluster.init(["origin"])
    cluster.start([origin])
    drafts = [{"kind": "BOLO", "title": f"Restricted case {i}", "entities": [
        f"{PHONE[0]}={PHONE[1]}"], "policy": {"tlp": "AMBER", "audience": [],
                                              "discoverability": "restricted"}}
        for i in range(args.restricted)]
    for i in range(0, len(drafts), 500):
        origin.publish_drafts(drafts[i:i + 500])
    rogue = Rogue(cluster.root, "asker")
    origin.call("AddPeer", {"card": rogue.card.line()})
    key = entities.match_keys(*PHONE)[0]
    keys = [key] + [f"phone:555{n:07d}" for n in range(MAX_ENTITY_KEYS - 1)]
    text = ("officer safety " * 40)[:MAX_TEXT]
    db = origin.home / "node.db"
    before, size0 = written(db), files(origin.home)
    card = origin.card()
    listen = f"{h.HOST}:{origin.port}"
    ok = 0
    for _ in range(args.queries):
        status, _ = rogue.ask(listen, card, rogue.signed_query(
            user="mallory", entity_keys=keys, text=text, limit=500, any_entity=True))
        ok += status.name == "OK"
    after, size1 = written(db), files(origin.home)
    per = {k: (after[k] - before[k]) / max(ok, 1) for k in after}
    h.info(f"{args.restricted} restricted records on the entity; each query: {len(text)} "
           f"characters of text, {len(keys)} entity keys; {ok} of {args.queries} answered")
    for k, v in per.items():
        h.figure(f"bytes written per query: {k}", f"{v:,.0f} B")
    h.figure("bytes written per query: all rows", f"{sum(per.values()):,.0f} B")
    h.figure("database files grew per query", f"{(size1 - size0) / max(ok, 1):,.0f} B",
             note="(node.db + WAL; pages, so coarse)")
    out["restricted"] = {"per_query_bytes": per, "file_growth_per_query":
                         (size1 - size0) / max(ok, 1), "answered": ok}
    cluster.stop([origin])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("fcnode query abuse benchmark", flush=True)
    h.machine_note()
    out: dict[str, Any] = {"args": vars(args)}
    with h.Cluster(keep=args.keep) as cluster:
        bench_flood(cluster, args, out)
        bench_restricted(cluster, args, out)
    h.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    h.run_main(main)
