"""Federated query latency: one requester and --peers peers holding --records records each.

    .venv/bin/python bench/bench_query.py                    # full size: 20 peers x 100,000
    .venv/bin/python bench/bench_query.py --peers 3 --records 2000 --queries 20   # smoke

1. Creates the requester and the peers (`fcnode init`), then loads each peer's
   store offline, before its daemon starts, with the node's own publish path
   (record.parse_draft, record.build_body, NodeService.append_own in one
   IMMEDIATE transaction per --load-batch records, node.storage.db.immediate): genuinely signed,
   hash-chained records with their audit entries, as `Publish` would write them,
   on --workers processes. Every record has an EMPTY audience (this center only),
   so nothing replicates in full; a POINTER is the most the requester may see.
2. The requester dials every peer, so replication sends it a placeholder (seq
   and hash, no content) for each of the peers' entries: the requester of a
   running network holds them. --catch-up live (default) lets the daemons
   replicate them in step 3 and times it; --catch-up seed writes them into the
   requester's store offline first, with the daemon's own ingest functions
   (federation.ingest.check_items and store_batch).
3. Starts every daemon, pins the requester and the peers both ways through the
   local API, waits until every link is connected and the requester holds
   every peer entry (placeholders; no record content anywhere).
4. Runs --queries entity queries (phone, plate or person+DOB, rotating) from the
   requester through its local API `Query` stream, one at a time, each
   matching a few records on a few peers and nothing on the others, timed
   client side until the summary line; checks every summary (all peers
   "answered", the expected POINTER counts) and reports the per-center times.
5. Resident memory of all daemons, CPU used during the queries, disk used.
6. The rows and bytes the requester holds for the withheld entries (range
   placeholders), beside the 76-bytes-per-placeholder baseline of one row each
   (target <= 10 %). `--withholding-only` prints just this, offline and quick:
   both stores built in the same run (one row per placeholder, as before; and
   what replication sends now), with the bytes on the wire both ways.

It prints figures with the targets beside them; it asserts nothing. All state
lives in a temporary directory that is removed at the end (--keep keeps it);
every daemon is stopped on exit, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import _harness as h

TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0
KINDS = ("phone", "plate", "person")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = h.arg_parser(__doc__)
    p.add_argument("--peers", type=int, default=20, help="peers (default 20)")
    p.add_argument("--records", type=int, default=100_000,
                   help="records held by each peer (default 100000)")
    p.add_argument("--queries", type=int, default=200,
                   help="entity queries measured (default 200)")
    p.add_argument("--warmup", type=int, default=5,
                   help="queries run first and not counted (default 5)")
    p.add_argument("--timeout", default="5s",
                   help="per-center timeout of each query (default 5s)")
    p.add_argument("--limit", type=int, default=100, help="per-center limit (default 100)")
    p.add_argument("--load-batch", type=int, default=2000,
                   help="records per transaction when loading a peer (default 2000)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="loading processes (default: 2, or 1 on one core)")
    p.add_argument("--catch-up", choices=("live", "seed"), default="live",
                   help="how the requester gets the placeholders of the peers' entries: "
                        "live = replicated by the daemons (default), seed = written "
                        "offline with the ingest code before the daemons start")
    p.add_argument("--start-timeout", type=float, default=300.0,
                   help="wait this long for all daemons to answer (default 300)")
    p.add_argument("--connect-timeout", type=float, default=120.0,
                   help="wait this long for every link to connect (default 120)")
    p.add_argument("--catch-up-timeout", type=float, default=1800.0,
                   help="--catch-up live: wait this long for replication (default 1800)")
    p.add_argument("--withholding-only", action="store_true",
                   help="only the withheld-entries figure (section 6), offline and "
                        "quick: no daemons, no records signed")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.peers < 1 or args.records < 1 or args.queries < 1 or args.workers < 1:
        p.error("--peers, --records, --queries and --workers must be at least 1")
    return args


# -- the records ----------------------------------------------------------------------
class QueryCorpus(h.Corpus):
    """The synthetic records of all peers, by global index g = peer * records + i.

    Entities are shared across the whole network, with a stride of total / k:
    a phone by 3 records, a plate by 2, a person (name + DOB) by 4, so the
    records sharing one sit on up to 3, 2 or 4 different peers, and an entity
    query matches a few records on a few peers and none on the others. (The
    person of h.Corpus repeats every 40,000 people; this one never does.)
    Every record has an empty audience: 9 in 10 discoverability "pointer",
    1 in 10 "open" (which counts as pointer for an empty audience)."""

    def person(self, i: int) -> str:
        n = i % self.people
        first = h.FIRST[n % len(h.FIRST)]
        last = h.LAST[(n // len(h.FIRST)) % len(h.LAST)]
        dob = dt.date(1940, 1, 1) + dt.timedelta(days=n // (len(h.FIRST) * len(h.LAST)))
        return f"{last.title()}, {first.title()};{dob.isoformat()}"

    def peer_draft(self, g: int) -> dict[str, Any]:
        draft = self.draft(g, audience=())
        draft["policy"]["discoverability"] = "open" if g % 10 == 0 else "pointer"
        return draft

    def entity(self, kind: str, g: int) -> str:
        return f"{kind}={getattr(self, kind)(g)}"

    def sharing(self, kind: str, g: int) -> list[int]:
        """Global indexes of the records that carry the same entity as record g."""
        period = {"phone": self.phones, "plate": self.plates, "person": self.people}[kind]
        return list(range(g % period, self.total, period))


# -- 1. offline load --------------------------------------------------------------------
def load_peer(task: tuple[str, str, int, int, int, int]) -> dict[str, Any]:
    """Append one peer's records to its store as `Publish` does (run in a worker)."""
    from node.config import keys
    from node.config.home import Home, load_config
    from node.core import record
    from node.core.timeutil import now_ms
    from node.services.service import NodeService
    from node.storage.db import immediate, open_sync

    home_dir, author, first, count, total, batch = task
    home = Home(Path(home_dir))
    # No daemon database: append_own works on the connection it is given.
    node = NodeService(home, load_config(home), keys.load_signing_key(home.signing_key),
                       db=None, peers={})  # type: ignore[arg-type]
    corpus = QueryCorpus(total)
    conn = open_sync(home.database)
    started, cpu = time.perf_counter(), time.process_time()
    making = 0.0  # generating the synthetic drafts: the benchmark's work, not the node's
    try:
        for start, n in h.batches(first, count, batch):
            t = time.perf_counter()
            documents = [corpus.peer_draft(g) for g in range(start, start + n)]
            making += time.perf_counter() - t
            # From here on, what the daemon does for a Publish call of n records.
            drafts = [record.parse_draft(d) for d in documents]
            groups, known = node.groups(), node.known_centers()
            audiences = [record.expand_audience(d.audience, groups, known) for d in drafts]
            now = now_ms()

            def builder(draft: record.Draft, audience: frozenset[str],
                        now: int = now) -> NodeService.Builder:
                return lambda conn, seq, prev: record.build_body(
                    draft, origin=node.center, seq=seq, prev=prev,
                    record_id=node.new_record_id(seq), version=1, created_ms=now,
                    audience=audience, author=author, contact=node.config.contact)

            builders = [builder(d, a) for d, a in zip(drafts, audiences, strict=True)]
            with immediate(conn):
                node.append_own(conn, builders, author, "record.publish", now,
                                new_records=True)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
        node._signer.shutdown()
    return {"center": node.center, "records": count, "seconds": time.perf_counter() - started,
            "making_s": making, "cpu_s": time.process_time() - cpu}


