"""The national network on one machine: 80 real daemons in ten FEMA regions.

    .venv/bin/python bench/bench_network.py                 # 80 centers (10 hubs, 70 spokes)
    .venv/bin/python bench/bench_network.py --centers 30    # a smaller run, same topology
    .venv/bin/python bench/bench_network.py --regions 3 --centers 6 --records 3 \
        --queries 3 --outage 5                               # a development run

Topology: one hub per FEMA region (hub-r01 .. hub-r10), the other centers spread
over the regions as spokes. Hubs pin each other (each marked an introducer);
each spoke exchanges cards with its own hub only (`peers add HUB --introducer`;
the hub pins the spoke) and learns every other center through introductions.
Measured (latencies on the daemons' own clocks where they are stored:
entries.received_ms; otherwise the benchmark's clock on the same machine):

1. set-up: time from the first card exchange until every node holds a trusted
   key for every other center;
2. a GREEN `members` record published at a spoke, held by all: p50/p99 over
   --records records published one at a time (target p99 <= 2 s), from the last
   node's received_ms minus the origin's;
3. an AMBER record for three named centers in three regions: delivered to the
   two outside the origin's region as copies the origin sealed to them, relayed
   by hubs that cannot open them; every node's database is read (read-only) for
   who holds its content (target: exactly the three), and the time from publish
   to the last named center holding it (entries.received_ms); then whether the
   named centers also read it by a federated query;
4. a federated entity query from a spoke: p50/p99 over --queries queries and how
   many centers answered (target: all answer, p99 <= 1 s);
5. one hub stopped for --outage s while its region keeps publishing, then
   restarted: time until every node holds every record of that region;
6. memory of all daemons (RSS) and CPU per delivered record (all daemons'
   CPU during phase 2 over records x receiving nodes).

Set-up polls introducers every --poll s; once every node trusts every center
the benchmark sets the production interval back (SIGHUP) before measuring.

Every figure is printed beside its target; nothing is asserted. The script first
checks the limits it needs (open files, memory) and says what to change.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

REGIONS = 10  # FEMA regions (--regions for smaller development runs)
RSS_PER_DAEMON_MB = 90  # measured ~60-70 MB idle; headroom for the query and the outage
FDS_PER_DAEMON = 12     # the benchmark's own local-API channel and the daemons' logs


def check_limits(n: int) -> list[str]:
    """What this machine must allow for n daemons; empty when it does."""
    problems = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 256 + FDS_PER_DAEMON * n
    if soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        problems.append(f"open files: soft limit {soft} < {need} needed; raise it "
                        f"(ulimit -n {need}, or LimitNOFILE= in a unit)")
    with open("/proc/meminfo") as fh:
        mem = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh)}
    avail_mb = mem.get("MemAvailable", 0) / 1024
    want_mb = RSS_PER_DAEMON_MB * n
    if avail_mb < want_mb:
        problems.append(f"memory: {avail_mb:.0f} MB available < {want_mb} MB for {n} daemons; "
                        f"free memory or run with --centers {int(avail_mb // RSS_PER_DAEMON_MB)}")
    h.info(f"limits: open files {soft} (need {need}), memory available {avail_mb:.0f} MB "
           f"(want {want_mb} MB)")
    return problems


def topology(n: int, regions: int = REGIONS) -> tuple[list[str], dict[str, list[str]]]:
    hubs = [f"hub-r{r:02d}" for r in range(1, regions + 1)]
    spokes: dict[str, list[str]] = {hub: [] for hub in hubs}
    for i in range(n - regions):
        r = i % regions
        spokes[hubs[r]].append(f"r{r + 1:02d}-s{i // REGIONS + 1}")
    return hubs, spokes


def trusted_counts(nodes: list[h.Node]) -> list[int]:
    out = []
    for node in nodes:
        peers = node.call("ListPeers")
        out.append(sum(1 for p in peers if not p.get("conflict")))
    return out


def received(node: h.Node, origin: str, seqs: list[int]) -> dict[int, int]:
    """seq -> received_ms of origin's entries holding content, read from the node's file."""
    with contextlib.closing(sqlite3.connect(f"file:{node.home / 'node.db'}?mode=ro",
                                            uri=True, timeout=10)) as conn:
        marks = ",".join("?" * len(seqs))
        return dict(conn.execute(
            f"SELECT seq, received_ms FROM entries WHERE origin = ? AND seq IN ({marks}) "
            "AND payload IS NOT NULL", (origin, *seqs)))


def held_at(node: h.Node, record_id: str) -> int | None:
    """received_ms of the record's content at this node (read-only), or None."""
    with contextlib.closing(sqlite3.connect(f"file:{node.home / 'node.db'}?mode=ro",
                                            uri=True, timeout=10)) as conn:
        row = conn.execute("SELECT min(received_ms) FROM entries WHERE record_id = ? AND "
                           "payload IS NOT NULL", (record_id,)).fetchone()
        return row[0] if row else None


