"""Record log transactions: own appends, replicated entries, the current-version
index (records, full text, entities), and reads for search and replication."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from node.core.chain import Held
from node.core.query import SearchParams
from node.core.record import kind_name
from node.core.signing import entry_hash
from node.wire import records_pb2

# Key announcements (public keys only): stored in the log, never a record.
KEY_KINDS = {records_pb2.KEY_ROTATION, records_pb2.CERT_RENEWAL, records_pb2.SEAL_KEY_ROTATION}
CONTENT = {records_pb2.SAR, records_pb2.BOLO, records_pb2.BULLETIN, records_pb2.TIP,
           records_pb2.DECONFLICTION}


@dataclass(frozen=True)
class StoredEntry:
    origin: str
    seq: int
    hash: bytes
    payload: bytes | None
    signature: bytes | None
    key_id: str | None
    record_id: str | None = None  # known for signed entries, erased ones and recalls
    version: int | None = None
    # The origin's signed, content-free stub of this position (verified when it was
    # stored); None for entries of older databases and bare placeholders. A v2
    # entry's stub is signed by the entry's own signature: stored as the stub bytes
    # with stub_signature and stub_key_id NULL (not a second copy of the signature
    # and key id: ~100 bytes a row, measured ~15 % of ingest CPU).
    stub: bytes | None = None
    stub_signature: bytes | None = None
    stub_key_id: str | None = None
    # A range of unsigned hints: this row stands for first..seq (``hash`` is the
    # last one's); None: one position.
    first: int | None = None

    def _own_stub(self) -> bool:
        """Whether the stub is signed by the entry's signature (format v2)."""
        return (self.stub is not None and self.signature is not None
                and self.stub_signature in (None, self.signature))

    def signed_stub(self) -> records_pb2.SignedStub | None:
        if self.stub is None:
            return None
        if self.stub_signature is None:
            if self.signature is None:
                return None
            return records_pb2.SignedStub(stub=self.stub, signature=self.signature,
                                          key_id=self.key_id or "")
        return records_pb2.SignedStub(stub=self.stub, signature=self.stub_signature,
                                      key_id=self.stub_key_id or "")

    def body(self) -> records_pb2.RecordBody:
        """The stored payload, parsed (it was verified when it was stored)."""
        body = records_pb2.RecordBody()
        body.ParseFromString(self.payload or b"")
        return body

    def envelope(self) -> records_pb2.Envelope | None:
        """The entry as its origin signed it. A v2 entry's signature IS its stub's
        (one signature over the stub bytes): its stub is stored without a signature
        of its own (or, from a recall stored first, with that same signature); a v1
        entry's separately signed stub has a signature of its own (another domain,
        other bytes: never equal)."""
        if self.payload is None:
            return None
        if self._own_stub():
            return records_pb2.Envelope(payload=self.payload, signature=self.signature,
                                        key_id=self.key_id, stub=self.stub)
        return records_pb2.Envelope(payload=self.payload, signature=self.signature,
                                    key_id=self.key_id)


# Every column of a StoredEntry, in order (``e.`` prefixed for joins).
COLUMNS = ("origin, seq, hash, payload, signature, key_id, record_id, version, stub, "
           "stub_signature, stub_key_id, first_seq")
E_COLUMNS = ", ".join("e." + c.strip() for c in COLUMNS.split(","))
NCOL = len(COLUMNS.split(","))


def head(conn: sqlite3.Connection, origin: str) -> tuple[int, bytes]:
    row = conn.execute(
        "SELECT seq, hash FROM entries WHERE origin = ? ORDER BY seq DESC LIMIT 1", (origin,)
    ).fetchone()
    return (row[0], row[1]) if row else (0, b"")


_ORIGINS = """
    WITH RECURSIVE o(origin) AS (
        SELECT min(origin) FROM entries
        UNION ALL
        SELECT (SELECT min(origin) FROM entries WHERE origin > o.origin) FROM o
        WHERE o.origin IS NOT NULL)
    SELECT origin FROM o WHERE origin IS NOT NULL"""


def heads(conn: sqlite3.Connection) -> dict[str, int]:
    """Highest seq held per origin: a skip-scan of the primary key, one probe per
    origin, not a scan of the whole log (that made catch-up quadratic)."""
    return {origin: head(conn, origin)[0] for (origin,) in conn.execute(_ORIGINS).fetchall()}


_EVIDENCE = "(signature IS NOT NULL OR stub IS NOT NULL)"


def held(conn: sqlite3.Connection, origin: str, seq: int) -> Held | None:
    """What is held at a position: its hash, whether the origin's signature (or
    verified stub) backs that hash, and whether the content is still there. A
    position inside a range of hints is held with no hash (``b""``)."""
    row = conn.execute(f"SELECT hash, {_EVIDENCE}, payload IS NOT NULL FROM entries "
                       "WHERE origin = ? AND seq = ?", (origin, seq)).fetchone()
    if row:
        return Held(row[0], bool(row[1]), bool(row[2]))
    return Held(b"", False, False) if _range_over(conn, origin, seq) is not None else None


