"""Watch transactions: local watches and their hits, standing queries registered
by other centers, their durable outbox, and the queue of changed records."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace

from node.core.watch import Watch
from node.storage.log import E_COLUMNS, NCOL, StoredEntry


def _watch(row: tuple) -> Watch:
    return Watch(row[0], row[1], Watch.params_from_json(json.loads(row[2])), bool(row[3]),
                 row[4], row[5])


_W = "id, owner, params, network, created_ms, expires_ms"


def add_watch(conn: sqlite3.Connection, w: Watch) -> None:
    conn.execute(f"INSERT INTO watches ({_W}) VALUES (?, ?, ?, ?, ?, ?)",
                 (w.id, w.owner, json.dumps(w.to_json(), sort_keys=True), int(w.network),
                  w.created_ms, w.expires_ms))


def count_of(conn: sqlite3.Connection, owner: str) -> int:
    return conn.execute("SELECT count(*) FROM watches WHERE owner = ?", (owner,)).fetchone()[0]


def watches(conn: sqlite3.Connection, owner: str | None = None, now_ms: int = 0,
            network_only: bool = False) -> list[Watch]:
    sql, args = f"SELECT {_W} FROM watches WHERE expires_ms > ?", [now_ms]
    if owner is not None:
        sql += " AND owner = ?"
        args.append(owner)
    if network_only:
        sql += " AND network = 1"
    return [_watch(r) for r in conn.execute(sql + " ORDER BY created_ms, id", args)]


def watch(conn: sqlite3.Connection, watch_id: str) -> Watch | None:
    row = conn.execute(f"SELECT {_W} FROM watches WHERE id = ?", (watch_id,)).fetchone()
    return _watch(row) if row else None


def remove_watch(conn: sqlite3.Connection, watch_id: str) -> None:
    conn.execute("DELETE FROM watches WHERE id = ?", (watch_id,))
    conn.execute("DELETE FROM watch_hits WHERE watch_id = ?", (watch_id,))


def expire_watches(conn: sqlite3.Connection, now_ms: int) -> list[str]:
    ids = [r[0] for r in conn.execute("SELECT id FROM watches WHERE expires_ms <= ?", (now_ms,))]
    for watch_id in ids:
        remove_watch(conn, watch_id)
    return ids


def remove_owner(conn: sqlite3.Connection, owner: str) -> list[str]:
    """A removed user's watches go with them (and their hits)."""
    ids = [r[0] for r in conn.execute("SELECT id FROM watches WHERE owner = ?", (owner,))]
    for watch_id in ids:
        remove_watch(conn, watch_id)
    return ids


# -- the queue of records whose current version changed ------------------------
def set_self(conn: sqlite3.Connection, center: str) -> None:
    conn.execute("DELETE FROM watch_self WHERE center != ?", (center,))
    conn.execute("INSERT OR IGNORE INTO watch_self (center) VALUES (?)", (center,))



def queued(conn: sqlite3.Connection, limit: int) -> list[tuple[int, StoredEntry | None]]:
    """Up to ``limit`` queued records, each with its current entry if it is still an
    active content version (None: it was retracted, purged or erased since)."""
    rows = conn.execute(
        f"SELECT q.rec, r.state, {E_COLUMNS} FROM "
        "(SELECT rec FROM watch_queue ORDER BY rec LIMIT ?) q "
        "LEFT JOIN records r ON r.id = q.rec "
        "LEFT JOIN entries e ON e.origin = r.origin AND e.seq = r.seq", (limit,)).fetchall()
    out: list[tuple[int, StoredEntry | None]] = []
    for row in rows:
        entry = StoredEntry(*row[2:2 + NCOL])
        ok = row[1] == "active" and entry.payload is not None
        out.append((row[0], entry if ok else None))
    return out


def dequeue(conn: sqlite3.Connection, recs: Iterable[int]) -> None:
    conn.executemany("DELETE FROM watch_queue WHERE rec = ?", [(r,) for r in recs])


# -- hits of this node's watches --------------------------------------------------
@dataclass(frozen=True)
class Hit:
    id: int
    watch_id: str
    owner: str
    ts_ms: int
    source: str
    origin: str
    record_id: str
    version: int
    access: str
    payload: bytes | None = None
    signature: bytes | None = None
    key_id: str | None = None
    stub: bytes | None = None
    stub_signature: bytes | None = None
    stub_key_id: str | None = None


_H = ("id, watch_id, owner, ts_ms, source, origin, record_id, version, access, payload, "
      "signature, key_id, stub, stub_signature, stub_key_id")