def load_peers(peers: list[h.Node], args: argparse.Namespace, corpus: QueryCorpus,
               out: dict[str, Any]) -> None:
    h.section(f"1. offline load: {len(peers)} peers x {args.records:,} records, "
              f"{args.workers} worker process(es)")
    tasks = [(str(p.home), p.token.split(":", 1)[0], k * args.records, args.records,
              corpus.total, args.load_batch) for k, p in enumerate(peers)]
    started = time.perf_counter()
    done: list[dict[str, Any]] = []
    # spawn: the workers must not inherit this process's gRPC state.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(args.workers, len(peers))) as pool:
        for result in pool.imap_unordered(load_peer, tasks):
            done.append(result)
            if len(done) == len(peers) or len(done) % max(1, len(peers) // 5) == 0:
                elapsed = time.perf_counter() - started
                h.info(f"{len(done)}/{len(peers)} peers loaded after {elapsed:.0f} s")
    total_s = time.perf_counter() - started
    n = len(peers) * args.records
    busy = sum(d["seconds"] for d in done)
    node_s = busy - sum(d["making_s"] for d in done)
    h.figure(f"loaded {n:,} records", f"{total_s:.1f} s",
             note=f"({n / total_s:,.0f} rec/s over {args.workers} processes)")
    h.figure("  per loading process", f"{n / busy:,.0f} rec/s",
             note=f"(CPU {sum(d['cpu_s'] for d in done) / n * 1e6:.0f} us/record)")
    h.figure("  node's publish path only, per process", f"{n / node_s:,.0f} rec/s",
             note="(parse_draft, build_body, sign, store, audit; without making the drafts)")
    out["load"] = {"records": n, "seconds": total_s, "rec_per_s": n / total_s,
                   "per_process_rec_per_s": n / busy, "node_path_rec_per_s": n / node_s,
                   "workers": args.workers, "batch": args.load_batch}


def seed_placeholders(requester: h.Node, peers: list[h.Node], out: dict[str, Any]) -> None:
    """Store in the requester, offline, the placeholders replication would send it
    (every peer entry is withheld from it): the daemon's ingest functions, per
    batch of 2,048 items (8 x max_batch, as a catching-up link groups them)."""
    from federation.ingest import check_items, store_batch
    from node.config import keys
    from node.config.home import Home
    from node.core.signing import key_id
    from node.core.timeutil import now_ms
    from node.services.egress import collapse
    from node.storage.db import immediate, open_sync
    from node.wire import federation_pb2

    started = time.perf_counter()
    conn = open_sync(Home(requester.home).database)
    stored = 0
    try:
        for peer in peers:
            pub = keys.load_signing_key(Home(peer.home).signing_key).public_key()
            pinned = {key_id(pub): pub}
            src = sqlite3.connect(f"file:{Home(peer.home).database}?mode=ro", uri=True)
            try:
                rows = src.execute("SELECT seq, hash FROM entries WHERE origin = ? "
                                   "ORDER BY seq", (peer.center,)).fetchall()
            finally:
                src.close()
            for i in range(0, len(rows), 2048):
                # As a server sends them to a caller that takes ranges: per batch
                # read (max_batch rows), one range item for the withheld run.
                items = [r for j in range(i, min(i + 2048, len(rows)), 256)
                         for r in collapse([federation_pb2.LogItem(origin=peer.center,
                                                                   seq=s, hash=d)
                                            for s, d in rows[j:j + 256]])]
                checked = check_items(items, lambda o, k=pinned: k)
                with immediate(conn):
                    result = store_batch(conn, peer.center, checked, now_ms(),
                                         requester.center)
                stored += result.stored
                if result.rejected:
                    raise RuntimeError(f"seeding placeholders of {peer.center}: rejected "
                                       f"{dict(result.rejected)}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    seconds = time.perf_counter() - started
    h.figure(f"requester: {stored:,} placeholders seeded", f"{seconds:.1f} s",
             note=f"({stored / seconds:,.0f}/s; ingest code, offline)")
    out["catch_up"] = {"mode": "seed", "placeholders": stored, "seconds": seconds}


def raise_rate_limit(peers: list[h.Node], needed: int) -> int | None:
    """Each peer allows query_rate_per_minute queries per center (a token bucket
    that starts full). If the run asks more than that, raise it in node.toml
    before the daemons start, so the run measures latency, not the limit."""
    from node.config.home import Home, load_config, render_config

    cfg = load_config(Home(peers[0].home))
    if needed <= cfg.limits.query_rate_per_minute * 0.9:
        return None
    rate = needed * 2
    for p in peers:
        home = Home(p.home)
        c = load_config(home)
        home.config.write_text(render_config(dataclasses.replace(
            c, limits=dataclasses.replace(c.limits, query_rate_per_minute=rate))))
    return rate


# -- 3. network -----------------------------------------------------------------------
def peer_states(node: h.Node) -> dict[str, dict[str, Any]]:
    return {p["center"]: p for p in node.status().get("peers", [])}


def connect(cluster: h.Cluster, requester: h.Node, peers: list[h.Node],
            args: argparse.Namespace, out: dict[str, Any]) -> bool:
    # The peers first, so the requester's first handshake with each is accepted.
    started = time.perf_counter()
    for p in peers:
        p.pin(requester)
    for p in peers:
        requester.pin(p)
    pin_s = time.perf_counter() - started

    def all_connected() -> bool:
        cluster.check_alive()
        states = peer_states(requester)
        if len(states) != len(peers) or any(s["state"] != "connected"
                                            for s in states.values()):
            return False
        return all(peer_states(p).get(requester.center, {}).get("state") == "connected"
                   for p in peers)

    ok = h.wait_until(all_connected, args.connect_timeout, 0.25)
    connect_s = time.perf_counter() - started
    h.figure(f"pin both ways ({2 * len(peers)} Peers calls)", f"{pin_s:.1f} s")
    h.figure("until every link is connected", f"{connect_s:.1f} s",
             note="" if ok else "(NOT all connected; measuring anyway)")
    if not ok:
        h.info("requester's peers: " + json.dumps(
            {c: s["state"] for c, s in peer_states(requester).items()}))
    out["connect"] = {"pin_s": pin_s, "connected_s": connect_s, "all_connected": ok}
    return ok


def behind(requester: h.Node) -> int:
    return sum(sum(s.get("behind", {}).values()) for s in peer_states(requester).values())


def wait_caught_up(cluster: h.Cluster, requester: h.Node, peers: list[h.Node],
                   args: argparse.Namespace, since: float, cpu0: dict[str, float],
                   out: dict[str, Any]) -> None:
    """Until the requester holds every peer entry (as placeholders); timed from
    ``since`` (the first pin), with the CPU the daemons used since ``cpu0``."""
    want = len(peers) * args.records
    last = time.perf_counter()
    while True:
        heads = requester.status().get("heads", {})
        held = sum(min(heads.get(p.center, 0), args.records) for p in peers)
        now = time.perf_counter()
        if held >= want:
            break
        if now - since > args.catch_up_timeout:
            h.info(f"TIMED OUT: the requester holds {held:,} of {want:,}")
            break
        if now - last >= 30:
            h.info(f"  ... {held:,} of {want:,} after {now - since:.0f} s")
            last = now
        cluster.check_alive()
        time.sleep(0.2)
    if out["catch_up"]["mode"] == "seed":
        return
    seconds = now - since
    cpu_req = requester.cpu_seconds() - cpu0[requester.center]
    cpu_peers = sum(p.cpu_seconds() - cpu0[p.center] for p in peers)
    h.figure(f"live catch-up: {held:,} placeholders", f"{seconds:.1f} s",
             note=f"(from the first pin, polled every 0.2 s; {held / seconds:,.0f}/s; "
                  f"CPU requester {cpu_req:.0f} s, peers {cpu_peers:.0f} s)")
    out["catch_up"].update({"placeholders": held, "expected": want, "seconds": seconds,
                            "cpu_requester_s": cpu_req, "cpu_peers_s": cpu_peers})


# -- 4. queries -----------------------------------------------------------------------
def make_queries(corpus: QueryCorpus, peers: list[h.Node], records: int, count: int,
                 seed: int) -> list[tuple[str, dict[str, int]]]:
    """(entity, expected POINTER hits per peer), picked at random across the network."""
    import random

    rng = random.Random(seed)
    out = []
    for k in range(count):
        kind = KINDS[k % len(KINDS)]
        g = rng.randrange(corpus.total)
        expected: dict[str, int] = {p.center: 0 for p in peers}
        for x in corpus.sharing(kind, g):
            expected[peers[x // records].center] += 1
        out.append((corpus.entity(kind, g), expected))
    return out


@dataclasses.dataclass
class QueryRun:
    entity: str
    seconds: float
    first_s: float | None
    results: int
    summary: dict[str, Any]


def run_query(node: h.Node, entity: str, args: argparse.Namespace) -> QueryRun:
    req = {"filters": {"entities": [entity], "limit": args.limit}, "timeout": args.timeout}
    started = time.perf_counter()
    first = None
    results = 0
    summary: dict[str, Any] = {}
    for item in node.client().stream("Query", req, timeout=120):
        if "summary" in item:
            summary = item["summary"]
        else:
            results += 1
            if first is None:
                first = time.perf_counter() - started
    return QueryRun(entity, time.perf_counter() - started, first, results, summary)


def bench_queries(cluster: h.Cluster, requester: h.Node, peers: list[h.Node],
                  corpus: QueryCorpus, args: argparse.Namespace, out: dict[str, Any]) -> None:
    total = len(peers) * args.records
    h.section(f"4. {args.queries} entity queries from the requester, {len(peers)} peers x "
              f"{args.records:,} records ({total:,}), one at a time")
    queries = make_queries(corpus, peers, args.records, args.warmup + args.queries, seed=42)
    for entity, _ in queries[:args.warmup]:
        run_query(requester, entity, args)
    measured = queries[args.warmup:]
    cpu0 = {n.center: n.cpu_seconds() for n in cluster.nodes}
    runs: list[QueryRun] = []
    started = time.perf_counter()
    for entity, _ in measured:
        runs.append(run_query(requester, entity, args))
    wall = time.perf_counter() - started
    cpu = {n.center: n.cpu_seconds() - cpu0[n.center] for n in cluster.nodes}

    centers = [p.center for p in peers]
    lat = [r.seconds * 1e3 for r in runs]
    firsts = [r.first_s * 1e3 for r in runs if r.first_s is not None]
    slowest, mean_center, local_ms = [], [], []
    statuses: dict[str, int] = {}
    all_answered = 0
    wrong = 0
    hits, hit_peers = [], []
    for r, (_, expected) in zip(runs, measured, strict=True):
        peer_ms = []
        answered = 0
        for c in centers:
            o = r.summary.get(c, {"status": "missing"})
            statuses[o["status"]] = statuses.get(o["status"], 0) + 1
            if o["status"] == "answered":
                answered += 1
                peer_ms.append(o["ms"])
                if o.get("pointers", 0) + o.get("results", 0) != min(expected[c], args.limit):
                    wrong += 1
        all_answered += answered == len(centers)
        if peer_ms:
            slowest.append(max(peer_ms))
            mean_center.append(sum(peer_ms) / len(peer_ms))
        if requester.center in r.summary:
            local_ms.append(r.summary[requester.center]["ms"])
        hits.append(r.results)
        hit_peers.append(sum(1 for c in centers if expected[c]))

    p50, p99 = h.percentile(lat, 50), h.percentile(lat, 99)
    h.figure("end to end (client, until the summary), p50", f"{p50:.1f} ms",
             f"<= {TARGET_P50_MS:.0f} ms", h.verdict(p50 <= TARGET_P50_MS))
    h.figure("end to end, p99", f"{p99:.1f} ms",
             f"<= {TARGET_P99_MS:.0f} ms", h.verdict(p99 <= TARGET_P99_MS))
    h.figure("  p90 / max / mean",
             f"{h.percentile(lat, 90):.1f} / {max(lat):.1f} / {sum(lat) / len(lat):.1f} ms")
    if firsts:
        h.figure("  first result shown, p50 / p99",
                 f"{h.percentile(firsts, 50):.1f} / {h.percentile(firsts, 99):.1f} ms")
    if slowest:
        h.figure("slowest peer per query (summary ms), p50 / p99",
                 f"{h.percentile(slowest, 50):.0f} / {h.percentile(slowest, 99):.0f} ms")
        h.figure("mean over peers per query, p50 / mean",
                 f"{h.percentile(mean_center, 50):.1f} / "
                 f"{sum(mean_center) / len(mean_center):.1f} ms")
    if local_ms:
        h.figure("requester's own store (summary ms), p50 / max",
                 f"{h.percentile(local_ms, 50):.0f} / {max(local_ms):.0f} ms")
    h.figure("results per query (mean, min-max)",
             f"{sum(hits) / len(hits):.1f} ({min(hits)}-{max(hits)})",
             note=f"(all POINTER; on {sum(hit_peers) / len(hit_peers):.1f} of "
                  f"{len(centers)} peers on average)")
    h.figure(f"queries with all {len(centers)} peers answered",
             f"{all_answered} of {len(runs)}",
             note="per-peer outcomes: " + ", ".join(f"{k} {v}" for k, v in
                                                    sorted(statuses.items())))
    h.figure("peer answers with an unexpected hit count", f"{wrong}",
             note="(expected from the corpus: entity shared by records on which peers)")
    h.figure("queries per second (sequential)", f"{len(runs) / wall:.1f}")
    cpu_all = sum(cpu.values())
    h.figure("CPU per query: all daemons / requester",
             f"{cpu_all / len(runs) * 1e3:.0f} / {cpu[requester.center] / len(runs) * 1e3:.0f} ms",
             note=f"(peers {(cpu_all - cpu[requester.center]) / len(runs) / len(peers) * 1e3:.1f}"
                  f" ms each; 2 cores = {2000 * wall / len(runs):.0f} ms per query available)")
    timeouts = statuses.get("timed out", 0)
    if timeouts or all_answered < len(runs):
        bad = [(r.entity, {c: o for c, o in r.summary.items() if o["status"] != "answered"})
               for r in runs if any(o["status"] != "answered" for o in r.summary.values())]
        for entity, problems in bad[:3]:
            h.info(f"  e.g. {entity}: {json.dumps(problems)[:300]}")
    out["queries"] = {
        "queries": len(runs), "peers": len(peers), "records_per_peer": args.records,
        "p50_ms": p50, "p90_ms": h.percentile(lat, 90), "p99_ms": p99, "max_ms": max(lat),
        "mean_ms": sum(lat) / len(lat),
        "first_result_p50_ms": h.percentile(firsts, 50) if firsts else None,
        "slowest_peer_p50_ms": h.percentile(slowest, 50) if slowest else None,
        "slowest_peer_p99_ms": h.percentile(slowest, 99) if slowest else None,
        "mean_peer_ms": sum(mean_center) / len(mean_center) if mean_center else None,
        "local_p50_ms": h.percentile(local_ms, 50) if local_ms else None,
        "mean_results": sum(hits) / len(hits), "statuses": statuses,
        "all_answered": all_answered, "timed_out": timeouts, "wrong_counts": wrong,
        "cpu_ms_per_query_all": cpu_all / len(runs) * 1e3,
        "cpu_ms_per_query_requester": cpu[requester.center] / len(runs) * 1e3,
        "qps": len(runs) / wall}


# -- 5. memory and disk -------------------------------------------------------------------
def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):  # e.g. a WAL checkpointed away
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def bench_resources(cluster: h.Cluster, requester: h.Node, peers: list[h.Node],
                    out: dict[str, Any]) -> None:
    h.section("5. memory and disk")
    rss = {n.center: n.proc_status() for n in cluster.nodes}
    peer_rss = [rss[p.center]["VmRSS"] / 1024 for p in peers]
    total = sum(v["VmRSS"] for v in rss.values()) / 1024
    h.figure(f"resident memory of {len(cluster.nodes)} daemons", f"{total:,.0f} MB")
    h.figure("  requester (peak)", f"{rss[requester.center]['VmRSS'] / 1024:.0f} MB "
             f"({rss[requester.center]['VmHWM'] / 1024:.0f})")
    h.figure("  per peer, mean / max", f"{sum(peer_rss) / len(peer_rss):.0f} / "
             f"{max(peer_rss):.0f} MB",
             note=f"(peak max {max(rss[p.center]['VmHWM'] for p in peers) / 1024:.0f} MB)")
    disk = du(cluster.root)
    peer_disk = [du(p.home) for p in peers]
    h.figure("disk used by all homes", f"{disk / 2**20:,.0f} MB")
    h.figure("  per peer, mean", f"{sum(peer_disk) / len(peer_disk) / 2**20:,.1f} MB")
    h.figure("  requester", f"{du(requester.home) / 2**20:,.1f} MB")
    out["resources"] = {"rss_total_mb": total,
                        "rss_requester_mb": rss[requester.center]["VmRSS"] / 1024,
                        "rss_peer_mean_mb": sum(peer_rss) / len(peer_rss),
                        "rss_peer_max_mb": max(peer_rss), "disk_total_mb": disk / 2**20,
                        "disk_peer_mean_mb": sum(peer_disk) / len(peer_disk) / 2**20,
                        "disk_requester_mb": du(requester.home) / 2**20}


# -- 6. withheld entries: range placeholders vs one row each ----------------------------
BASELINE_BYTES = 76  # per placeholder before ranges (issue 10: 152 MB for 20 x 100,000)
TARGET_RATIO = 0.10


def entries_bytes(conn: sqlite3.Connection) -> int | None:
    """Bytes of the entries table's pages and its indexes' (SQLite's dbstat), or None
    without dbstat. (A rowid table since schema 16: its key is an index of its own.)"""
    try:
        return conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN (SELECT name FROM "
                            "sqlite_master WHERE tbl_name = 'entries')").fetchone()[0] or 0
    except sqlite3.OperationalError:
        return None


def hint_figures(db: Path, origins: list[str]) -> tuple[int, int, int | None]:
    """(hint rows, withheld positions they stand for, bytes of the entries table)."""
    from node.storage import log as log_tx

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = positions = 0
        for o in origins:
            r, n = log_tx.hint_rows(conn, o)
            rows, positions = rows + r, positions + n
        return rows, positions, entries_bytes(conn)


def report_withholding(label: str, rows: int, positions: int, nbytes: int | None,
                       baseline: int | None, out: dict[str, Any]) -> None:
    base = baseline if baseline is not None else positions * BASELINE_BYTES
    h.figure(f"{label}: withheld entries held", f"{positions:,}",
             note=f"in {rows:,} rows")
    if nbytes is not None and base:
        h.figure("  bytes held (entries table pages)", f"{nbytes / 1024:,.1f} KiB",
                 target=(f"<= {TARGET_RATIO:.0%} of {base / 2**20:,.1f} MB"
                         if baseline is not None or "now" in label or "requester" in label
                         else ""),
                 note=f"ratio {nbytes / base:.6f} to "
                      f"{'one row each, measured here' if baseline else '76 B each'}")
    out.setdefault("withholding", {})[label] = {
        "rows": rows, "positions": positions, "bytes": nbytes, "baseline_bytes": base,
        "ratio": (nbytes / base) if nbytes is not None and base else None}


def bench_withholding(peers: int, records: int, out: dict[str, Any]) -> None:
    """Offline, in the same run: what a requester holds for ``peers`` x ``records``
    withheld entries, (a) one row per placeholder as before ranges
    (log.insert_placeholder per position), (b) what replication sends now (one
    range item per batch read, federation.ingest.store_batch); and the bytes on
    the wire both ways."""
    import hashlib
    import tempfile

    from federation.ingest import check_items, store_batch
    from node.services.egress import collapse
    from node.storage import log as log_tx
    from node.storage.db import immediate, open_sync
    from node.wire import federation_pb2

    h.section(f"6. withheld entries: {peers} peers x {records:,}")
    origins = [f"peer-{i:02d}" for i in range(1, peers + 1)]
    pinned = {"k": object()}  # placeholders carry no signature to verify
    wire = {"single": 0, "ranges": 0}
    with tempfile.TemporaryDirectory() as tmp:
        old = open_sync(Path(tmp) / "old.db", create=True)
        new = open_sync(Path(tmp) / "new.db", create=True)
        try:
            t = time.perf_counter()
            for o in origins:
                for i in range(0, records, 2048):
                    single = [federation_pb2.LogItem(
                        origin=o, seq=s, hash=hashlib.sha256(f"{o}{s}".encode()).digest())
                        for s in range(i + 1, min(i + 2048, records) + 1)]
                    ranged = [r for j in range(0, len(single), 256)
                              for r in collapse(single[j:j + 256])]
                    wire["single"] += federation_pb2.ReplicateBatch(items=single).ByteSize()
                    wire["ranges"] += federation_pb2.ReplicateBatch(items=ranged).ByteSize()
                    with immediate(old):
                        for it in single:
                            log_tx.insert_placeholder(old, o, it.seq, it.hash, o, 1)
                    with immediate(new):
                        res = store_batch(new, o, check_items(ranged, lambda _o: pinned),
                                          1, "req")
                    if res.rejected:
                        raise RuntimeError(f"ranges of {o} rejected: {dict(res.rejected)}")
            seconds = time.perf_counter() - t
            for c in (old, new):
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                c.execute("VACUUM")
        finally:
            old.close()
            new.close()
        before = hint_figures(Path(tmp) / "old.db", origins)
        after = hint_figures(Path(tmp) / "new.db", origins)
    h.info(f"(built both stores in {seconds:.1f} s)")
    report_withholding("one row per placeholder (before)", *before, None, out)
    report_withholding("range placeholders (now)", *after, before[2], out)
    h.figure("bytes on the wire, one item each", f"{wire['single'] / 2**20:,.1f} MB")
    h.figure("bytes on the wire, ranges", f"{wire['ranges'] / 2**20:,.3f} MB",
             note=f"ratio {wire['ranges'] / wire['single']:.4f}")
    out.setdefault("withholding", {})["wire"] = wire


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.withholding_only:
        out0: dict[str, Any] = {"args": vars(args)}
        bench_withholding(args.peers, args.records, out0)
        h.save_json(args.json, out0)
        return 0
    n_total = args.peers * args.records
    print(f"fcnode federated query benchmark: {args.peers} peers x {args.records:,} records "
          f"({n_total:,}), {args.queries} queries, python {sys.version.split()[0]}", flush=True)
    h.machine_note()
    out: dict[str, Any] = {"args": vars(args)}
    corpus = QueryCorpus(n_total)
    began = time.perf_counter()
    with h.Cluster(keep=args.keep) as cluster:
        t = time.perf_counter()
        requester, *peers = cluster.init(["req", *(f"peer-{i:02d}" for i in
                                                   range(1, args.peers + 1))])
        h.info(f"created {args.peers + 1} nodes in {time.perf_counter() - t:.1f} s "
               f"under {cluster.root}")
        load_peers(peers, args, corpus, out)
        h.section("2. the requester's placeholders for the peers' entries")
        if args.catch_up == "seed":
            seed_placeholders(requester, peers, out)
        else:
            out["catch_up"] = {"mode": "live"}
            h.info("--catch-up live: replicated by the daemons after the pins (step 3)")
        rate = raise_rate_limit(peers, args.warmup + args.queries)
        if rate:
            h.info(f"peers' query_rate_per_minute raised to {rate} for "
                   f"{args.warmup + args.queries} queries")

        h.section(f"3. start {args.peers + 1} daemons, pin, connect")
        t = time.perf_counter()
        cluster.start([requester, *peers], timeout=args.start_timeout)
        start_s = time.perf_counter() - t
        h.figure(f"start {args.peers + 1} daemons", f"{start_s:.1f} s")
        out["start_s"] = start_s
        cpu0 = {n.center: n.cpu_seconds() for n in cluster.nodes}
        pinned = time.perf_counter()
        connect(cluster, requester, peers, args, out)
        wait_caught_up(cluster, requester, peers, args, pinned, cpu0, out)
        status = requester.status()
        contents = {o: c for o, c in status["records"].items() if o != requester.center}
        held = sum(status["heads"].get(p.center, 0) for p in peers)
        h.info(f"requester holds {held:,} peer entries (placeholders) and records "
               f"{json.dumps(contents) if contents else 'of no peer'}; "
               f"links behind: {behind(requester)}")
        time.sleep(1.0)  # let the set-up settle
        cluster.check_alive()
        bench_queries(cluster, requester, peers, corpus, args, out)
        bench_resources(cluster, requester, peers, out)
        cluster.check_alive()
        h.section("6. the requester's rows for withheld entries (live network)")
        report_withholding("range placeholders (requester)",
                           *hint_figures(requester.home / "node.db",
                                         [p.center for p in peers]), None, out)
    print(f"\n   total {time.perf_counter() - began:.0f} s", flush=True)
    h.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    h.run_main(main)