def in_range(conn: sqlite3.Connection, origin: str, seq: int) -> bool:
    """Whether ``seq`` is held inside (or at the end of) a range row of hints."""
    return _range_over(conn, origin, seq) is not None and conn.execute(
        "SELECT 1 FROM entries WHERE origin = ? AND seq = ? AND first_seq IS NULL",
        (origin, seq)).fetchone() is None


def _range_over(conn: sqlite3.Connection, origin: str, seq: int
                ) -> tuple[int, int, bytes, str, int] | None:
    """The range row (first, last, hash, source, received) whose span holds ``seq``."""
    row = conn.execute("SELECT first_seq, seq, hash, source, received_ms FROM entries "
                       "WHERE origin = ? AND seq >= ? ORDER BY seq LIMIT 1",
                       (origin, seq)).fetchone()
    if row is None or row[0] is None or row[0] > seq:
        return None
    return row


def append_hint(conn: sqlite3.Connection, origin: str, first: int, last: int, digest: bytes,
                source: str, now_ms: int, alone: bool = False) -> None:
    """Unsigned hints for ``first..last`` at the head of an origin's log (``digest``
    is the last one's). A run of unsigned hints is one row whatever its length and
    whoever sent its parts: the row at the head is extended when it is itself an
    unsigned hint (not the origin's own, which another peer does not blur), so a
    peer without the origin's key makes at most one hint row per run between two
    positions the origin vouched for (see README, "Placeholders are hints").

    ``alone``: the position carries sealed copies (node/storage/sealed.py): it is
    a row of its own, and no later hint extends it (its hash is what the copies
    were signed for, and they go out with that row)."""
    tip = conn.execute(f"SELECT seq, source, payload IS NULL AND NOT {_EVIDENCE} AND NOT "
                       "EXISTS (SELECT 1 FROM sealed_copies s WHERE s.origin = entries.origin "
                       "AND s.seq = entries.seq) "
                       "FROM entries WHERE origin = ? ORDER BY seq DESC LIMIT 1",
                       (origin,)).fetchone()
    if (not alone and tip is not None and tip[0] == first - 1 and tip[2]
            and (tip[1] != origin or source == origin)):
        conn.execute("UPDATE entries SET seq = ?, hash = ?, first_seq = coalesce(first_seq, "
                     "seq), source = ?, received_ms = ? WHERE origin = ? AND seq = ?",
                     (last, digest, source, now_ms, origin, tip[0]))
        return
    conn.execute("INSERT INTO entries (origin, seq, hash, source, received_ms, first_seq) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 (origin, last, digest, source, now_ms, first if first < last else None))


def isolate_hint(conn: sqlite3.Connection, origin: str, seq: int, digest: bytes,
                 left: bytes | None) -> None:
    """Before the origin's signed item takes ``seq``: cut the range of hints holding
    it so that ``seq`` is a one-position hint row (hash ``digest`` where the range
    named none), the positions before it a range ending in ``left`` (the signed
    entry's prev; b"" when unknown), those after it a range keeping its hash. No-op
    where ``seq`` is not in a range."""
    span = _range_over(conn, origin, seq)
    if span is None:
        row = conn.execute(f"SELECT hash FROM entries WHERE origin = ? AND seq = ? AND "
                           f"payload IS NULL AND NOT {_EVIDENCE}", (origin, seq)).fetchone()
        if row is not None and not row[0]:  # a one-position hint with no hash yet
            conn.execute("UPDATE entries SET hash = ? WHERE origin = ? AND seq = ?",
                         (digest, origin, seq))
        return
    first, last, last_hash, source, received = span
    conn.execute("DELETE FROM entries WHERE origin = ? AND seq = ?", (origin, last))
    rows = [(seq, (last_hash or digest) if seq == last else digest, None)]
    if first < seq:
        rows.append((seq - 1, left or b"", first if first < seq - 1 else None))
    if seq < last:
        rows.append((last, last_hash, seq + 1 if seq + 1 < last else None))
    conn.executemany("INSERT INTO entries (origin, seq, hash, source, received_ms, first_seq) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     [(origin, s, h, source, received, f) for s, h, f in rows])


def replace_hint(conn: sqlite3.Connection, origin: str, seq: int, digest: bytes,
                 source: str, now_ms: int) -> None:
    """A newer unsigned hint for the last position of a held hint row: in place
    (the row's span is kept; no row is added)."""
    conn.execute(f"UPDATE entries SET hash = ?, source = ?, received_ms = ? WHERE origin = ? "
                 f"AND seq = ? AND payload IS NULL AND NOT {_EVIDENCE}",
                 (digest, source, now_ms, origin, seq))


def hint_rows(conn: sqlite3.Connection, origin: str) -> tuple[int, int]:
    """(rows, positions) of unsigned hints held for an origin."""
    row = conn.execute(f"SELECT count(*), coalesce(sum(seq - coalesce(first_seq, seq) + 1), 0) "
                       f"FROM entries WHERE origin = ? AND payload IS NULL AND NOT {_EVIDENCE}",
                       (origin,)).fetchone()
    return row[0], row[1]


def last_signed_before(conn: sqlite3.Connection, origin: str, seq: int) -> int:
    """The highest position below ``seq`` backed by origin-signed evidence (0: none)."""
    row = conn.execute(f"SELECT max(seq) FROM entries WHERE origin = ? AND seq < ? AND "
                       f"{_EVIDENCE}", (origin, seq)).fetchone()
    return row[0] or 0


def drop_hints(conn: sqlite3.Connection, origin: str, after: int,
               upto: int = 2**62) -> int:
    """Forget the unsigned placeholders of an origin in (``after``, ``upto``]:
    hints a hop gave that the origin's own entry contradicted."""
    return conn.execute(f"DELETE FROM entries WHERE origin = ? AND seq > ? AND seq <= ? "
                        f"AND payload IS NULL AND NOT {_EVIDENCE}",
                        (origin, after, upto)).rowcount


def insert_evidence(conn: sqlite3.Connection, env: records_pb2.Envelope,
                    body: records_pb2.RecordBody, source: str, now_ms: int,
                    stub: records_pb2.SignedStub | None = None) -> None:
    """A verified entry whose content this node must not keep (not entitled to
    it, or superseded): the position, its record and version, and the origin's
    signature as evidence (a later different entry there is a fork), no payload.
    Replaces an unsigned placeholder held at that position."""
    conn.execute("DELETE FROM entries WHERE origin = ? AND seq = ? AND payload IS NULL "
                 f"AND NOT {_EVIDENCE}", (body.origin, body.seq))
    conn.execute(
        "INSERT INTO entries (origin, seq, hash, payload, signature, key_id, record_id, "
        "version, kind, source, received_ms, stub, stub_signature, stub_key_id) "
        "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (origin, seq) DO UPDATE SET signature = coalesce(signature, "
        "excluded.signature), key_id = coalesce(key_id, excluded.key_id), "
        "record_id = excluded.record_id, version = excluded.version, kind = excluded.kind, "
        "stub = coalesce(stub, excluded.stub), stub_signature = coalesce(stub_signature, "
        "excluded.stub_signature), stub_key_id = coalesce(stub_key_id, excluded.stub_key_id)",
        (body.origin, body.seq, entry_hash(env.payload), env.signature, env.key_id,
         body.record_id, body.version, kind_name(body), source, now_ms,
         *_entry_stub_cols(env, stub)))


def entry(conn: sqlite3.Connection, origin: str, seq: int) -> StoredEntry | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM entries WHERE origin = ? AND seq = ?",
        (origin, seq)).fetchone()
    return StoredEntry(*row) if row else None


Stubs = list[records_pb2.SignedStub | None] | None


def _stub_cols(stub: records_pb2.SignedStub | None) -> tuple[bytes | None, bytes | None,
                                                             str | None]:
    return (stub.stub, stub.signature, stub.key_id) if stub is not None else (None, None, None)


def _entry_stub_cols(env: records_pb2.Envelope, stub: records_pb2.SignedStub | None
                     ) -> tuple[bytes | None, bytes | None, str | None]:
    """A v2 envelope's stub is its own (same signature): stored, without a second
    copy of the signature, so that the envelope can be rebuilt whole
    (StoredEntry.envelope); else the given stub."""
    if env.stub:
        return env.stub, None, None
    return _stub_cols(stub)


def insert_entries(conn: sqlite3.Connection, items: list[tuple[records_pb2.Envelope,
                   records_pb2.RecordBody]], source: str, now_ms: int,
                   stubs: Stubs = None) -> None:
    """``stubs``: the origin's signed stub per item (verified by the caller), or None."""
    stubs = stubs or [None] * len(items)
    conn.executemany(
        "INSERT INTO entries (origin, seq, hash, payload, signature, key_id, record_id, "
        "version, kind, source, received_ms, stub, stub_signature, stub_key_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(b.origin, b.seq, entry_hash(e.payload), e.payload, e.signature, e.key_id,
          b.record_id, b.version, kind_name(b), source, now_ms, *_entry_stub_cols(e, st))
         for (e, b), st in zip(items, stubs, strict=True)],
    )