def add_hit(conn: sqlite3.Connection, hit: Hit, keep: int) -> int:
    """Store one hit (once per watch and record version); keep the owner's newest
    ``keep`` hits, counting the dropped ones. Its id when it is new, else 0."""
    cur = conn.execute(
        f"INSERT OR IGNORE INTO watch_hits ({_H.replace('id, ', '', 1)}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (hit.watch_id, hit.owner, hit.ts_ms, hit.source, hit.origin, hit.record_id,
         hit.version, hit.access, hit.payload, hit.signature, hit.key_id, hit.stub,
         hit.stub_signature, hit.stub_key_id))
    if not cur.rowcount:
        return 0
    _prune(conn, "watch_hits", "owner", hit.owner, f"user:{hit.owner}", keep)
    return int(cur.lastrowid or 0)


def _prune(conn: sqlite3.Connection, table: str, column: str, value: str, who: str,
           keep: int) -> None:
    row = conn.execute(f"SELECT id FROM {table} WHERE {column} = ? ORDER BY id DESC "
                       "LIMIT 1 OFFSET ?", (value, max(keep, 0))).fetchone()
    if row is None:
        return
    n = conn.execute(f"DELETE FROM {table} WHERE {column} = ? AND id <= ?",
                     (value, row[0])).rowcount
    conn.execute("INSERT INTO watch_dropped (who, dropped) VALUES (?, ?) ON CONFLICT (who) "
                 "DO UPDATE SET dropped = dropped + excluded.dropped", (who, n))


def dropped(conn: sqlite3.Connection, who: str) -> int:
    row = conn.execute("SELECT dropped FROM watch_dropped WHERE who = ?", (who,)).fetchone()
    return row[0] if row else 0


def hits(conn: sqlite3.Connection, owner: str | None, after_id: int, limit: int) -> list[Hit]:
    sql, args = f"SELECT {_H} FROM watch_hits WHERE id > ?", [after_id]
    if owner is not None:
        sql += " AND owner = ?"
        args.append(owner)
    return [Hit(*r) for r in conn.execute(sql + " ORDER BY id LIMIT ?", [*args, limit])]


def hit(conn: sqlite3.Connection, hit_id: int) -> Hit | None:
    row = conn.execute(f"SELECT {_H} FROM watch_hits WHERE id = ?", (hit_id,)).fetchone()
    return Hit(*row) if row else None


# -- standing queries of other centers (this node answers them) ------------------
@dataclass(frozen=True)
class Standing:
    center: str
    watch: Watch          # owner = the remote user
    attributes: tuple[str, ...]
    registered_ms: int
    via: str = ""         # the peer its set came through ("" or center: directly)


@dataclass(frozen=True)
class Route:
    """A watcher center's standing set as taken here: the peer it came through
    (hits go back that way), how far it may still travel, and its signed bytes
    (SignedStandingSet without routing) to pass on unchanged; ``also``: other
    peers the same set came through, which hits take too (a first hop that drops
    them must not cut the watcher off)."""
    center: str
    issued_ms: int
    via: str
    hops_left: int
    path: tuple[str, ...]
    signed: bytes | None
    also: tuple[str, ...] = ()

    @property
    def ways(self) -> tuple[str, ...]:
        """Every peer a hit for this watcher goes to (the watcher alone, if direct)."""
        return (self.via, *self.also)


_R = ("center, issued_ms, coalesce(via, center), hops_left, path, signed, "
      "(SELECT json_group_array(peer) FROM (SELECT peer FROM standing_ways w "
      "WHERE w.center = standing_sync.center ORDER BY peer))")


def _route(row: tuple) -> Route:
    return Route(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), row[5],
                 tuple(json.loads(row[6])))


def route(conn: sqlite3.Connection, center: str) -> Route | None:
    row = conn.execute(f"SELECT {_R} FROM standing_sync WHERE center = ?", (center,)).fetchone()
    return _route(row) if row else None


def routes(conn: sqlite3.Connection, every: bool = False) -> list[Route]:
    """Every set that may travel further from here (to pass on to dialled peers);
    ``every``: every set taken here."""
    where = "" if every else " WHERE hops_left > 0 AND signed IS NOT NULL"
    return [_route(r) for r in conn.execute(
        f"SELECT {_R} FROM standing_sync{where} ORDER BY center")]


def add_way(conn: sqlite3.Connection, center: str, peer: str, most: int) -> bool:
    """Another peer that brought ``center``'s set as taken: its hits go that way
    too, for at most ``most`` such peers (the first to bring it). Not for a
    watcher that is a direct peer (its hits go to it), nor the way already held."""
    r = route(conn, center)
    if r is None or r.via == center or peer in r.ways or len(r.also) >= most:
        return False
    conn.execute("INSERT INTO standing_ways (center, peer) VALUES (?, ?)", (center, peer))
    return True