def copies_held(node: h.Node, origin: str, seq: int) -> tuple[int, int]:
    """(sealed copies, their bytes) this node keeps for one position."""
    with contextlib.closing(sqlite3.connect(f"file:{node.home / 'node.db'}?mode=ro",
                                            uri=True, timeout=10)) as conn:
        row = conn.execute("SELECT count(*), coalesce(sum(length(sealed)), 0) FROM "
                           "sealed_copies WHERE origin = ? AND seq = ?", (origin, seq)
                           ).fetchone()
        return row[0], row[1]


def holds(node: h.Node, record_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(f"file:{node.home / 'node.db'}?mode=ro",
                                            uri=True, timeout=10)) as conn:
        return conn.execute("SELECT 1 FROM entries WHERE record_id = ? AND payload IS NOT "
                            "NULL", (record_id,)).fetchone() is not None


def query(node: h.Node, entity: str, timeout: str = "10s") -> tuple[float, dict[str, Any],
                                                                     list[Any]]:
    started = time.monotonic()
    items = list(node.client.stream("Query", {"filters": {"entities": [entity], "limit": 10},
                                              "timeout": timeout}, timeout=60))
    return (time.monotonic() - started) * 1000, items[-1], items[:-1]


def main() -> int:
    p = h.arg_parser(__doc__)
    p.add_argument("--centers", type=int, default=80, help="centers in all (default 80)")
    p.add_argument("--regions", type=int, default=REGIONS,
                   help=f"regions, one hub each (default {REGIONS}; at least 3)")
    p.add_argument("--records", type=int, default=30, help="GREEN records (default 30)")
    p.add_argument("--queries", type=int, default=30, help="federated queries (default 30)")
    p.add_argument("--outage", type=float, default=60.0, help="hub outage, s (default 60)")
    p.add_argument("--poll", type=float, default=1.0,
                   help="introduction_poll_s during set-up (default 1.0; set back to 30, the "
                        "production default, by SIGHUP once every node trusts every center)")
    p.add_argument("--gap", type=float, default=2.0,
                   help="seconds between GREEN records (default 2.0: 80 daemons on 2 cores "
                        "need about 1 CPU-s per record network-wide)")
    p.add_argument("--keep", action="store_true", help="keep the homes")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()
    n, regions = args.centers, args.regions
    if regions < 3:
        p.error("--regions must be at least 3 (the AMBER record names three regions)")
    if n < 2 * regions:
        p.error(f"--centers must be at least {2 * regions} (a hub and a spoke per region)")
    h.section(f"national network: {n} centers in {regions} FEMA regions")
    h.machine_note()
    problems = check_limits(n)
    for problem in problems:
        print(f"   CANNOT RUN: {problem}", flush=True)
    if problems:
        return 2
    out: dict[str, Any] = {"centers": n}
    hubs, spokes_of = topology(n, regions)
    with h.Cluster(keep=args.keep) as cluster:
        started = time.monotonic()
        nodes = cluster.init([*hubs, *(s for hub in hubs for s in spokes_of[hub])])
        by = {x.center: x for x in nodes}
        for x in nodes:
            cfg = x.home / "node.toml"
            cfg.write_text(cfg.read_text().replace("introduction_poll_s = 30.0",
                                                   f"introduction_poll_s = {args.poll}"))
        h.info(f"init: {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        cluster.start(nodes, timeout=600)
        h.info(f"start: {time.monotonic() - started:.0f} s")

        # 1. set-up ----------------------------------------------------------
        h.section("1. set-up by introductions")
        t0 = time.monotonic()
        for a in hubs:
            for b in hubs:
                if a != b:
                    by[a].call("AddPeer", {"card": by[b].card, "introducer": True})
        for hub in hubs:
            for s in spokes_of[hub]:
                by[hub].pin(by[s])
                by[s].call("AddPeer", {"card": by[hub].card, "introducer": True})
        pinned_s = time.monotonic() - t0
        ok = h.wait_until(lambda: min(trusted_counts(nodes)) >= n - 1, timeout=600,
                          interval=1.0)
        setup_s = time.monotonic() - t0
        counts = trusted_counts(nodes)
        h.figure("cards exchanged by hand", f"{(regions - 1) * regions + 2 * (n - regions)}",
                 note=f"(full mesh by hand: {n * (n - 1)})")
        h.figure("pinning by the admins (CLI calls)", f"{pinned_s:.1f} s")
        h.figure("every node trusts every other center", f"{setup_s:.1f} s",
                 note=f"(poll {args.poll} s; min keys held {min(counts)}/{n - 1})",
                 verdict="" if ok else "NOT REACHED")
        out["setup_s"] = setup_s
        cluster.check_alive()
        # Polling every second costs every node CPU for nothing once all is known:
        # back to the production interval (SIGHUP reloads node.toml), then let the
        # links that restarted with each adoption catch up before measuring.
        for x in nodes:
            cfg = x.home / "node.toml"
            cfg.write_text(cfg.read_text().replace(f"introduction_poll_s = {args.poll}",
                                                   "introduction_poll_s = 30.0"))
            assert x.proc is not None
            x.proc.send_signal(signal.SIGHUP)
        time.sleep(15)

        # 2. GREEN members record everywhere --------------------------------------
        h.section(f"2. GREEN members record at a spoke, held by all {n}")
        corpus = h.Corpus(args.records + 1000)
        origin = by[spokes_of[hubs[0]][0]]
        cpu0 = sum(x.cpu_seconds() for x in nodes)
        seqs = []
        for i in range(args.records):
            r = origin.publish([corpus.draft(i, title_extra=f"green{i:03d}")])[0]
            seqs.append(int(r["seq"]))
            time.sleep(args.gap)
        # Read from the database files (the benchmark's CPU, not the daemons').
        everywhere = h.wait_until(lambda: all(
            seqs[-1] in received(x, origin.center, seqs[-1:]) for x in nodes),
            timeout=120, interval=1.0)
        cpu = sum(x.cpu_seconds() for x in nodes) - cpu0
        published = received(origin, origin.center, seqs)
        last: dict[int, int] = dict.fromkeys(seqs, 0)
        missing = 0
        for x in nodes:
            got = received(x, origin.center, seqs)
            for s in seqs:
                if s in got:
                    last[s] = max(last[s], got[s])
                else:
                    missing += 1
        lat = [(last[s] - published[s]) / 1000 for s in seqs if s in published]
        p99 = h.percentile(lat, 99)
        h.figure("p50 publish -> held by all", f"{h.percentile(lat, 50):.2f} s")
        h.figure("p99 publish -> held by all", f"{p99:.2f} s", "<= 2 s", h.verdict(p99 <= 2))
        h.figure("copies missing at the end", str(missing), "0",
                 h.verdict(missing == 0 and everywhere))
        deliveries = args.records * (n - 1)
        h.figure("CPU per delivered record (all daemons)",
                 f"{cpu / deliveries * 1000:.2f} ms", note=f"({cpu:.1f} s CPU, "
                 f"{deliveries} deliveries)")
        out.update(green_p50_s=h.percentile(lat, 50), green_p99_s=p99, green_missing=missing,
                   cpu_ms_per_delivery=cpu / deliveries * 1000)

        # 3. AMBER for three named centers in three regions -------------------------
        h.section("3. AMBER record for three named centers in three regions")
        named = [spokes_of[hubs[0]][-1], spokes_of[hubs[regions // 2]][0],
                 spokes_of[hubs[-1]][0]]
        author = by[named[0]]
        rec = author.publish([{"kind": "BOLO", "title": "amber for three",
                               "entities": ["plate=AMB 3"],
                               "policy": {"tlp": "AMBER", "audience": named,
                                          "discoverability": "pointer"}}])[0]
        published_ms = held_at(author, rec["record_id"]) or 0
        delivered = h.wait_until(lambda: all(held_at(by[c], rec["record_id"]) for c in named),
                                 timeout=60, interval=0.5)
        last_ms = max((held_at(by[c], rec["record_id"]) or 0) for c in named)
        time.sleep(2)  # anything that would arrive elsewhere has had time to
        holders = sorted(x.center for x in nodes if holds(x, rec["record_id"]))
        outside = [c for c in holders if c not in named]
        h.info(f"held by: {holders} (target: exactly the three: {sorted(named)}) "
               f"{h.verdict(holders == sorted(named))}")
        h.figure("held outside the three", str(len(outside)), "0", h.verdict(not outside))
        h.figure("publish -> held by the last named center",
                 f"{(last_ms - published_ms) / 1000:.2f} s" if delivered else "NOT DELIVERED",
                 note="(sealed copies relayed by hubs outside the audience)")
        relays = [(x.center, *copies_held(x, author.center, int(rec["seq"])))
                  for x in nodes if x.center not in named]
        carrying = [r for r in relays if r[1]]
        h.figure("nodes outside the audience carrying copies", str(len(carrying)),
                 note=f"(copies each: {max((r[1] for r in carrying), default=0)}, "
                      f"{max((r[2] for r in carrying), default=0)} bytes; no content)")
        for c in named[1:]:
            _, summary, results = query(by[c], "plate=AMB 3")
            full = [r for r in results if r.get("record_id") == rec["record_id"]
                    and r["access"] == "FULL"]
            h.figure(f"{c} reads it by query", "FULL" if full else "no")
        out["amber_delivery_s"] = (last_ms - published_ms) / 1000 if delivered else None
        out["amber_holders"] = holders

        # 4. federated query answered by all --------------------------------------------
        h.section(f"4. federated entity query from a spoke ({args.queries} queries)")
        asker = by[spokes_of[hubs[1]][0]]
        times, answered = [], []
        for i in range(args.queries):
            ms, summary, _ = query(asker, f"plate={corpus.plate(i)}")
            times.append(ms / 1000)
            answered.append(sum(1 for o in summary["summary"].values()
                                if o["status"] == "answered"))
        q99 = h.percentile(times, 99)
        h.figure("centers answering (min of runs)", f"{min(answered)}/{n}", f"{n}",
                 h.verdict(min(answered) == n))
        h.figure("p50 query", f"{h.percentile(times, 50):.2f} s")
        h.figure("p99 query", f"{q99:.2f} s", "<= 1 s", h.verdict(q99 <= 1))
        out.update(query_p50_s=h.percentile(times, 50), query_p99_s=q99,
                   query_min_answered=min(answered))

        # 5. hub outage -------------------------------------------------------------------
        hub = by[hubs[2]]
        region = [by[s] for s in spokes_of[hub.center]]
        h.section(f"5. {hub.center} stopped {args.outage:.0f} s while its region publishes")
        cluster.stop([hub])
        before = {s.center: s.active(s.center) for s in region}
        t_end = time.monotonic() + args.outage
        k = 0
        while time.monotonic() < t_end:
            for s in region:
                s.publish([corpus.draft(500 + k, title_extra=f"outage{k:03d}")])
                k += 1
            time.sleep(5)
        want = {s.center: s.active(s.center) for s in region}
        t0 = time.monotonic()
        cluster.start([hub], timeout=120)
        converged = h.wait_until(lambda: all(
            x.active(s.center) >= want[s.center] for x in nodes for s in region),
            timeout=300, interval=1.0)
        conv_s = time.monotonic() - t0
        h.figure("records published during the outage", str(k),
                 note=f"({len(region)} spokes; before: {sum(before.values())})")
        h.figure("restart -> every node holds them", f"{conv_s:.1f} s",
                 verdict="" if converged else "NOT CONVERGED")
        out["outage_convergence_s"] = conv_s

        # 6. memory ----------------------------------------------------------------------
        h.section("6. resources")
        rss = cluster.total_rss_mb()
        h.figure("RSS of all daemons", f"{rss:.0f} MB", note=f"({rss / n:.0f} MB per daemon)")
        out["rss_mb"] = rss
        cluster.check_alive()
    h.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    h.run_main(main)