# The entity index (migration 20): an FTS5 table, one row per record (rowid =
# records.id) whose one column holds a token per match key of the record's current
# version. An FTS5 index is a log-structured merge tree: a transaction's keys are
# written as one new segment, and segments are merged by size as more are written.
# A B-tree keyed by (key, record) took every key at a random leaf (keys are names,
# plates, phones), so each commit wrote about one 4 KiB page per key, and that cost
# grew with the store (issue 10
# item 3, bench_store.py: its insert alone took 9 µs of CPU a record at 20,000 records
# and 19 at 200,000; the commit, which wrote those pages among others, 22 and 47).
# A token is the key's UTF-8 bytes in hex: one token whatever characters the key
# holds, never split or case-folded by the tokenizer, and exact (no hash, so a match
# is the key itself: no re-check, no collision). detail=none: no positions are kept
# (a key is matched whole); columnsize=0: no per-row token counts (no ranking).
ENTITY_INSERT = "INSERT INTO entity_index (rowid, keys) VALUES (?, ?)"


def key_token(key: str) -> str:
    """An entity match key as its token in the entity index (migration 20 computes
    the same in SQL: lower(hex(key)))."""
    return key.encode().hex()


def key_tokens(keys: Iterable[str]) -> str:
    """The entity index's column for a record with these keys (each once)."""
    return " ".join(dict.fromkeys(key_token(k) for k in keys))


