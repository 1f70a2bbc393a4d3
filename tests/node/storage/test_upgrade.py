"""Issue 9 item 8: node homes made by the previous release open and migrate under this code.

tests/fixtures/previous_release/ holds three node homes (ncric, nysic, ffc) written by the
daemons of release ded5e7e (schema 1) through a real network: replicated and relayed copies,
an update with a recall, a correction, a retraction, a purge, a federated query and a
deconfliction, users added and removed. tests/fixtures/make_previous_release.py makes it
(run with a checkout of that release); its manifest.json says what each database held.

Each test copies one home to tmp, opens its database the way the daemon does
(``Database.open``: checks, then runs every migration not yet applied) and checks that
nothing was lost or changed: the schema is the newest; every entry, placeholder, record
and tombstone is there in the same state; every signed entry still verifies against its
origin's public key from the identity cards (the home's own card and its peers.toml, read
by this code) and links to the entry before it; the audit chain links, and its signed
head verifies against the node's public key from its card; search by entity and text
finds what it found before; a purged record's content is in no row and not in the file;
the users removed before migration 2 stay retired; and the database takes new writes.

Why not start the daemon on the migrated home: the fixture has no private keys (they must
never be committed), and a daemon given new ones would not be the old center. Its own log
is signed with the old key, so its next entry, signed with another, is refused by every
peer that pinned the old card; its audit head is signed with the old key, so the first
`audit verify` fails; its card changes, so its peers must re-pin it. That tests a key
loss, not an upgrade, so this test stays at the storage level the daemon opens at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from node.config.home import Home, load_config
from node.config.identity import parse_card
from node.config.peers import load_peers
from node.core.audit import head_message, verify_chain
from node.core.query import SearchParams, make_params
from node.core.signing import AUDIT_DOMAIN, entry_hash, key_id, open_record, sign, verify
from node.services.service import verify_audit
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage import notices as notices_tx
from node.storage import stats
from node.storage import users as users_tx
from node.storage.db import Database, immediate, open_sync
from node.storage.schema import MIGRATIONS
from node.wire import records_pb2

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "previous_release"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
CENTERS = sorted(MANIFEST["nodes"])
LABEL = {v["record_id"]: k for k, v in MANIFEST["records"].items()}
# Searches run "as of" a day after the fixture was made: its records expire five years
# after they were published, and the test must not start failing then.
AS_OF_MS = MANIFEST["made_ms"] + 86_400_000
CONTENT_KINDS = ("SAR", "BOLO", "BULLETIN", "TIP", "DECONFLICTION")
PURGED_WORDS = (b"zebrafinch", b"lighthouse", b"Unreliable source")

# Searches as a user types them -> the records (generator labels) they should find, at
# every node that holds that record as active. Entity searches go through this code's
# normalisation, so a change to it that no longer matches old index keys fails here.
ENTITY_PROBES = {
    "plate=7abc 123": {"bolo_green", "sar_restricted"},
    "phone=555.123.4567": {"sar_amber_nysic", "bolo_region"},
    "person=DOE, JOHN;01/02/1980": {"bolo_green"},
    "organization=harbor freight collective": {"red_named"},
    "email=zebrafinch@example.org": set(),   # purged
}
TEXT_PROBES = {
    "holiday crowd": {"bulletin_clear"},
    "revised": {"bulletin_clear"},          # only in version 2's title
    "grey civic": {"bolo_green"},
    "water treatment": {"sar_amber_nysic"},
    "counterfeit": set(),                    # retracted
    "zebrafinch lighthouse": set(),          # purged
}


@dataclass(frozen=True)
class Upgraded:
    center: str
    home: Path
    conn: sqlite3.Connection

    @property
    def facts(self) -> dict:
        return MANIFEST["nodes"][self.center]

    @property
    def db(self) -> Path:
        return self.home / "node.db"


async def _open_as_the_daemon_does(path: Path) -> None:
    db = Database(path)
    await db.open()
    await db.close()


@pytest.fixture(params=CENTERS)
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Upgraded]:
    center = request.param
    home = tmp_path / center
    shutil.copytree(FIXTURE / center, home)
    asyncio.run(_open_as_the_daemon_does(home / "node.db"))
    conn = open_sync(home / "node.db")
    try:
        yield Upgraded(center, home, conn)
    finally:
        conn.close()


def public_keys(up: Upgraded) -> dict[str, dict[str, Ed25519PublicKey]]:
    """Each origin's keys, from the home's own card and its pinned peers, read by this code."""
    own = parse_card((up.home / "identity.card").read_text())
    assert own.center == up.center
    peers = load_peers(up.home / "peers.toml", up.center, own.signing_key)
    cards = [own, *(p.card for p in peers.values())]
    return {c.center: {key_id(c.signing_key): c.public_key()} for c in cards}


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def states(up: Upgraded) -> dict[str, str]:
    """Each record's state before the upgrade (from the manifest)."""
    return {rid: state for _, rid, _, _, _, state in up.facts["records"]}