def routed_via(conn: sqlite3.Connection, peer: str, *besides: str) -> int:
    """Watcher centers (other than ``besides``) whose sets came through ``peer``:
    as the way taken first, or as a further way back (standing_ways). Both hold
    that watcher's hits for ``peer``, so both count against what a peer may bring."""
    marks = ", ".join("?" * len(besides)) or "NULL"
    return conn.execute(
        "SELECT count(*) FROM (SELECT center FROM standing_sync WHERE coalesce(via, center) = ? "
        "UNION SELECT center FROM standing_ways WHERE peer = ?) "
        f"WHERE center NOT IN ({marks})", (peer, peer, *besides)).fetchone()[0]


def standing_issued(conn: sqlite3.Connection, center: str) -> int:
    row = conn.execute("SELECT issued_ms FROM standing_sync WHERE center = ?",
                       (center,)).fetchone()
    return row[0] if row else 0


def replace_standing(conn: sqlite3.Connection, center: str, issued_ms: int,
                     items: list[Standing], via: str | None = None, hops_left: int = 0,
                     path: tuple[str, ...] = (), signed: bytes | None = None,
                     keep_ways: bool = False) -> tuple[int, int]:
    """Make ``items`` the whole set of ``center``'s standing queries here (a signed
    set replaces the previous one: a watch left out is withdrawn), taken through
    ``via`` (default: from the center itself). ``keep_ways``: the same set (its
    routing merged): the other ways back learned stay. Returns (added, withdrawn)."""
    before = {r[0] for r in conn.execute(
        "SELECT watch_id FROM standing_queries WHERE center = ?", (center,))}
    after = {s.watch.id for s in items}
    conn.execute("DELETE FROM standing_queries WHERE center = ?", (center,))
    conn.executemany(
        "INSERT INTO standing_queries (center, watch_id, user, attributes, params, "
        "registered_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(center, s.watch.id, s.watch.owner, json.dumps(list(s.attributes)),
          json.dumps(s.watch.to_json(), sort_keys=True), s.registered_ms, s.watch.expires_ms)
         for s in items])
    gone = before - after
    for watch_id in gone:
        _forget_standing(conn, center, watch_id)
    conn.execute("INSERT INTO standing_sync (center, issued_ms, via, hops_left, path, signed) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (center) DO UPDATE SET "
                 "issued_ms = excluded.issued_ms, via = excluded.via, "
                 "hops_left = excluded.hops_left, path = excluded.path, "
                 "signed = excluded.signed",
                 (center, issued_ms, via or center, hops_left, json.dumps(list(path)), signed))
    # Other ways back are learned again from the copies of this set (a newer set
    # names nobody yet; a watcher now direct needs none).
    if not keep_ways:
        conn.execute("DELETE FROM standing_ways WHERE center = ?", (center,))
    return len(after - before), len(gone)


def _forget_standing(conn: sqlite3.Connection, center: str, watch_id: str) -> None:
    conn.execute("DELETE FROM watch_outbox WHERE center = ? AND watch_id = ?", (center, watch_id))
    conn.execute("DELETE FROM standing_notified WHERE center = ? AND watch_id = ?",
                 (center, watch_id))


def standing(conn: sqlite3.Connection, now_ms: int, center: str | None = None
             ) -> list[Standing]:
    sql = ("SELECT q.center, q.watch_id, q.user, q.attributes, q.params, q.registered_ms, "
           "q.expires_ms, coalesce(s.via, q.center) FROM standing_queries q "
           "LEFT JOIN standing_sync s ON s.center = q.center WHERE q.expires_ms > ?")
    args: list[object] = [now_ms]
    if center is not None:
        sql += " AND q.center = ?"
        args.append(center)
    return [Standing(r[0], Watch(r[1], r[2], Watch.params_from_json(json.loads(r[4])), True,
                                 r[5], r[6]), tuple(json.loads(r[3])), r[5], r[7])
            for r in conn.execute(sql + " ORDER BY q.center, q.registered_ms", args)]


def expire_standing(conn: sqlite3.Connection, now_ms: int) -> int:
    rows = conn.execute("SELECT center, watch_id FROM standing_queries WHERE expires_ms <= ?",
                        (now_ms,)).fetchall()
    for center, watch_id in rows:
        conn.execute("DELETE FROM standing_queries WHERE center = ? AND watch_id = ?",
                     (center, watch_id))
        _forget_standing(conn, center, watch_id)
    return len(rows)