def entity_match(keys: Iterable[str], any_key: bool) -> str:
    """An FTS5 query on the entity index: records with every key (any one, with
    ``any_key``); "" if none can match (an empty key is never indexed)."""
    keys = list(keys)
    tokens = [f'"{key_token(k)}"' for k in keys if k]
    if not tokens or (not any_key and len(tokens) < len(keys)):
        return ""
    return (" OR " if any_key else " AND ").join(tokens)


def indexed_keys(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """Every (record row id, entity key) in the entity index (tests, checks)."""
    return [(rec, bytes.fromhex(token).decode())
            for rec, tokens in conn.execute("SELECT rowid, keys FROM entity_index")
            for token in tokens.split()]


def insert_new_records(conn: sqlite3.Connection, items: list[tuple[records_pb2.Envelope,
                       records_pb2.RecordBody]], source: str, now_ms: int,
                       stubs: Stubs = None) -> None:
    """Bulk path for first versions of records not held yet (publish, catch-up):
    the entries, the record rows, text and entity indexes, each one executemany."""
    if not items:
        return
    insert_entries(conn, items, source, now_ms, stubs)
    index_new_records(conn, [b for _, b in items])


def index_new_records(conn: sqlite3.Connection, bodies: list[records_pb2.RecordBody]) -> None:
    """The record rows, text and entity indexes of first versions of new records
    (their entries are inserted apart: a publish writes these while it signs)."""
    if not bodies:
        return
    first = (conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]) + 1
    rows, fts, keys = [], [], []
    # Each field read once (a protobuf attribute costs ~0.1 µs, a generator more):
    # this loop runs on the storing thread, the critical path of ingest and publish.
    for rec, b in enumerate(bodies, start=first):
        labels = " ".join(b.labels)
        values = []
        tokens: dict[str, None] = {}
        for e in b.entities:
            values.append(e.value)
            for k in e.keys:
                tokens[k.encode().hex()] = None  # key_token, inlined
        if tokens:
            keys.append((rec, " ".join(tokens)))
        rows.append((rec, b.origin, b.record_id, b.version, b.seq, kind_name(b), b.created_ms,
                     b.expires_ms, b.part23.review_due_ms, f" {labels} ",
                     f" {' '.join(b.behaviors)} "))
        fts.append((rec, b.title, b.narrative, labels, " ".join(values)))
    conn.executemany(
        "INSERT INTO records (id, origin, record_id, version, seq, kind, created_ms, "
        "expires_ms, review_due_ms, labels, behaviors) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO records_fts (rowid, title, narrative, labels, entities) "
                     "VALUES (?, ?, ?, ?, ?)", fts)
    conn.executemany(ENTITY_INSERT, keys)


def record_states(conn: sqlite3.Connection, origin: str,
                  record_ids: Iterable[str]) -> dict[str, RecordState]:
    """The states of many records of one origin, in a few queries."""
    ids = list(dict.fromkeys(record_ids))
    out: dict[str, RecordState] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for rec, rid, version, state in conn.execute(
                f"SELECT id, record_id, version, state FROM records WHERE origin = ? "
                f"AND record_id IN ({marks})", (origin, *chunk)):
            out[rid] = (rec, version, state)
    return out