def held_active(up: Upgraded, labels: set[str]) -> set[str]:
    st = states(up)
    rids = {MANIFEST["records"][label]["record_id"] for label in labels}
    return {rid for rid in rids if st.get(rid) == "active"}


def search(up: Upgraded, params: SearchParams) -> set[str]:
    found = log_tx.search(up.conn, params, AS_OF_MS, lambda e, content_match: content_match)
    return {e.body().record_id for e in found}


def test_the_fixture_is_an_older_schema_with_no_secrets() -> None:
    """The fixture must stay a real previous release's, and public."""
    assert MANIFEST["release"].startswith("ded5e7e")
    assert MANIFEST["schema_version"] < len(MIGRATIONS), "nothing left to migrate"
    names = {p.name for p in FIXTURE.rglob("*")}
    assert not names & {"signing.key", "tls.key", "tls.crt", "node.db-wal", "node.db-shm"}
    for c in CENTERS:
        with contextlib.closing(sqlite3.connect(f"file:{FIXTURE / c / 'node.db'}?mode=ro",
                                                uri=True)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == MANIFEST["schema_version"]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_schema_is_the_newest_and_the_home_still_reads(upgraded: Upgraded) -> None:
    up = upgraded
    assert up.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert up.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert up.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert load_config(Home(up.home)).center == up.center
    assert set(public_keys(up)) == {"ncric", "nysic", "ffc"}
    # The same schema as a database this code makes from nothing: same tables, columns,
    # indexes and constraints (a table rebuilt by a migration that drops an index or a
    # UNIQUE would still hold every row, and be slow or wrong later).
    with contextlib.closing(open_sync(up.home.parent / "fresh.db", create=True)) as fresh:
        assert schema(up.conn) == schema(fresh)
    # Opening again (the next start) migrates nothing and changes nothing.
    with contextlib.closing(open_sync(up.db)) as again:
        assert again.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_every_row_is_still_there_in_the_same_state(upgraded: Upgraded) -> None:
    up, facts = upgraded, upgraded.facts
    for table, n in facts["counts"].items():
        if table == "entity_keys":  # replaced by entity_index (migration 20): checked below
            continue
        assert up.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n, table
    assert up.conn.execute("SELECT count(*) FROM entries WHERE payload IS NULL"
                           ).fetchone()[0] == facts["placeholders"]
    assert log_tx.heads(up.conn) == facts["heads"]
    rows = [list(r) for r in up.conn.execute(
        "SELECT origin, record_id, version, seq, kind, state FROM records "
        "ORDER BY origin, record_id")]
    assert rows == facts["records"]
    record_ids = dict(up.conn.execute("SELECT id, record_id FROM records"))
    assert sorted([key, record_ids[rec]] for rec, key in log_tx.indexed_keys(up.conn)) \
        == facts["entity_index"]
    assert len(facts["entity_index"]) == facts["counts"]["entity_keys"]
    assert [[u.name, sorted(u.attributes), u.admin] for u in users_tx.all_users(up.conn)] \
        == [[name, sorted(json.loads(attrs)), bool(admin)] for name, attrs, admin in facts["users"]]
    # What status, notices and disseminations read, through this code's queries.
    snap = stats.snapshot(up.conn)
    by_state: dict[str, dict[str, int]] = {}
    for origin, _, _, _, _, state in facts["records"]:
        by_state.setdefault(origin, {}).setdefault(state, 0)
        by_state[origin][state] += 1
    assert snap.records == by_state
    assert not snap.quarantined
    assert len(notices_tx.listing(up.conn, 0, 1000)) == facts["counts"]["notices"]
    assert len(fed_tx.disseminations(up.conn, None, 1000)) == facts["counts"]["disseminations"]


def test_the_lifecycle_survived(upgraded: Upgraded) -> None:
    """Not only the same counts: the update, retraction, purge and recall as they were."""
    up = upgraded
    st = {rid: state for rid, state in up.conn.execute("SELECT record_id, state FROM records")}
    rid = {label: r["record_id"] for label, r in MANIFEST["records"].items()}
    assert st[rid["bulletin_retracted"]] == "retracted"
    assert st[rid["sar_purged"]] == "purged"
    assert st[rid["bulletin_clear"]] == "active"
    assert st[rid["bolo_green"]] == ("recalled" if up.center == "ffc" else "active")
    version = dict(up.conn.execute("SELECT record_id, version FROM records").fetchall())
    assert version[rid["bulletin_clear"]] == version[rid["bolo_green"]] == 2


def test_entries_verify_against_their_origins_keys_and_link(upgraded: Upgraded) -> None:
    up, keys = upgraded, public_keys(upgraded)
    hashes = {(o, s): h for o, s, h in up.conn.execute("SELECT origin, seq, hash FROM entries")}
    verified = 0
    for origin, seq, digest, payload, signature, kid in up.conn.execute(
            "SELECT origin, seq, hash, payload, signature, key_id FROM entries "
            "ORDER BY origin, seq"):
        if seq > 1:
            assert (origin, seq - 1) in hashes, f"{origin}/{seq - 1} is missing"
        if payload is None:
            continue
        body = open_record(records_pb2.Envelope(payload=payload, signature=signature,
                                                key_id=kid), keys[origin])
        assert (body.origin, body.seq) == (origin, seq)
        assert entry_hash(payload) == digest
        assert body.prev == hashes.get((origin, seq - 1), b"")
        verified += 1
    assert verified == up.facts["counts"]["entries"] - up.facts["placeholders"]
    # Every active record's current version is a verified entry of the right version.
    for origin, record_id, version, _, _, state in up.facts["records"]:
        if state != "active":
            continue
        [(entry, _)] = log_tx.current(up.conn, record_id)
        body = open_record(entry.envelope(), keys[origin])  # type: ignore[arg-type]
        assert (body.record_id, body.version) == (record_id, version)


def test_audit_chain_links_and_its_signed_head_verifies(upgraded: Upgraded) -> None:
    """The head is signed with the node's private key; its public half is on the card."""
    up = upgraded
    own = parse_card((up.home / "identity.card").read_text())
    report = verify_audit(up.conn, own.public_key())
    assert report["ok"], report["problems"]
    assert report["entries"] == up.facts["counts"]["audit"]
    assert [report["head"], audit_tx.head(up.conn)[1].hex().upper()] == up.facts["audit_head"]


@pytest.mark.parametrize("pair", sorted(ENTITY_PROBES))
def test_search_by_entity_finds_what_it_found_before(upgraded: Upgraded, pair: str) -> None:
    expected = held_active(upgraded, ENTITY_PROBES[pair])
    assert search(upgraded, make_params(entity_pairs=[pair], limit=1000)) == expected
    # And every key of the old index still finds its active records.
    st = states(upgraded)
    for key, record_id in upgraded.facts["entity_index"]:
        if st[record_id] == "active":
            assert record_id in search(upgraded, SearchParams(entity_keys=(key,), limit=1000))


@pytest.mark.parametrize("text", sorted(TEXT_PROBES))
def test_search_by_text_finds_what_it_found_before(upgraded: Upgraded, text: str) -> None:
    expected = held_active(upgraded, TEXT_PROBES[text])
    assert search(upgraded, make_params(text=text, limit=1000)) == expected


def test_purged_content_is_absent(upgraded: Upgraded) -> None:
    up = upgraded
    record_id = MANIFEST["records"]["sar_purged"]["record_id"]
    kinds = ",".join(f"'{k}'" for k in CONTENT_KINDS)
    rows = up.conn.execute(
        f"SELECT seq, kind, payload IS NOT NULL FROM entries WHERE record_id = ? "
        f"AND kind IN ({kinds})", (record_id,)).fetchall()
    assert rows and not any(has for _, _, has in rows), rows
    # The signed tombstone is kept (a stale peer can never bring the record back).
    tomb = up.conn.execute("SELECT payload, signature, key_id FROM entries WHERE record_id = ? "
                           "AND kind = 'PURGE'", (record_id,)).fetchone()
    body = open_record(records_pb2.Envelope(payload=tomb[0], signature=tomb[1],
                                            key_id=tomb[2]), public_keys(up)["ncric"])
    assert body.kind == records_pb2.PURGE
    assert not up.conn.execute("SELECT rowid FROM records_fts WHERE records_fts MATCH "
                               "'zebrafinch OR lighthouse'").fetchall()
    # Nor anywhere in the file after the migration (closing folds the WAL in).
    up.conn.close()
    data = up.db.read_bytes()
    assert not (up.home / "node.db-wal").exists()
    for word in PURGED_WORDS:
        # Raw, and as the entity index (migration 20) spells a key: its bytes in hex.
        assert word not in data, word
        assert word.hex().encode() not in data, word


def test_users_removed_before_the_upgrade_stay_retired(upgraded: Upgraded) -> None:
    up = upgraded
    for name in MANIFEST["removed_users"].get(up.center, []):
        assert users_tx.was_removed(up.conn, name) is not None, name
        assert users_tx.find(up.conn, name) is None
    for name, _, _ in up.facts["users"]:
        assert users_tx.was_removed(up.conn, name) is None, name


def test_the_migrated_database_takes_writes(upgraded: Upgraded) -> None:
    """A user removal and an audit entry, through this code's transactions."""
    up = upgraded
    analyst = next(name for name, _, admin in up.facts["users"] if not admin)
    key = Ed25519PrivateKey.generate()  # a stand-in: the center's key is not in the fixture
    with immediate(up.conn):
        assert users_tx.delete(up.conn, analyst, AS_OF_MS)
        seq = audit_tx.append(up.conn, lambda m: sign(key, AUDIT_DOMAIN, m), AS_OF_MS,
                              "admin", "user.remove", {"user": analyst})
    assert seq == up.facts["counts"]["audit"] + 1
    assert users_tx.was_removed(up.conn, analyst) == AS_OF_MS
    head_seq, head_hash, signature = audit_tx.head(up.conn)
    assert verify_chain(list(audit_tx.entries(up.conn)), head_seq, head_hash) == []
    verify(key.public_key(), AUDIT_DOMAIN, head_message(head_seq, head_hash), signature)