def drop_center(conn: sqlite3.Connection, center: str) -> None:
    """A peer unpinned: its standing queries and their outbox go; so do the sets of
    watchers beyond it that came through it alone (hits could not go back); a set
    that also came another way goes back that way now."""
    conn.execute("DELETE FROM standing_ways WHERE peer = ?", (center,))
    stranded = []
    for (watcher,) in conn.execute("SELECT center FROM standing_sync WHERE via = ? AND "
                                   "center != ?", (center, center)).fetchall():
        other = conn.execute("SELECT peer FROM standing_ways WHERE center = ? ORDER BY peer "
                             "LIMIT 1", (watcher,)).fetchone()
        if other is None:
            stranded.append(watcher)
            continue
        conn.execute("UPDATE standing_sync SET via = ? WHERE center = ?", (other[0], watcher))
        conn.execute("DELETE FROM standing_ways WHERE center = ? AND peer = ?",
                     (watcher, other[0]))
    watchers = [center, *stranded]
    for watcher in watchers:
        for (watch_id,) in conn.execute(
                "SELECT watch_id FROM standing_queries WHERE center = ?", (watcher,)).fetchall():
            _forget_standing(conn, watcher, watch_id)
        conn.execute("DELETE FROM standing_queries WHERE center = ?", (watcher,))
        conn.execute("DELETE FROM standing_sync WHERE center = ?", (watcher,))
        # (Its other ways too: they count against those peers' bound, routed_via.)
        conn.execute("DELETE FROM standing_ways WHERE center = ?", (watcher,))
    conn.execute("DELETE FROM watch_outbox WHERE peer = ?", (center,))


@dataclass(frozen=True)
class Outgoing:
    id: int
    center: str           # the watcher center
    watch_id: str
    origin: str
    seq: int
    record_id: str
    version: int
    access: str           # FULL | POINTER at match time; SEALED | UNVERIFIED: relayed
    #                       from beyond, its signature checked here or not (key unknown)
    peer: str = ""        # the peer it goes to ("": the watcher itself)
    sealed: bytes | None = None  # relayed: a SealedWatchHit, passed on unchanged
    logged: str | None = None    # the decision it was last logged with as sent
    source: str | None = None    # relayed: the peer that delivered it