def insert_placeholder(conn: sqlite3.Connection, origin: str, seq: int, digest: bytes,
                       source: str, now_ms: int, record_id: str | None = None,
                       version: int | None = None,
                       stub: records_pb2.SignedStub | None = None) -> None:
    """``record_id``/``version``: known from a verified stub (``stub``), so a recall
    can be passed on unchanged."""
    conn.execute(
        "INSERT INTO entries (origin, seq, hash, source, received_ms, record_id, version, "
        "stub, stub_signature, stub_key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (origin, seq, digest, source, now_ms, record_id, version, *_stub_cols(stub)))


def set_stub(conn: sqlite3.Connection, origin: str, seq: int,
             stub: records_pb2.SignedStub) -> None:
    """Keep a verified stub for a position held without one (the first one kept);
    the stub names the record and version a bare placeholder did not."""
    parsed = records_pb2.EntryStub()
    parsed.ParseFromString(stub.stub)
    conn.execute("UPDATE entries SET stub = ?, stub_signature = ?, stub_key_id = ?, "
                 "record_id = coalesce(record_id, ?), version = coalesce(version, ?) "
                 "WHERE origin = ? AND seq = ? AND stub IS NULL",
                 (*_stub_cols(stub), parsed.record_id, parsed.version, origin, seq))


def own_without_stub(conn: sqlite3.Connection, origin: str, after_seq: int,
                     limit: int) -> list[StoredEntry]:
    """Signed entries of ``origin`` held without a stub (appended before stubs
    existed), in seq order after ``after_seq``."""
    return [StoredEntry(*r) for r in conn.execute(
        f"SELECT {COLUMNS} FROM entries WHERE origin = ? AND seq > ? AND stub IS NULL "
        "AND payload IS NOT NULL ORDER BY seq LIMIT ?", (origin, after_seq, limit))]


def replace_placeholder(conn: sqlite3.Connection, env: records_pb2.Envelope,
                        body: records_pb2.RecordBody, digest: bytes, source: str,
                        now_ms: int, stub: records_pb2.SignedStub | None = None) -> None:
    """A signed entry takes the place of a contradicting unsigned placeholder."""
    conn.execute("DELETE FROM entries WHERE origin = ? AND seq = ? AND payload IS NULL",
                 (body.origin, body.seq))
    insert_entries(conn, [(env, body)], source, now_ms, [stub])


def upgrade_placeholder(conn: sqlite3.Connection, env: records_pb2.Envelope,
                        body: records_pb2.RecordBody, source: str, now_ms: int) -> None:
    conn.execute(
        "UPDATE entries SET payload = ?, signature = ?, key_id = ?, record_id = ?, version = ?, "
        "kind = ?, source = ?, received_ms = ? WHERE origin = ? AND seq = ? AND payload IS NULL",
        (env.payload, env.signature, env.key_id, body.record_id, body.version, kind_name(body),
         source, now_ms, body.origin, body.seq))
    if env.stub:  # the entry's own stub: the envelope must be rebuilt whole
        conn.execute("UPDATE entries SET stub = ?, stub_signature = ?, stub_key_id = ? "
                     "WHERE origin = ? AND seq = ?",
                     (*_entry_stub_cols(env, None), body.origin, body.seq))


def record_state(conn: sqlite3.Connection, origin: str,
                 record_id: str) -> RecordState | None:
    """(row id, version, state) of the record this node holds, if any."""
    row = conn.execute("SELECT id, version, state FROM records WHERE origin = ? AND record_id = ?",
                       (origin, record_id)).fetchone()
    return (row[0], row[1], row[2]) if row else None


def _upsert(conn: sqlite3.Connection, b: records_pb2.RecordBody, state: str,
            existing: tuple[int, int, str] | None) -> int:
    labels = " " + " ".join(b.labels) + " "
    behaviors = " " + " ".join(b.behaviors) + " "
    if existing is None:
        return conn.execute(
            "INSERT INTO records (origin, record_id, version, seq, kind, created_ms, "
            "expires_ms, review_due_ms, labels, state, behaviors) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (b.origin, b.record_id, b.version, b.seq, kind_name(b), b.created_ms,
             b.expires_ms, b.part23.review_due_ms, labels, state, behaviors)).lastrowid
    if b.kind in CONTENT:
        conn.execute(
            "UPDATE records SET version = ?, seq = ?, kind = ?, created_ms = ?, expires_ms = ?, "
            "review_due_ms = ?, labels = ?, state = ?, behaviors = ? WHERE id = ?",
            (b.version, b.seq, kind_name(b), b.created_ms, b.expires_ms,
             b.part23.review_due_ms, labels, state, behaviors, existing[0]))
    else:  # a lifecycle entry keeps the record's kind and dates, moves its state
        conn.execute("UPDATE records SET version = ?, seq = ?, state = ? WHERE id = ?",
                     (b.version, b.seq, state, existing[0]))
    return existing[0]


RecordState = tuple[int, int, str]  # (row id, version, state)
UNKNOWN: RecordState = (-1, -1, "")


