"""The cost of storing a record: node/storage's write path, in process, no daemon.

Signs --records synthetic records (the corpus of bench_local/bench_replication), then
stores them as first versions (log.insert_new_records, the path of a catch-up and of
a publish) into a fresh database, --batch records per write transaction. Prints, per
record, the wall time and the storing thread's CPU time of each SQL statement and of
COMMIT (fsync included in wall, not in CPU), the database size, the latency of an
entity search (200 keys of records spread over the store), then the cost of a
supersede (a new version: insert_entries + apply_entries, which erases the old
version's content) averaged over --supersedes records spread over the store.

This is the critical path of ingest (issue 10 item 3): B's storing thread. Figures
are CPU per record on one thread; the load average is printed beside them.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.core import record
from node.core.query import SearchParams
from node.core.signing import seal_record
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import records_pb2

Item = tuple[records_pb2.Envelope, records_pb2.RecordBody]


def make_items(n: int, origin: str = "rep-a") -> list[Item]:
    key = Ed25519PrivateKey.generate()
    secret = secrets.token_bytes(32)  # as a node's (NodeService.new_record_id)
    corpus = h.Corpus(n, seed=3)
    now = int(time.time() * 1000)
    out: list[Item] = []
    prev = b""
    for i in range(n):
        draft = record.parse_draft(corpus.draft(i))
        body = record.build_body(draft, origin=origin, seq=i + 1, prev=prev,
                                 record_id=record.new_record_id(
                                     record.id_cluster(secret, i + 1)),
                                 version=1, created_ms=now,
                                 audience=frozenset({"members"}), author="bench",
                                 contact="bench desk")
        env = seal_record(key, body)
        prev = log_tx.entry_hash(env.payload)
        out.append((env, body))
    return out


class Timed:
    """A connection that adds each statement's wall and thread CPU time up."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.wall: collections.Counter[str] = collections.Counter()
        self.cpu: collections.Counter[str] = collections.Counter()

    def _timed(self, name: str, fn: Any, *args: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        out = fn(*args)
        self.wall[name] += time.perf_counter() - w
        self.cpu[name] += time.thread_time() - c
        return out

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(" ".join(sql.split())[:44], self.conn.execute, sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self._timed(" ".join(sql.split("(")[0].split())[:44], self.conn.executemany,
                           sql, rows)


def store(conn: sqlite3.Connection, items: list[Item], batch: int) -> Timed:
    timed = Timed(conn)
    for i in range(0, len(items), batch):
        timed.execute("BEGIN IMMEDIATE")
        log_tx.insert_new_records(timed, items[i:i + batch], "rep-a", 0)  # type: ignore[arg-type]
        timed.execute("COMMIT")
    return timed


def supersede(conn: sqlite3.Connection, items: list[Item], count: int) -> tuple[float, float]:
    """A new version of ``count`` records spread over the store, one transaction
    each (as a single live entry arrives): mean wall and CPU seconds."""
    key = Ed25519PrivateKey.generate()
    seq = len(items)
    wall = cpu = 0.0
    step = max(1, len(items) // count)
    for _env, old in items[::step][:count]:
        seq += 1
        body = records_pb2.RecordBody()
        body.CopyFrom(old)
        body.seq, body.version = seq, 2
        env = seal_record(key, body)
        w, c = time.perf_counter(), time.thread_time()
        with immediate(conn):
            log_tx.insert_entries(conn, [(env, body)], "rep-a", 0)
            log_tx.apply_entries(conn, [body])
        wall += time.perf_counter() - w
        cpu += time.thread_time() - c
    n = min(count, len(items[::step]))
    return wall / n, cpu / n


def purge_cost(conn: sqlite3.Connection, items: list[Item]) -> dict[str, float]:
    """What one purge costs the index: deleting the record's text (at once, for every
    purge) and the FTS5 'optimize' that rewrites the whole text index so its terms
    leave the file (compact_index: at once for this node's own purges, at most once
    per [limits] index_compact_s for purges that arrive from peers). Seconds."""
    _env, body = items[len(items) // 2]
    rec = log_tx.record_state(conn, body.origin, body.record_id)
    assert rec is not None
    w, c = time.perf_counter(), time.thread_time()
    with immediate(conn):
        log_tx.erase_content(conn, body.origin, body.record_id, rec[0])
    out = {"delete_wall": time.perf_counter() - w, "delete_cpu": time.thread_time() - c}
    w, c = time.perf_counter(), time.thread_time()
    with immediate(conn):
        log_tx.compact_index(conn)
    out |= {"optimize_wall": time.perf_counter() - w, "optimize_cpu": time.thread_time() - c}
    return out


def search_times(conn: sqlite3.Connection, items: list[Item], count: int) -> list[float]:
    """Wall seconds of ``count`` entity searches (the first key of records spread
    over the store, the 50 newest matches read, as a user's search reads them)."""
    now = int(time.time() * 1000)
    step = max(1, len(items) // count)
    out = []
    for _env, b in items[::step][:count]:
        keys = [k for e in b.entities for k in e.keys][:1]
        if not keys:
            continue
        params = SearchParams(entity_keys=tuple(keys), limit=50)
        w = time.perf_counter()
        list(itertools.islice(log_tx.matches(conn, params, now), params.limit))
        out.append(time.perf_counter() - w)
    return sorted(out)


def budgets(store_cpu: float, rates: h.CryptoRates) -> None:
    """Issue 10's ratio targets as CPU per record on this machine's cores: what is
    left for everything else (the client or serving node, gRPC, parsing, checks,
    the event loops) once signing or verifying and this storing are paid. The cores
    are shared by every process of the run (bench_local: client and node;
    bench_replication: A and B), so this is an upper bound on what any design with a
    signature per record and this store can spend."""
    cores = os.cpu_count() or 1
    for name, ratio, rate, crypto in (("publish at 0.6 x sign", 0.6, rates.sign_per_s, "sign"),
                                      ("ingest at 1.0 x verify", 1.0, rates.verify_per_s,
                                       "verify")):
        budget = cores / (ratio * rate)
        left = budget - 1 / rate - store_cpu
        h.figure(f"CPU budget: {name}",
                 f"{budget * 1e6:6.1f} µs/record on {cores} cores",
                 note=f"{crypto} {1e6 / rate:.1f} + storing {store_cpu * 1e6:.1f}: "
                      f"{left * 1e6:+.1f} µs left for all the rest")


def main() -> int:
    parser = h.arg_parser(__doc__ or "")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, action="append",
                        help="records per transaction (repeatable; default 32 and 256)")
    parser.add_argument("--supersedes", type=int, default=200)
    parser.add_argument("--sql", action="append", default=[],
                        help="a statement run on the fresh database before storing (to try "
                             "a pragma or an index change; repeatable)")
    parser.add_argument("--try", dest="variants", action="append", default=[],
                        metavar="NAME=SQL[;SQL...]",
                        help="also store the same records with these statements run first "
                             "(a variant to compare; repeatable)")
    parser.add_argument("--page-size", type=int, default=0,
                        help="page size of the fresh database (default: what fcnode makes)")
    parser.add_argument("--json")
    args = parser.parse_args()
    batches = args.batch or [32, 256]
    h.section("setup")
    h.machine_note()
    for statement in args.sql:
        h.info(f"with: {statement}")
    if args.page_size:
        h.info(f"page size {args.page_size}")
    t = time.perf_counter()
    items = make_items(args.records)
    h.info(f"{len(items)} records signed in {time.perf_counter() - t:.1f} s "
           f"(payload {sum(len(e.payload) for e, _ in items) / len(items):.0f} bytes mean)")
    rates = h.ed25519_rates(1.0)
    h.info(f"Ed25519 on one thread: sign {rates.sign_per_s:,.0f}/s, "
           f"verify {rates.verify_per_s:,.0f}/s")
    out: dict[str, Any] = {"records": len(items), "batches": {},
                           "sign_per_s": rates.sign_per_s, "verify_per_s": rates.verify_per_s}
    variants = [("as is", list(args.sql))]
    for spec in args.variants:
        name, _, sql = spec.partition("=")
        variants.append((name, list(args.sql) + [x for x in sql.split(";") if x.strip()]))
    for (name, statements), batch in itertools.product(variants, batches):
        home = Path(tempfile.mkdtemp(prefix="fcb-store-"))
        conn: sqlite3.Connection | None = None
        try:
            if args.page_size:
                with contextlib.closing(sqlite3.connect(home / "node.db")) as empty:
                    empty.execute(f"PRAGMA page_size = {int(args.page_size)}")
                    empty.execute("VACUUM")
            conn = open_sync(home / "node.db", create=True)
            for statement in statements:
                conn.execute(statement)
            w, c = time.perf_counter(), time.thread_time()
            timed = store(conn, items, batch)
            wall, cpu = time.perf_counter() - w, time.thread_time() - c
            n = len(items)
            h.section(f"store {n} new records, {batch} per transaction"
                      + (f" [{name}: {'; '.join(statements)}]" if statements else ""))
            h.machine_note()
            for stmt, v in timed.wall.most_common():
                h.figure(stmt, f"{v / n * 1e6:6.1f} wall {timed.cpu[stmt] / n * 1e6:6.1f} cpu",
                         note="µs/record")
            h.figure("total (storing thread)",
                     f"{wall / n * 1e6:6.1f} wall {cpu / n * 1e6:6.1f} cpu",
                     note=f"µs/record = {n / cpu:,.0f} records per CPU second")
            budgets(cpu / n, rates)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = os.path.getsize(home / "node.db")
            h.figure("database size", f"{size / 1e6:.1f} MB", note=f"{size / n:,.0f} bytes/record")
            st = search_times(conn, items, 200)
            if st:
                h.figure("entity search", f"p50 {st[len(st) // 2] * 1e3:.2f} ms "
                         f"p99 {st[int(len(st) * 0.99)] * 1e3:.2f} ms",
                         note=f"{len(st)} searches, one key each, the 50 newest read")
            sw, sc = supersede(conn, items, args.supersedes)
            h.figure(f"supersede at {n} entries", f"{sw * 1e3:.2f} ms wall {sc * 1e3:.2f} cpu",
                     note="one new version, its own transaction")
            pc = purge_cost(conn, items)
            h.figure(f"purge at {n} records: delete from the index",
                     f"{pc['delete_wall'] * 1e3:.2f} ms wall {pc['delete_cpu'] * 1e3:.2f} cpu",
                     note="every purge, at once")
            h.figure(f"purge at {n} records: FTS5 optimize (whole text index)",
                     f"{pc['optimize_wall']:.2f} s wall {pc['optimize_cpu']:.2f} cpu",
                     note="own purges at once; peers' at most once per index_compact_s")
            out["batches"][f"{name} {batch}"] = {
                "wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6, "db_bytes": size,
                "supersede_ms": sw * 1e3, "supersede_cpu_ms": sc * 1e3,
                "purge_delete_ms": pc["delete_wall"] * 1e3,
                "optimize_s": pc["optimize_wall"], "optimize_cpu_s": pc["optimize_cpu"]}
        finally:
            if conn is not None:
                conn.close()
            shutil.rmtree(home, ignore_errors=True)
    h.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    h.run_main(main)
