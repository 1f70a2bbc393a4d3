"""Versioned schema migrations, run in order at open.

Each migration is applied in its own transaction together with the version
bump, so a crash mid-migration leaves the previous version intact.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE entries (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        payload BLOB,            -- NULL: a placeholder for an entry withheld from us
        signature BLOB,
        key_id TEXT,
        record_id TEXT,
        version INTEGER,
        kind TEXT,
        source TEXT NOT NULL,    -- 'local' or the peer it came from
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;

    -- The newest version of every record this node holds.
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        origin TEXT NOT NULL,
        record_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        review_due_ms INTEGER NOT NULL,
        labels TEXT NOT NULL,    -- ' a b c ': matched with instr
        state TEXT NOT NULL DEFAULT 'active',  -- active | retracted | purged | recalled
        UNIQUE (origin, record_id)
    );
    CREATE INDEX records_created ON records (created_ms);
    CREATE INDEX records_origin_state ON records (origin, state);
    CREATE INDEX records_review ON records (review_due_ms) WHERE state = 'active';

    CREATE VIRTUAL TABLE records_fts USING fts5 (title, narrative, labels, entities);

    -- Columns in primary-key order: SQLite 3.40's quick_check reports a false
    -- "NULL value" on WITHOUT ROWID tables whose key columns are declared out of order.
    CREATE TABLE entity_keys (
        key TEXT NOT NULL,
        rec INTEGER NOT NULL REFERENCES records (id),
        PRIMARY KEY (key, rec)
    ) WITHOUT ROWID;
    CREATE INDEX entity_keys_rec ON entity_keys (rec);

    CREATE TABLE forks (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        held_payload BLOB, held_signature BLOB,
        other_payload BLOB NOT NULL, other_signature BLOB NOT NULL,
        source TEXT NOT NULL,
        detected_ms INTEGER NOT NULL
    );
    CREATE TABLE quarantine (
        origin TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    );

    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        token_hash BLOB NOT NULL,
        attributes TEXT NOT NULL,  -- JSON list
        admin INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );

    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL,     -- JSON
        prev BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    -- Signed checkpoint of the audit chain's head: deleting the newest entries
    -- is detected too.
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        signature BLOB NOT NULL
    );

    CREATE TABLE disseminations (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        center TEXT NOT NULL,      -- who received it
        user TEXT,                 -- for query answers: the requesting user
        origin TEXT NOT NULL,
        record_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        channel TEXT NOT NULL,     -- replication | query | recall
        decision TEXT NOT NULL     -- FULL | POINTER | RECALL
    );
    CREATE INDEX disseminations_record ON disseminations (origin, record_id);
    CREATE INDEX disseminations_center ON disseminations (center, origin, record_id);

    -- Per (peer, origin): the highest seq received from that peer, contiguous.
    CREATE TABLE cursors (
        peer TEXT NOT NULL,
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (peer, origin)
    ) WITHOUT ROWID;

    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        peer TEXT NOT NULL,
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        reason TEXT NOT NULL
    );

    CREATE TABLE notices (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,        -- deconfliction | recall | retraction | purge | correction
        origin TEXT NOT NULL,
        record_id TEXT NOT NULL,
        detail TEXT NOT NULL       -- JSON, never record content the reader may not see
    );

    CREATE TABLE seen_queries (
        query_id TEXT PRIMARY KEY,
        center TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: (issue 8 item 12) a removed user's name is never issued again. RED named
    # readers (user:CENTER/NAME) and record authorship go by name: a new user
    # under an old name would inherit both. Names removed before this migration
    # are recovered from the audit log (unless the name is in use again now).
    """
    CREATE TABLE removed_users (
        name TEXT PRIMARY KEY,
        removed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO removed_users (name, removed_ms)
        SELECT json_extract(detail, '$.user'), max(ts_ms) FROM audit
        WHERE action = 'user.remove' AND json_extract(detail, '$.user') IS NOT NULL
          AND json_extract(detail, '$.user') NOT IN (SELECT name FROM users)
        GROUP BY json_extract(detail, '$.user');
    """,
    # 3: origin-signed entry stubs (content-free; proof of a recall, carried by pointers).
    # NULL for entries of older databases and for placeholders received without one.
    """
    ALTER TABLE entries ADD COLUMN stub BLOB;
    ALTER TABLE entries ADD COLUMN stub_signature BLOB;
    ALTER TABLE entries ADD COLUMN stub_key_id TEXT;
    """,
    # 4: query ids are unique per requesting center: the replay memory is keyed by
    # (center, query id), so a peer that saw another center's id cannot get that
    # center's query refused as a replay. Deconfliction notices are pruned by kind.
    """
    CREATE TABLE seen_queries_by_center (
        center TEXT NOT NULL,
        query_id TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (center, query_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO seen_queries_by_center
        SELECT center, query_id, expires_ms FROM seen_queries;
    DROP TABLE seen_queries;
    ALTER TABLE seen_queries_by_center RENAME TO seen_queries;
    CREATE INDEX seen_queries_expiry ON seen_queries (expires_ms);
    CREATE INDEX notices_kind ON notices (kind, id);
    """,
    # 5: (issue 9 items 1-3) key history learned from origins' own logs: verified
    # KEY_ROTATION entries (the old key signed the entry at seq, the new key signs
    # after it) and TLS certificates announced in CERT_RENEWAL entries. peers.toml
    # stays the administrator's file; these rows only extend what it pins.
    """
    CREATE TABLE key_rotations (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        old_key BLOB NOT NULL,
        new_key BLOB NOT NULL,
        learned_ms INTEGER NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;
    CREATE TABLE tls_certs (
        origin TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        der BLOB NOT NULL,
        not_after_ms INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        learned_ms INTEGER NOT NULL,
        PRIMARY KEY (origin, fingerprint)
    ) WITHOUT ROWID;
    CREATE TABLE distrusted_entries (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        payload BLOB NOT NULL,
        signature BLOB NOT NULL,
        key_id TEXT NOT NULL,
        source TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (origin, seq, hash)
    ) WITHOUT ROWID;
    """,
    # 6: (issue 9 item 5) own-log recovery: set by `fcnode restore` or when a peer
    # reports this center's own log beyond the head held here; while set, the node
    # takes its own entries back from peers and refuses to append to its log.
    """
    CREATE TABLE own_recovery (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    );
    """,
    # 7: (issue 12) ISE-SAR behaviour codes of a record's current version, matched
    # like labels (' CODE CODE '). Records from before carry none.
    """
    ALTER TABLE records ADD COLUMN behaviors TEXT NOT NULL DEFAULT ' ';
    """,
    # 8: (issue 12) watches. A local user's watches and their hits; standing queries
    # other centers registered here, the durable per-center outbox of their hits (pulled
    # with a cursor) and the one restricted-hit notice per (watch, record); this node's
    # cursor into each peer's outbox. Triggers queue every record whose current version
    # changed, only while a watch or standing query exists; the matcher drains the queue.
    """
    CREATE TABLE watches (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        params TEXT NOT NULL,       -- JSON: text, entity_keys, kinds, labels, behaviors
        network INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX watches_owner ON watches (owner);
    CREATE TABLE watch_hits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: followers hold a cursor
        watch_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        source TEXT NOT NULL,       -- 'local', or the center whose standing query answered
        origin TEXT NOT NULL,
        record_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        access TEXT NOT NULL,       -- FULL | POINTER when it fired
        payload BLOB, signature BLOB, key_id TEXT,           -- network FULL: origin's envelope
        stub BLOB, stub_signature BLOB, stub_key_id TEXT,    -- network: origin's signed stub
        UNIQUE (watch_id, origin, record_id, version)
    );
    CREATE INDEX watch_hits_owner ON watch_hits (owner, id);
    CREATE TABLE watch_queue (rec INTEGER PRIMARY KEY);
    CREATE TABLE standing_queries (
        center TEXT NOT NULL,
        watch_id TEXT NOT NULL,
        user TEXT NOT NULL,
        attributes TEXT NOT NULL,   -- JSON list, as the watcher's center asserts them
        params TEXT NOT NULL,       -- JSON: entity_keys, kinds, behaviors
        registered_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (center, watch_id)
    ) WITHOUT ROWID;
    CREATE TABLE standing_sync (
        center TEXT PRIMARY KEY,
        issued_ms INTEGER NOT NULL  -- the newest signed set taken: older ones are replays
    );
    CREATE TABLE watch_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the watcher holds a cursor
        center TEXT NOT NULL,
        watch_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        record_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        access TEXT NOT NULL,       -- FULL | POINTER at match time
        UNIQUE (center, watch_id, origin, record_id, version)
    );
    CREATE INDEX watch_outbox_center ON watch_outbox (center, id);
    CREATE TABLE standing_notified (
        center TEXT NOT NULL,
        watch_id TEXT NOT NULL,
        record_id TEXT NOT NULL,
        PRIMARY KEY (center, watch_id, record_id)
    ) WITHOUT ROWID;
    CREATE TABLE watch_dropped (
        who TEXT PRIMARY KEY,       -- 'user:NAME' (hits) or 'center:ID' (outbox)
        dropped INTEGER NOT NULL
    );
    CREATE TABLE watch_cursors (
        peer TEXT PRIMARY KEY,
        after INTEGER NOT NULL      -- the last outbox id taken from that peer
    );
    -- This center's id (written at start): standing queries are judged against its
    -- own records only, so other origins' records are queued only for local watches.
    CREATE TABLE watch_self (center TEXT PRIMARY KEY);
    CREATE TRIGGER watch_queue_new AFTER INSERT ON records
    WHEN NEW.state = 'active' AND (EXISTS (SELECT 1 FROM watches)
         OR (NEW.origin IN (SELECT center FROM watch_self)
             AND EXISTS (SELECT 1 FROM standing_queries)))
    BEGIN INSERT OR IGNORE INTO watch_queue (rec) VALUES (NEW.id); END;
    CREATE TRIGGER watch_queue_version AFTER UPDATE OF version ON records
    WHEN NEW.state = 'active' AND (EXISTS (SELECT 1 FROM watches)
         OR (NEW.origin IN (SELECT center FROM watch_self)
             AND EXISTS (SELECT 1 FROM standing_queries)))
    BEGIN INSERT OR IGNORE INTO watch_queue (rec) VALUES (NEW.id); END;
    -- A network hit keeps the origin's envelope only while it is the record's current
    -- version here: a newer version, retraction, purge or recall erases it (newest
    -- version wins; a purge leaves no content anywhere).
    CREATE TRIGGER watch_hits_erase AFTER UPDATE OF version, state ON records
    BEGIN
        UPDATE watch_hits SET payload = NULL, signature = NULL, key_id = NULL
        WHERE origin = NEW.origin AND record_id = NEW.record_id AND payload IS NOT NULL
          AND (NEW.state != 'active' OR version < NEW.version);
    END;
    """,
    # 9: (issue 10 item 5) range placeholders: one row stands for the unsigned hints
    # first_seq..seq of an origin; ``hash`` is the last one's. NULL: one position.
    """
    ALTER TABLE entries ADD COLUMN first_seq INTEGER;
    """,
    # 10: (issue 12 item 3) standing queries beyond direct peers. A watcher center's
    # set is kept with the peer it came through (`via`: hits go back that way), the
    # routing it arrived with and its signed bytes (passed on unchanged, also after a
    # restart). The outbox names the peer each row goes to (`peer`): this center's
    # hits for its direct watchers, its hits for watchers further away (sealed when
    # sent), and sealed hits of centers beyond it relayed towards their watcher
    # (`sealed`: ciphertext this node cannot read). Disseminations name the peer a
    # record left through when that is not its recipient. Hits a peer delivered that
    # failed verification are counted in watch_dropped as 'refused:PEER'.
    """
    ALTER TABLE standing_sync ADD COLUMN via TEXT;
    ALTER TABLE standing_sync ADD COLUMN hops_left INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE standing_sync ADD COLUMN path TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE standing_sync ADD COLUMN signed BLOB;
    UPDATE standing_sync SET via = center;
    ALTER TABLE watch_outbox ADD COLUMN peer TEXT;
    ALTER TABLE watch_outbox ADD COLUMN sealed BLOB;
    UPDATE watch_outbox SET peer = center;
    CREATE INDEX watch_outbox_peer ON watch_outbox (peer, id);
    ALTER TABLE disseminations ADD COLUMN via TEXT;
    """,
    # 11: (issue 11 item 3) sealed copies of entries, made by their origin for the
    # centers an audience names and passed on by every node (node/core/sealing.py). Kept
    # per position, bounded ([limits] max_sealed_copies), only after the origin's
    # signature over them verified. No recipient column: no one but the origin knows.
    """
    CREATE TABLE sealed_copies (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,         -- the entry hash the origin signed the copy for
        digest BLOB NOT NULL,       -- SHA-256 of `sealed`: one row per distinct copy
        sealed BLOB NOT NULL,
        signature BLOB NOT NULL,
        key_id TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (origin, seq, digest)
    );
    """,
    # 12: (issue 12 item 3, red team) the decision an outbox row was last logged
    # with as a dissemination: a hit sent again (a peer pulling from an old cursor,
    # over and over) is logged once per decision, not once per pull, so no peer can
    # grow the dissemination log without bound.
    """
    ALTER TABLE watch_outbox ADD COLUMN logged TEXT;
    """,
    # 13: the peer a relayed sealed hit came from (NULL: this node's own hit). A hit
    # the hub cannot check names its answering center only in unsigned words: over
    # max_relay_bytes, such hits share the byte budget by the peer that delivered
    # them, not by the center they claim (a hostile peer could claim many).
    """
    ALTER TABLE watch_outbox ADD COLUMN source TEXT;
    """,
    # 14: more than one way back for a watcher's hits. Every other peer that brought
    # the same signed set (up to a few) is a way back too, so a first hop that drops
    # hits cannot cut the watcher off. The outbox holds a row per hit per way (the
    # UNIQUE key now names the peer); the ids carry on from the old table (peers hold
    # cursors into them).
    """
    CREATE TABLE standing_ways (
        center TEXT NOT NULL,       -- the watcher
        peer TEXT NOT NULL,         -- another peer its set came through
        PRIMARY KEY (center, peer)
    ) WITHOUT ROWID;
    CREATE TABLE watch_outbox_v14 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        center TEXT NOT NULL,
        watch_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        record_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        access TEXT NOT NULL,
        peer TEXT,
        sealed BLOB,
        logged TEXT,
        source TEXT,
        UNIQUE (center, watch_id, origin, record_id, version, peer)
    );
    INSERT INTO watch_outbox_v14 (id, center, watch_id, ts_ms, origin, seq, record_id, version,
                                  access, peer, sealed, logged, source)
        SELECT id, center, watch_id, ts_ms, origin, seq, record_id, version, access, peer,
               sealed, logged, source FROM watch_outbox;
    DELETE FROM sqlite_sequence WHERE name = 'watch_outbox_v14';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'watch_outbox_v14', seq FROM sqlite_sequence WHERE name = 'watch_outbox';
    DROP TABLE watch_outbox;
    ALTER TABLE watch_outbox_v14 RENAME TO watch_outbox;
    CREATE INDEX watch_outbox_center ON watch_outbox (center, id);
    CREATE INDEX watch_outbox_peer ON watch_outbox (peer, id);
    """,
    # 15: (stop 15 open item 1) own log held: a peer sent an entry beyond this node's
    # head signed by its own key while no restore marked it (an old copy of node.db,
    # or a stolen key): nothing is adopted or signed until an administrator decides
    # (node/core/recovery.py). The first proof only: position and hash, no content.
    """
    CREATE TABLE own_held (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        peer TEXT NOT NULL,
        seq INTEGER NOT NULL,
        own_head INTEGER NOT NULL,
        hash BLOB NOT NULL,
        since_ms INTEGER NOT NULL
    );
    """,
    # 16: (issue 10 items 2-3) the cost of storing a record. ``entries`` becomes a
    # rowid table: in a WITHOUT ROWID table (an index b-tree) a row of more than
    # ~1,000 bytes on 4 KiB pages spills to an overflow page of its own, and an entry
    # is ~950 bytes: 20,000 entries took 93 MB (4.6 KB each) and every insert wrote
    # a page; as a rowid table with its key as a unique index, the whole database
    # of 20,000 records is ~51 MB. Every column is kept, in the same order.
    # ``entries_record``: a record's entries (every new version, retraction and
    # purge erases the older versions' content, and a change starts from the
    # newest) were found by scanning all of its origin's entries. Partial: bare
    # placeholders and hints name no record (in a rowid table each row costs an index
    # entry of its own in every index: one row per placeholder 219 -> 178 MB for
    # 2,000,000, bench_query.py --withholding-only).
    """
    CREATE TABLE entries_rowid (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        payload BLOB,            -- NULL: a placeholder for an entry withheld from us
        signature BLOB,
        key_id TEXT,
        record_id TEXT,
        version INTEGER,
        kind TEXT,
        source TEXT NOT NULL,    -- 'local' or the peer it came from
        received_ms INTEGER NOT NULL,
        stub BLOB,
        stub_signature BLOB,
        stub_key_id TEXT,
        first_seq INTEGER,
        PRIMARY KEY (origin, seq)
    );
    INSERT INTO entries_rowid (origin, seq, hash, payload, signature, key_id, record_id,
            version, kind, source, received_ms, stub, stub_signature, stub_key_id, first_seq)
        SELECT origin, seq, hash, payload, signature, key_id, record_id, version, kind,
            source, received_ms, stub, stub_signature, stub_key_id, first_seq
        FROM entries ORDER BY origin, seq;
    DROP TABLE entries;
    ALTER TABLE entries_rowid RENAME TO entries;
    CREATE INDEX entries_record ON entries (origin, record_id, seq) WHERE record_id IS NOT NULL;
    """,
    # 17: (red team, stop 16) the position and hash an administrator adopted with
    # `fcnode recovery adopt` (the held proof `fcnode status` showed): while that
    # recovery runs, a different entry there, though signed by this node's key, is
    # refused (a thief that signed two entries at that position cannot have the one
    # the administrator did not review adopted). Gone when recovery ends.
    """
    CREATE TABLE own_adopted (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL
    );
    """,
    # 18: (session 17, seal-key rotation) seal keys origins announced in
    # SEAL_KEY_ROTATION entries of their own logs (this center's own too): what
    # copies, answers and hits for them are sealed to (keyhistory.seal_key_in_use).
    """
    CREATE TABLE seal_keys (
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL,
        old_key BLOB NOT NULL,
        new_key BLOB NOT NULL,
        learned_ms INTEGER NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;
    """,
    # 19: purges that arrived from peers (or expiries at this holder) whose records
    # left the text index at once but whose terms may still sit in its segments,
    # until the next FTS5 'optimize' (at most one per [limits] index_compact_s: a
    # rewrite of the whole index per purge was work any origin could cause at
    # every node). One row while any is pending.
    """
    CREATE TABLE index_erasure (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        since_ms INTEGER NOT NULL,   -- the oldest purge not compacted yet
        purges INTEGER NOT NULL
    );
    """,
    # 20: (issue 10 item 3) the entity index becomes an FTS5 table (node/storage/log.py,
    # ENTITY_INSERT): a B-tree keyed by (key, record) wrote a random leaf page per key
    # per commit, so the cost of storing a record grew with the store. One row per
    # record (rowid = records.id), a token per key: the key's UTF-8 bytes in hex.
    """
    CREATE VIRTUAL TABLE entity_index USING fts5 (keys, detail=none, columnsize=0,
                                                  tokenize='ascii');
    INSERT INTO entity_index (rowid, keys)
        SELECT rec, group_concat(lower(hex(key)), ' ') FROM entity_keys GROUP BY rec;
    DROP TABLE entity_keys;
    """,
    # 21: (session 17, red team) rejections kept per peer are bounded (a minute's
    # share, and in all: node/storage/federation.reject); rows a count depends on
    # (contradicted hints) are marked unbounded and never displaced. The indexes
    # serve those bounds (a trim walks only index entries) and the
    # contradicted-hint count of every batch.
    """
    ALTER TABLE rejections ADD COLUMN bounded INTEGER NOT NULL DEFAULT 1;
    UPDATE rejections SET bounded = 0
        WHERE reason = 'placeholder contradicted by the origin''s entry';
    CREATE INDEX rejections_by_peer ON rejections (peer, ts_ms);
    CREATE INDEX rejections_bounded ON rejections (peer, bounded, ts_ms);
    """,
]