def apply_entries(conn: sqlite3.Connection, bodies: list[records_pb2.RecordBody],
                  priors: list[RecordState | None] | None = None,
                  defer_since_ms: int = 0) -> list[str]:
    """Make each entry the current state of its record, if it is newer.

    Content entries become the current version (indexed for search); RETRACTION
    withdraws the record from search; PURGE deletes its content everywhere in
    this database and leaves the signed tombstone. Returns per entry: 'applied',
    'stale' (an older or equal version: never applied), or 'tombstoned' (the
    record was purged: it never comes back). ``priors``: each record's state as
    the caller already read it (saves a lookup per entry), or UNKNOWN.
    ``defer_since_ms``: 0 for this node's own entries, whose purges compact the
    text index at once; the time, for entries from a peer: a purge's terms then
    leave the index at the next compaction (note_erasure).
    """
    results = []
    fts_rows: dict[int, tuple] = {}
    key_rows: dict[int, str] = {}
    seen: dict[tuple[str, str], RecordState] = {}
    purged = False
    # A superseded version's or a retracted record's words left search but stay in
    # the text index's segments until a compaction: noted like a purge from a peer
    # (at most one compaction per index_compact_s), from the oldest such entry.
    # (This node's own entries: their own creation time, which this node set.)
    erased_since = 0
    for i, b in enumerate(bodies):
        key = (b.origin, b.record_id)
        prior = priors[i] if priors is not None else UNKNOWN
        if key in seen:
            existing: RecordState | None = seen[key]
        elif prior != UNKNOWN:
            existing = prior
        else:
            existing = record_state(conn, b.origin, b.record_id)
        if b.kind in KEY_KINDS:
            results.append("key")  # the key history is kept by node/storage/keys.py
            continue
        if existing is not None and existing[2] == "purged":
            results.append("tombstoned")
            continue
        if existing is not None and (existing[1] > b.version or (
                existing[1] == b.version and existing[2] != "recalled")):
            # (A record recalled at version V by the origin's stub takes the real
            # entry of V when it arrives: the stub said V exists, not what it holds.)
            results.append("stale")
            continue
        state = "active"
        if b.kind in CONTENT:
            rec = _upsert(conn, b, "active", existing)
            if existing is not None:
                # Newest version wins everywhere: superseded versions keep only
                # their hash, so no node can serve or show them again.
                erase_content(conn, b.origin, b.record_id, rec, keep_seq=b.seq)
                erased_since = erased_since or defer_since_ms or b.created_ms
            ents = " ".join(e.value for e in b.entities)
            fts_rows[rec] = (rec, b.title, b.narrative, " ".join(b.labels), ents)
            key_rows[rec] = key_tokens(k for e in b.entities for k in e.keys)
        else:
            state = "retracted" if b.kind == records_pb2.RETRACTION else "purged"
            rec = _upsert(conn, b, state, existing)
            fts_rows.pop(rec, None)
            key_rows.pop(rec, None)
            erase_content(conn, b.origin, b.record_id, rec, keep_seq=b.seq)
            purged = purged or b.kind == records_pb2.PURGE
            erased_since = erased_since or defer_since_ms or b.created_ms
        seen[key] = (rec, b.version, state)
        results.append("applied")
    conn.executemany(
        "INSERT INTO records_fts (rowid, title, narrative, labels, entities) "
        "VALUES (?, ?, ?, ?, ?)", list(fts_rows.values()))
    conn.executemany(ENTITY_INSERT, [(rec, tokens) for rec, tokens in key_rows.items() if tokens])
    if purged:
        erased(conn, defer_since_ms)
    elif erased_since:
        note_erasure(conn, erased_since)
    return results


def erase_content(conn: sqlite3.Connection, origin: str, record_id: str, rec: int,
                  keep_seq: int = 0) -> int:
    """Delete a record's content: only the payload goes. The hash keeps the chain
    verifiable and the signature stays as evidence, so a second signed entry at
    that position is still a fork, never a silent replacement. The record leaves
    the text and entity indexes. With secure_delete on, the freed bytes are
    zeroed in the file. The sealed copies of those positions go too: they are the
    same content, encrypted (a node that cannot link a position to the record, a
    hub holding a bare placeholder, keeps its copies: README, sealed copies)."""
    unindex(conn, rec)
    conn.execute("DELETE FROM sealed_copies WHERE origin = ? AND seq IN (SELECT seq FROM "
                 "entries WHERE origin = ? AND record_id = ? AND seq != ?)",
                 (origin, origin, record_id, keep_seq))
    return conn.execute(
        "UPDATE entries SET payload = NULL WHERE origin = ? AND record_id = ? "
        "AND seq != ? AND payload IS NOT NULL", (origin, record_id, keep_seq)).rowcount


def compact_index(conn: sqlite3.Connection) -> None:
    """Merge FTS segments so deleted documents' terms leave the index pages.
    SQLite 3.40 has no FTS5 'secure-delete': a deleted document's terms stay in
    the segments that held them until those are rewritten, and only 'optimize'
    rewrites them all ('merge' leaves a large segment that has no peers of its
    level as it is). O(size of the text index): about 0.2 s at 100k records
    (bench/bench_store.py). The entity index (an FTS5 table too) is compacted with
    it: a purged record's keys leave the file when its words do (its entity values
    are in the text index's ``entities`` column anyway)."""
    conn.execute("INSERT INTO records_fts (records_fts) VALUES ('optimize')")
    conn.execute("INSERT INTO entity_index (entity_index) VALUES ('optimize')")
    conn.execute("DELETE FROM index_erasure")


def compact_if_pending(conn: sqlite3.Connection) -> bool:
    """compact_index if an erasure is pending (note_erasure); True if it ran."""
    if erasure_pending(conn) is None:
        return False
    compact_index(conn)
    return True