def add_outgoing(conn: sqlite3.Connection, o: Outgoing, ts_ms: int) -> bool:
    """Queue a hit for a watcher center (call ``prune_outbox`` once per batch)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO watch_outbox (center, watch_id, ts_ms, origin, seq, record_id, "
        "version, access, peer, sealed, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (o.center, o.watch_id, ts_ms, o.origin, o.seq, o.record_id, o.version, o.access,
         o.peer or o.center, o.sealed, o.source))
    return bool(cur.rowcount)


def add_outgoing_ways(conn: sqlite3.Connection, o: Outgoing, route: Route, ts_ms: int,
                      besides: str = "") -> bool:
    """Queue a hit for each way back to its watcher (``route.ways``) but ``besides``
    (the peer it came from): a row per way, each way holding it once. True if any
    was new."""
    new = False
    for way in route.ways:
        if way != besides:
            new |= add_outgoing(conn, replace(o, peer=way), ts_ms)
    return new


UNVERIFIED = "UNVERIFIED"
ORIGIN_SHARE = 4  # over max_relay_bytes, a sender above a quarter of it loses hits first
# Which of a watcher's outbox rows are kept first: hits surely real (this node's
# own, and relayed ones whose signature it checked), newest first; relayed hits
# it could not check (anyone may have made them) only after those.
_KEEP_ORDER = f"(access = '{UNVERIFIED}'), id DESC"


def _over_bytes(rows: list[tuple[int, str, int]], max_bytes: int) -> list[int]:
    """Rows (id, sender, bytes), the first kept first, to drop so that at most
    ``max_bytes`` remain: the last rows of the sender holding the most, while it
    holds more than its share (max_bytes / ORIGIN_SHARE), so that one center
    answering with a few hits padded to the largest size cannot push every other
    center's out; then the last rows of all. The sender of a hit whose signature
    was checked is its answering center; of one that could not be, the peer that
    delivered it (the center it names is only its word)."""
    total = sum(n for _, _, n in rows)
    if total <= max_bytes:
        return []
    share = max_bytes // ORIGIN_SHARE
    per: dict[str, list[tuple[int, int]]] = {}
    for i, origin, n in rows:
        per.setdefault(origin, []).append((i, n))
    used = {o: sum(n for _, n in rs) for o, rs in per.items()}
    drop: list[int] = []
    while total > max_bytes:
        origin = max(used, key=lambda o: used[o])
        if used[origin] <= share:
            break
        i, n = per[origin].pop()
        drop.append(i)
        used[origin] -= n
        total -= n
    dropped = set(drop)
    for i, _, n in reversed(rows):
        if total <= max_bytes:
            break
        if i not in dropped:
            drop.append(i)
            total -= n
    return drop


def prune_outbox(conn: sqlite3.Connection, center: str, keep: int,
                 max_bytes: int | None = None) -> None:
    """Keep ``keep`` of a watcher's outbox rows for each way they go (and, for
    relayed sealed hits, at most ``max_bytes`` of them), dropping unverified
    relayed hits first, then the oldest; count the dropped ones."""
    over: list[int] = []
    for (peer,) in conn.execute("SELECT DISTINCT peer FROM watch_outbox WHERE center = ?",
                                (center,)).fetchall():
        over += _over_way(conn, center, peer, keep, max_bytes)
    if not over:
        return
    n = conn.executemany("DELETE FROM watch_outbox WHERE id = ?",
                         [(i,) for i in set(over)]).rowcount
    conn.execute("INSERT INTO watch_dropped (who, dropped) VALUES (?, ?) ON CONFLICT (who) "
                 "DO UPDATE SET dropped = dropped + excluded.dropped", (f"center:{center}", n))


def _over_way(conn: sqlite3.Connection, center: str, peer: str, keep: int,
              max_bytes: int | None) -> list[int]:
    over = [r[0] for r in conn.execute(
        f"SELECT id FROM watch_outbox WHERE center = ? AND peer = ? ORDER BY {_KEEP_ORDER} "
        "LIMIT -1 OFFSET ?", (center, peer, max(keep, 0)))]
    if max_bytes is not None:
        gone = set(over)
        rows = [r for r in conn.execute(
            f"SELECT id, CASE access WHEN '{UNVERIFIED}' THEN 'peer:' || coalesce(source, '') "
            f"ELSE origin END, length(sealed) FROM watch_outbox WHERE center = ? AND peer = ? "
            f"AND sealed IS NOT NULL ORDER BY {_KEEP_ORDER}", (center, peer)) if r[0] not in gone]
        over += _over_bytes(rows, max_bytes)
    return over


def outgoing(conn: sqlite3.Connection, peer: str, after_id: int, limit: int) -> list[Outgoing]:
    """The next rows that go to ``peer``: hits for it, and hits (or relayed sealed
    hits) for watchers whose sets came through it."""
    return [Outgoing(*r) for r in conn.execute(
        "SELECT id, center, watch_id, origin, seq, record_id, version, access, "
        "peer, sealed, logged FROM watch_outbox "
        "WHERE peer = ? AND id > ? ORDER BY id LIMIT ?",
        (peer, after_id, limit))]


def mark_logged(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """(outbox id, decision): logged as sent with that decision (not again)."""
    conn.executemany("UPDATE watch_outbox SET logged = ? WHERE id = ?",
                     [(d, i) for i, d in rows])


def ack_outgoing(conn: sqlite3.Connection, peer: str, upto_id: int) -> None:
    """The peer asked for what follows ``upto_id``: it has everything before."""
    conn.execute("DELETE FROM watch_outbox WHERE peer = ? AND id <= ?",
                 (peer, upto_id))


def count_refused(conn: sqlite3.Connection, peer: str, n: int = 1) -> None:
    """Hits from ``peer`` that failed verification (a hop altered or forged them)."""
    conn.execute("INSERT INTO watch_dropped (who, dropped) VALUES (?, ?) ON CONFLICT (who) "
                 "DO UPDATE SET dropped = dropped + excluded.dropped", (f"refused:{peer}", n))


def notify_once(conn: sqlite3.Connection, center: str, watch_id: str, record_id: str) -> bool:
    """At most one restricted-hit notice per (watch, record)."""
    return bool(conn.execute(
        "INSERT OR IGNORE INTO standing_notified (center, watch_id, record_id) VALUES (?, ?, ?)",
        (center, watch_id, record_id)).rowcount)


# -- this node's cursors into its peers' outboxes ----------------------------------
def cursor(conn: sqlite3.Connection, peer: str) -> int:
    row = conn.execute("SELECT after FROM watch_cursors WHERE peer = ?", (peer,)).fetchone()
    return row[0] if row else 0


def set_cursor(conn: sqlite3.Connection, peer: str, after: int) -> None:
    conn.execute("INSERT INTO watch_cursors (peer, after) VALUES (?, ?) ON CONFLICT (peer) "
                 "DO UPDATE SET after = max(after, excluded.after)", (peer, after))
