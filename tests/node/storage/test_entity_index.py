"""The entity index (migration 20, an FTS5 table with a token per match key) finds
exactly what a table of (key, record) rows found: every key of every held record's
current version, alone, all of several, or any of several; nothing of a superseded
version, a retracted or a purged record; and after a purge, the key is gone from
the database file too (secure_delete, the index merged).

Played against a model with hypothesis: publish, update (new keys), retract and
purge, on keys of any characters (spaces, quotes, FTS5 syntax, non-ASCII).
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.core.query import SearchParams
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import records_pb2

ORIGIN = "ncric"
DAY = 86_400_000
NOW = 2 * DAY

# Keys as node.core.entities makes them ("type:normalized"), with values no
# tokenizer would keep whole: the index must match them exactly, never in part.
KEYS = st.builds(lambda t, v: f"{t}:{v}", st.sampled_from(["person", "phone", "plate"]),
                 st.text(st.characters(blacklist_categories=("Cs",)), min_size=6, max_size=12))
OPS = st.lists(st.tuples(st.sampled_from(["publish", "publish", "retract", "purge"]),
                         st.integers(0, 3), st.lists(st.integers(0, 7), max_size=4)),
               min_size=1, max_size=12)


def body(seq: int, slot: int, version: int, kind: int,
         keys: list[str]) -> records_pb2.RecordBody:
    b = records_pb2.RecordBody(
        origin=ORIGIN, seq=seq, record_id=f"rec-{slot}", version=version, kind=kind,
        created_ms=DAY, expires_ms=1000 * DAY, title="t", narrative="n")
    for k in keys:
        b.entities.add(type=k.split(":")[0], value="v", keys=[k])
    return b


def found(conn, keys: tuple[str, ...], any_entity: bool = False) -> set[str]:
    params = SearchParams(entity_keys=keys, any_entity=any_entity, limit=1000)
    return {e.record_id for e, _ in log_tx.matches(conn, params, NOW)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(KEYS, min_size=8, max_size=8, unique=True), ops=OPS)
def test_every_key_of_every_held_record_is_found_none_after_purge(pool, ops) -> None:
    current: dict[str, list[str]] = {}   # record id -> keys of its current version
    active: set[str] = set()
    purged: set[str] = set()
    erased: set[str] = set()     # keys of purged records
    lingering: set[str] = set()  # keys left since the last purge (merged away then)
    versions: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "node.db"
        with contextlib.closing(open_sync(db, create=True)) as conn:
            for seq, (op, slot, picks) in enumerate(ops, start=1):
                rid = f"rec-{slot}"
                if rid in purged:
                    continue
                keys = [pool[i] for i in picks]
                version = versions.get(rid, 0) + 1
                kind = {"publish": records_pb2.BOLO, "retract": records_pb2.RETRACTION,
                        "purge": records_pb2.PURGE}[op]
                if op != "publish" and rid not in versions:
                    continue
                b = body(seq, slot, version, kind, keys if op == "publish" else [])
                env = records_pb2.Envelope(payload=b.SerializeToString(), signature=b"s" * 64,
                                           key_id="k")
                with immediate(conn):
                    if rid not in versions:  # a first version: the bulk path
                        log_tx.insert_new_records(conn, [(env, b)], ORIGIN, 0)
                    else:
                        log_tx.insert_entries(conn, [(env, b)], ORIGIN, 0)
                        assert log_tx.apply_entries(conn, [b]) == ["applied"]
                versions[rid] = version
                lingering.update(current.get(rid, ()))
                if op == "publish":
                    current[rid] = keys
                    active.add(rid)
                else:
                    current.pop(rid, None)
                    active.discard(rid)
                if op == "purge":
                    purged.add(rid)
                    erased.update(lingering)
                    lingering.clear()

            def holders(key: str) -> set[str]:
                return {r for r in active if key in current[r]}

            for key in pool:
                assert found(conn, (key,)) == holders(key), key
            for a, b in itertools.pairwise(pool):
                assert found(conn, (a, b)) == holders(a) & holders(b), (a, b)
                assert found(conn, (a, b), any_entity=True) == holders(a) | holders(b), (a, b)
            assert found(conn, ("",)) == set()
            # The index holds exactly the current keys of held records (retracted ones
            # leave it too), each once.
            ids = dict(conn.execute("SELECT id, record_id FROM records"))
            held = sorted((ids[rec], key) for rec, key in log_tx.indexed_keys(conn))
            assert held == sorted((r, k) for r in active for k in dict.fromkeys(current[r]))
        # Closing folds the WAL into the file: a purged key is in no page of it.
        data = db.read_bytes()
        assert not (Path(tmp) / "node.db-wal").exists()
        kept = {k for r in active for k in current[r]}
        gone = erased - kept - lingering
        for key in gone:
            assert log_tx.key_token(key).encode() not in data, key
            assert key.encode() not in data, key