def note_erasure(conn: sqlite3.Connection, since_ms: int, purges: int = 1) -> None:
    """Records left the text index (search no longer finds them) but their terms
    may still be in its segments: compact_index is due (at most one per [limits]
    index_compact_s, node.services.lifecycle). ``since_ms`` is kept from the
    oldest purge not compacted yet, so the bound counts from it."""
    conn.execute("INSERT INTO index_erasure (id, since_ms, purges) VALUES (1, ?, ?) "
                 "ON CONFLICT (id) DO UPDATE SET purges = purges + excluded.purges",
                 (since_ms, purges))


def erased(conn: sqlite3.Connection, defer_since_ms: int) -> None:
    """Records were purged: compact the text index now (``defer_since_ms`` 0: this
    node's own purge, its administrator's request), or note it pending (a purge
    from a peer: one compaction per interval, however many purges)."""
    if defer_since_ms:
        note_erasure(conn, defer_since_ms)
    else:
        compact_index(conn)


def erasure_pending(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(since_ms, purges) of the purges whose terms may still be in the text
    index, or None."""
    row = conn.execute("SELECT since_ms, purges FROM index_erasure WHERE id = 1").fetchone()
    return (row[0], row[1]) if row else None


def mark_unheld(conn: sqlite3.Connection, origin: str, record_id: str, version: int, seq: int,
                kind: str, expires_ms: int, state: str) -> None:
    """A record this node holds no content of, known (from the origin's signature)
    to be at ``version`` in ``state``: kept so newest-wins refuses an older version
    replayed later (a purge or recall must not be undone by a stale peer)."""
    conn.execute(
        "INSERT OR IGNORE INTO records (origin, record_id, version, seq, kind, created_ms, "
        "expires_ms, review_due_ms, labels, state) VALUES (?, ?, ?, ?, ?, 0, ?, 0, '  ', ?)",
        (origin, record_id, version, seq, kind, expires_ms, state))


def purge_locally(conn: sqlite3.Connection, origin: str, record_id: str, state: str,
                  version: int = 0, defer_since_ms: int = 0) -> bool:
    """Drop a copy without a signed purge (recall, or expiry at a holder).
    ``version``: the version that caused it; older ones can never be applied again.
    ``defer_since_ms``: as for apply_entries."""
    existing = record_state(conn, origin, record_id)
    if existing is None or existing[2] == "purged":
        return False
    conn.execute("UPDATE records SET state = ?, version = max(version, ?) WHERE id = ?",
                 (state, version, existing[0]))
    erase_content(conn, origin, record_id, existing[0])
    erased(conn, defer_since_ms)
    return True


def expired(conn: sqlite3.Connection, now_ms: int) -> list[tuple[str, str]]:
    return conn.execute("SELECT origin, record_id FROM records WHERE expires_ms <= ? "
                        "AND state NOT IN ('purged', 'expired', 'recalled')",
                        (now_ms,)).fetchall()


def review_due(conn: sqlite3.Connection, origin: str, before_ms: int) -> list[StoredEntry]:
    return [StoredEntry(*r) for r in conn.execute(
        "SELECT e.origin, e.seq, e.hash, e.payload, e.signature, e.key_id "
        "FROM records r JOIN entries e ON e.origin = r.origin AND e.seq = r.seq "
        "WHERE r.origin = ? AND r.state = 'active' AND r.review_due_ms <= ? "
        "ORDER BY r.review_due_ms", (origin, before_ms))]


def latest_content(conn: sqlite3.Connection, origin: str, record_id: str
                   ) -> tuple[StoredEntry, str] | None:
    """The newest signed entry held of a record (what a change starts from)."""
    row = conn.execute(
        "SELECT e.origin, e.seq, e.hash, e.payload, e.signature, e.key_id, r.state "
        "FROM records r JOIN entries e ON e.origin = r.origin AND e.record_id = r.record_id "
        "WHERE r.origin = ? AND r.record_id = ? AND e.payload IS NOT NULL "
        "ORDER BY e.seq DESC LIMIT 1",
        (origin, record_id)).fetchone()
    return (StoredEntry(*row[:6]), row[6]) if row else None


def unindex(conn: sqlite3.Connection, rec: int) -> None:
    conn.execute("DELETE FROM records_fts WHERE rowid = ?", (rec,))
    conn.execute("DELETE FROM entity_index WHERE rowid = ?", (rec,))


def entry_source(conn: sqlite3.Connection, origin: str, seq: int) -> str | None:
    """The peer a held position came from."""
    row = conn.execute("SELECT source FROM entries WHERE origin = ? AND seq = ?",
                       (origin, seq)).fetchone()
    return row[0] if row else None


def current(conn: sqlite3.Connection, record_id: str) -> list[tuple[StoredEntry, str]]:
    """The newest held entry of a record (any origin) and its state."""
    rows = conn.execute(
        f"SELECT {E_COLUMNS}, r.state "
        "FROM records r JOIN entries e ON e.origin = r.origin AND e.seq = r.seq "
        "WHERE r.record_id = ? AND e.payload IS NOT NULL", (record_id,)).fetchall()
    return [(StoredEntry(*r[:NCOL]), r[NCOL]) for r in rows]


BROAD = 2000  # text matches beyond which walking newest-first beats sorting them


def _broad(conn: sqlite3.Connection, params: SearchParams, match: str) -> bool:
    """Whether the filters may match much of the store. Then records are walked
    newest-first by index, stopping at the limit, instead of sorting every match;
    entity keys and rare words are selective: the planner starts from their index."""
    if params.entity_keys:
        return False
    if not match:
        return True
    hits = conn.execute("SELECT count(*) FROM (SELECT 1 FROM records_fts WHERE records_fts "
                        "MATCH ? LIMIT ?)", (match, BROAD)).fetchone()[0]
    return hits >= BROAD


def matches(conn: sqlite3.Connection, params: SearchParams,
            now_ms: int) -> Iterator[tuple[StoredEntry, bool]]:
    """Active, unexpired records matching ``params``, newest first, read lazily
    (the caller stops when it has enough), each with ``content_match``.

    With entity keys, every record matching the keys, kinds and origins comes,
    and ``content_match`` tells whether it also matched the text, labels and
    since (node.core.query.discovered decides what that allows); without entity
    keys, only records matching everything (``content_match`` is True)."""
    match = params.fts_match()
    content: list[str] = []
    content_args: list[object] = []
    if match:
        # Correlated: FTS5 seeks by rowid, so no set of every match is built.
        content.append("EXISTS (SELECT 1 FROM records_fts WHERE records_fts MATCH ? "
                       "AND rowid = r.id)")
        content_args.append(match)
    if params.since_ms:
        content.append("r.created_ms >= ?")
        content_args.append(params.since_ms)
    for label in params.labels:
        content.append("instr(r.labels, ?) > 0")
        content_args.append(f" {label} ")
    for code in params.behaviors:
        content.append("instr(r.behaviors, ?) > 0")
        content_args.append(f" {code} ")
    where = ["r.state = 'active'", "r.expires_ms > ?"]
    args: list[object] = [now_ms]
    if params.entity_keys:
        keys_match = entity_match(params.entity_keys, params.any_entity)
        if keys_match:
            where.append("r.id IN (SELECT rowid FROM entity_index WHERE entity_index MATCH ?)")
            args.append(keys_match)
        else:
            where.append("0")
    if params.kinds:
        where.append(f"r.kind IN ({','.join('?' * len(params.kinds))})")
        args.extend(params.kinds)
    if params.origins:
        where.append(f"r.origin IN ({','.join('?' * len(params.origins))})")
        args.extend(params.origins)
    if params.entity_keys:
        # Content filters only mark rows: records the asker may not read are
        # found (or not) by their entity keys, kinds and origins alone.
        walk = ""
        flag = f"({' AND '.join(content)})" if content else "1"
        args = content_args + args
    else:
        walk = " INDEXED BY records_created" if _broad(conn, params, match) else ""
        flag = "1"
        if match:  # the set form here: the planner may start from a rare word
            content[0] = "r.id IN (SELECT rowid FROM records_fts WHERE records_fts MATCH ?)"
        where.extend(content)
        args.extend(content_args)
    sql = (f"SELECT {E_COLUMNS}, "
           f"{flag} FROM records r{walk} JOIN entries e ON e.origin = r.origin "
           f"AND e.seq = r.seq WHERE {' AND '.join(where)} "
           "ORDER BY r.created_ms DESC, r.id DESC")
    for row in conn.execute(sql, args):
        yield StoredEntry(*row[:NCOL]), bool(row[NCOL])


def search(
    conn: sqlite3.Connection, params: SearchParams, now_ms: int,
    accept: Callable[[StoredEntry, bool], bool],
) -> list[StoredEntry]:
    """The matches (above) that ``accept(entry, content_match)`` lets through,
    up to the limit (the policy decision runs per row, there)."""
    out: list[StoredEntry] = []
    for item, content_match in matches(conn, params, now_ms):
        if accept(item, content_match):
            out.append(item)
            if len(out) >= params.limit:
                break
    return out


def items_after(conn: sqlite3.Connection, origin: str, after: int,
                limit: int) -> list[StoredEntry]:
    """Held rows of ``origin`` past ``after``, a range row cut to start there."""
    out = [StoredEntry(*r) for r in conn.execute(
        f"SELECT {COLUMNS} FROM entries "
        "WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?", (origin, after, limit))]
    if out and out[0].first is not None and out[0].first <= after:
        out[0] = dataclasses.replace(out[0], first=after + 1 if after + 1 < out[0].seq else None)
    return out


def counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for origin, state, n in conn.execute(
            "SELECT origin, state, count(*) FROM records GROUP BY origin, state"):
        out.setdefault(origin, {})[state] = n
    return out



def first_hint(conn: sqlite3.Connection, origin: str) -> int | None:
    """The lowest position of ``origin`` held as a bare hash (no signature, no
    stub), if any."""
    row = conn.execute("SELECT min(coalesce(first_seq, seq)) FROM entries WHERE origin = ? "
                       f"AND NOT {_EVIDENCE}", (origin,)).fetchone()
    return row[0]
