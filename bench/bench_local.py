"""Local benchmarks of one `fcnode serve` daemon, through its local API.

    .venv/bin/python bench/bench_local.py                 # full size (~2-3 minutes)
    .venv/bin/python bench/bench_local.py --records 2000  # smoke run

(a) Ed25519 sign and verify rate on one core (cryptography), measured in this run;
(b) publish throughput: single-record Publish calls and batched Publish calls,
    records/s and the ratio to the sign rate;
(c) local search latency (p50/p95/p99, client side) over --records records, for
    entity queries and text queries that match a few records each, plus broad
    queries (a common word, many matches, limit 50) for information;
(d) the daemon's resident memory after the load and after a few seconds idle.

It prints figures with the targets of DESIGN.md beside them; it asserts nothing.
All state lives in a temporary directory that is removed at the end (--keep
keeps it); the daemon is stopped on exit, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

import _harness as h

TARGET_BATCH_SIGN_RATIO = 0.6  # batch publish >= 0.6 x the 1-thread sign rate (issue 10)
TARGET_SEARCH_P50_MS = 20.0
TARGET_IDLE_RSS_MB = 100.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = h.arg_parser(__doc__)
    p.add_argument("--records", type=int, default=100_000,
                   help="records in the node for the search test (default 100000)")
    p.add_argument("--single", type=int, default=500,
                   help="sequential one-record Publish calls (default 500)")
    p.add_argument("--batch-calls", type=int, default=20,
                   help="batched Publish calls measured (default 20)")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="records per measured batched call (default 1000)")
    p.add_argument("--load-batch", type=int, default=2000,
                   help="records per Publish call when loading the rest (default 2000)")
    p.add_argument("--queries", type=int, default=200,
                   help="queries of each kind, entity and text (default 200)")
    p.add_argument("--broad-queries", type=int, default=20,
                   help="broad queries (a common word, limit 50) (default 20)")
    p.add_argument("--idle", type=float, default=5.0,
                   help="seconds idle before the second RSS reading (default 5)")
    p.add_argument("--crypto-seconds", type=float, default=1.0,
                   help="seconds per Ed25519 rate measurement (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def bench_crypto(args: argparse.Namespace, out: dict[str, Any]) -> h.CryptoRates:
    h.section("(a) Ed25519, cryptography, measured in this run")
    rates = h.ed25519_rates(args.crypto_seconds)
    h.figure("sign, 1 thread", f"{rates.sign_per_s:,.0f}/s", note="(DESIGN.md: ~25,000/s)")
    h.figure("verify, 1 thread", f"{rates.verify_per_s:,.0f}/s", note="(DESIGN.md: ~8,000/s)")
    h.figure("verify, 2 threads", f"{rates.verify_2threads_per_s:,.0f}/s",
             note=f"({rates.verify_2threads_per_s / rates.verify_per_s:.2f}x one thread)")
    out["crypto"] = {"sign_per_s": rates.sign_per_s, "verify_per_s": rates.verify_per_s,
                     "verify_2threads_per_s": rates.verify_2threads_per_s}
    return rates


def bench_publish(node: h.Node, corpus: h.Corpus, args: argparse.Namespace,
                  rates: h.CryptoRates, out: dict[str, Any]) -> int:
    h.section("(b) publish through the local API")
    i = 0
    # Warm-up (connection, first transaction), not counted.
    node.publish_drafts(corpus.drafts(i, 5))
    i += 5

    lat = []
    start = time.perf_counter()
    for _ in range(args.single):
        t = time.perf_counter()
        node.publish_drafts([corpus.draft(i)])
        lat.append(time.perf_counter() - t)
        i += 1
    single_s = time.perf_counter() - start
    single_rate = args.single / single_s
    h.figure(f"single records ({args.single} calls)", f"{single_rate:,.0f} rec/s",
             note=f"(ratio to sign rate {single_rate / rates.sign_per_s:.3f})")
    h.figure("  per call p50 / p99",
             f"{h.percentile(lat, 50) * 1e3:.2f} / {h.percentile(lat, 99) * 1e3:.2f} ms")

    drafts = [corpus.drafts(i + k * args.batch_size, args.batch_size)
              for k in range(args.batch_calls)]  # built before timing: not the daemon's work
    call_lat = []
    start = time.perf_counter()
    for batch in drafts:
        t = time.perf_counter()
        node.publish_drafts(batch)
        call_lat.append(time.perf_counter() - t)
    batch_s = time.perf_counter() - start
    n_batch = args.batch_calls * args.batch_size
    i += n_batch
    batch_rate = n_batch / batch_s
    h.figure(f"batches ({args.batch_calls} x {args.batch_size})", f"{batch_rate:,.0f} rec/s")
    ratio = batch_rate / rates.sign_per_s
    h.figure("  ratio to the 1-thread sign rate", f"{ratio:.3f}",
             f">= {TARGET_BATCH_SIGN_RATIO}", h.verdict(ratio >= TARGET_BATCH_SIGN_RATIO))
    h.figure("  per call p50 / max",
             f"{h.percentile(call_lat, 50) * 1e3:.0f} / {max(call_lat) * 1e3:.0f} ms")
    h.figure("  load average after the batches",
             " ".join(f"{x:.2f}" for x in os.getloadavg()))
    out["publish"] = {"single_calls": args.single, "single_rec_per_s": single_rate,
                      "single_call_p50_ms": h.percentile(lat, 50) * 1e3,
                      "single_call_p99_ms": h.percentile(lat, 99) * 1e3,
                      "batch_calls": args.batch_calls, "batch_size": args.batch_size,
                      "batch_rec_per_s": batch_rate,
                      "batch_ratio_to_sign": batch_rate / rates.sign_per_s,
                      "batch_call_p50_ms": h.percentile(call_lat, 50) * 1e3}
    return i


def load_rest(node: h.Node, corpus: h.Corpus, have: int, args: argparse.Namespace,
              out: dict[str, Any]) -> None:
    rest = args.records - have
    if rest <= 0:
        return
    start = time.perf_counter()
    daemon_s = 0.0
    for first, count in h.batches(have, rest, args.load_batch):
        drafts = corpus.drafts(first, count)
        t = time.perf_counter()
        node.publish_drafts(drafts)
        daemon_s += time.perf_counter() - t
    total = time.perf_counter() - start
    h.info(f"loaded {rest:,} more records in {total:.1f} s "
           f"({rest / daemon_s:,.0f} rec/s in Publish calls of {args.load_batch})")
    out["load"] = {"records": rest, "rec_per_s": rest / daemon_s}


def timed_search(node: h.Node, req: dict[str, Any]) -> tuple[float, int]:
    t = time.perf_counter()
    results = node.search(req)
    return time.perf_counter() - t, len(results)


def bench_search(node: h.Node, corpus: h.Corpus, total: int, args: argparse.Namespace,
                 out: dict[str, Any]) -> None:
    h.section(f"(c) local search over {total:,} records (client side, local API)")
    rng = random.Random(42)
    picks = [rng.randrange(total) for _ in range(args.queries)]
    entity_reqs = []
    for k, j in enumerate(picks):
        entity_reqs.append({"entities": [corpus.entity(j, k)], "limit": 50})
    picks = [rng.randrange(total) for _ in range(args.queries)]
    text_reqs = [{"text": f"{corpus.rare_word(j)} {corpus.city(j)}", "limit": 50}
                 for j in picks]
    broad_reqs = [{"text": h.COMMON[k % len(h.COMMON)], "limit": 50}
                  for k in range(args.broad_queries)]

    for req in entity_reqs[:5] + text_reqs[:5]:  # warm-up, not counted
        node.search(req)
    out["search"] = {"records": total}
    for name, reqs, target in (("entity queries", entity_reqs, True),
                               ("text queries", text_reqs, True),
                               ("broad text queries (info)", broad_reqs, False)):
        if not reqs:
            continue
        lat, hits = [], []
        for req in reqs:
            t, n = timed_search(node, req)
            lat.append(t * 1e3)
            hits.append(n)
        p50, p95, p99 = (h.percentile(lat, p) for p in (50, 95, 99))
        h.figure(f"{name} ({len(reqs)}), p50", f"{p50:.2f} ms",
                 f"<= {TARGET_SEARCH_P50_MS:.0f} ms" if target else "",
                 h.verdict(p50 <= TARGET_SEARCH_P50_MS) if target else "")
        h.figure("  p95 / p99 / max", f"{p95:.2f} / {p99:.2f} / {max(lat):.2f} ms")
        h.figure("  results per query (mean, min-max)",
                 f"{sum(hits) / len(hits):.1f} ({min(hits)}-{max(hits)})")
        out["search"][name.split(" (")[0].replace(" ", "_")] = {
            "queries": len(reqs), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
            "max_ms": max(lat), "mean_results": sum(hits) / len(hits)}


def bench_status(node: h.Node, total: int, out: dict[str, Any], calls: int = 20) -> None:
    lat = []
    for _ in range(calls):
        t = time.perf_counter()
        node.status()
        lat.append((time.perf_counter() - t) * 1e3)
    h.figure(f"Status call over {total:,} records (info), p50", f"{h.percentile(lat, 50):.2f} ms")
    out["status_p50_ms"] = h.percentile(lat, 50)


def bench_rss(node: h.Node, args: argparse.Namespace, out: dict[str, Any]) -> None:
    h.section("(d) daemon memory (VmRSS from /proc)")
    after = node.proc_status()
    h.figure("RSS right after load and searches", f"{after['VmRSS'] / 1024:.1f} MB")
    node.close_clients()  # an idle daemon: no client connected
    time.sleep(args.idle)
    idle = node.proc_status()
    mb = idle["VmRSS"] / 1024
    h.figure(f"RSS after {args.idle:g} s idle", f"{mb:.1f} MB",
             f"<= {TARGET_IDLE_RSS_MB:.0f} MB", h.verdict(mb <= TARGET_IDLE_RSS_MB))
    h.figure("peak RSS (VmHWM)", f"{idle['VmHWM'] / 1024:.1f} MB")
    db = node.home / "node.db"
    wal = node.home / "node.db-wal"
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    h.figure("database size (db + wal)", f"{size / 2**20:.1f} MB")
    out["rss"] = {"after_load_mb": after["VmRSS"] / 1024, "idle_mb": mb,
                  "peak_mb": idle["VmHWM"] / 1024, "idle_seconds": args.idle,
                  "db_mb": size / 2**20}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    measured = args.single + 5 + args.batch_calls * args.batch_size
    total = max(args.records, measured)
    print(f"fcnode local benchmark: {total:,} records, python {sys.version.split()[0]}",
          flush=True)
    h.machine_note()
    out: dict[str, Any] = {"args": vars(args)}
    rates = bench_crypto(args, out)
    corpus = h.Corpus(total)
    with h.Cluster(keep=args.keep) as cluster:
        started = time.perf_counter()
        (node,) = cluster.init(["bench-local"])
        cluster.start([node])
        h.info(f"node ready in {time.perf_counter() - started:.1f} s (pid {node.pid}, "
               f"home {node.home})")
        have = bench_publish(node, corpus, args, rates, out)
        load_rest(node, corpus, have, args, out)
        count = node.active("bench-local")
        if count != total:
            h.info(f"WARNING: the node holds {count} active records, expected {total}")
        bench_search(node, corpus, count, args, out)
        bench_status(node, count, out)
        bench_rss(node, args, out)
        cluster.check_alive()
    h.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    h.run_main(main)
