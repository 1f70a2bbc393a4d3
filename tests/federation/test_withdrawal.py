"""Withdrawn content stays withdrawn: only a record's newest version leaves a
node, recalls (the origin's signed stub, forwarded unchanged) reach copies
relayed by a hub, a recalled copy is not revived by a replay, and a peer's fake
placeholder or unsigned recall can neither erase a record nor block the
origin's real entry (only the origin withdraws)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.ingest import check_items, store_batch
from node.core.signing import entry_hash, key_id, seal_record, seal_stub, stub_of
from node.services.egress import replication_batch
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage.db import immediate, open_sync
from node.wire import federation_pb2, records_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
X = "xorigin"


def entry(seq: int, prev: bytes, version: int, audience: list[str],
          title: str) -> federation_pb2.LogItem:
    body = records_pb2.RecordBody(
        origin=X, seq=seq, prev=prev, record_id="rec", version=version, created_ms=seq,
        expires_ms=4_000_000_000_000, kind=records_pb2.BOLO, title=title,
        policy=records_pb2.AccessPolicy(tlp=2, audience=audience, discoverability=2,
                                        relay=True))
    env = seal_record(KEY, body)
    digest = entry_hash(env.payload)
    item = federation_pb2.LogItem(origin=X, seq=seq, hash=digest, envelope=env)
    if version > 1:  # as the origin's egress sends later versions: with its stub
        item.stub.CopyFrom(seal_stub(KEY, stub_of(body, digest)))
    return item


def withheld(item: federation_pb2.LogItem) -> federation_pb2.LogItem:
    """The placeholder the origin sends a center it recalls: hash and signed stub."""
    body = records_pb2.RecordBody.FromString(item.envelope.payload)
    return federation_pb2.LogItem(origin=X, seq=item.seq, hash=item.hash,
                                  stub=seal_stub(KEY, stub_of(body, item.hash)))


def log_with_narrowing() -> list[federation_pb2.LogItem]:
    v1 = entry(1, b"", 1, ["members"], "secret words")
    v2 = entry(2, v1.hash, 2, ["nysic"], "secret words, corrected")
    return [v1, v2]


@pytest.fixture
def db() -> Iterator[callable]:
    with tempfile.TemporaryDirectory() as tmp:
        opened: list[sqlite3.Connection] = []

        def make(name: str) -> sqlite3.Connection:
            conn = open_sync(Path(tmp) / f"{name}.db", create=True)
            opened.append(conn)
            return conn

        yield make
        for c in opened:
            c.close()


def deliver(conn: sqlite3.Connection, peer: str, items: list[federation_pb2.LogItem],
            own: str = "node"):
    checked = check_items(items, lambda o: KEYS if o == X else {})
    with immediate(conn):
        return store_batch(conn, peer, checked, 1, own)


def serve(conn: sqlite3.Connection, peer: str, evaluator: str) -> list[federation_pb2.LogItem]:
    """What this node would send ``peer`` of X's log (as the Replicate handler does)."""
    entries = log_tx.items_after(conn, X, 0, 100)
    states = log_tx.record_states(conn, X, {e.record_id for e in entries if e.record_id})
    with immediate(conn):
        items, sent = replication_batch(
            entries, peer, evaluator, lambda o, r: fed_tx.last_sent(conn, peer, o, r),
            lambda o, r: states[r][1] if r in states else None)
        fed_tx.log_disseminations(conn, sent, 1)
    return items


def payloads(conn: sqlite3.Connection) -> bytes:
    return b"".join(r[0] for r in conn.execute(
        "SELECT payload FROM entries WHERE payload IS NOT NULL"))


def test_a_late_peer_gets_no_superseded_version(db) -> None:
    hub = db("hub")  # holds both versions (it is in both audiences)
    deliver(hub, X, log_with_narrowing())
    items = serve(hub, "late", "hub")
    assert [i.HasField("envelope") for i in items] == [False, False]
    assert not any(i.HasField("stub") for i in items)  # never sent: nothing to recall


def test_recall_reaches_a_copy_relayed_by_a_hub(db) -> None:
    v1, v2 = log_with_narrowing()
    hub, spoke = db("hub"), db("spoke")
    deliver(hub, X, [v1])
    deliver(spoke, "hub", serve(hub, "spoke", "hub"))
    assert b"secret" in payloads(spoke)
    # The origin narrows to nysic: the hub is recalled, and must recall the spoke.
    deliver(hub, X, [withheld(v2)])
    assert b"secret" not in payloads(hub)
    onward = serve(hub, "spoke", "hub")
    assert [i.HasField("stub") for i in onward] == [False, True]  # the newest carries it
    assert onward[1].stub == withheld(v2).stub or onward[1].stub.stub == withheld(v2).stub.stub
    deliver(spoke, "hub", onward)
    assert b"secret" not in payloads(spoke)
    assert spoke.execute("SELECT state FROM records").fetchone()[0] == "recalled"


def test_a_recalled_copy_is_not_revived_by_a_replay(db) -> None:
    v1, v2 = log_with_narrowing()
    node = db("node")
    deliver(node, X, [v1])
    recall = withheld(v2)
    deliver(node, X, [recall])
    deliver(node, "behind", [v1, recall])  # a peer that is behind replays version 1
    assert b"secret" not in payloads(node)
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "recalled")


def test_a_fake_placeholder_does_not_block_the_real_entry(db) -> None:
    v1, v2 = log_with_narrowing()
    node = db("node")
    deliver(node, X, [v1])
    fake = federation_pb2.LogItem(origin=X, seq=2, hash=b"\x00" * 32)
    deliver(node, "mallory", [fake], own="nysic")
    result = deliver(node, X, [v2], own="nysic")
    assert dict(result.rejected) == {"placeholder contradicted by the origin's entry": 1}
    assert node.execute("SELECT peer, seq FROM rejections").fetchall() == [("mallory", 2)]
    with contextlib.closing(node.cursor()) as cur:
        held = cur.execute("SELECT hash, payload IS NOT NULL FROM entries WHERE seq = 2"
                           ).fetchone()
    assert held == (v2.hash, 1)


def test_an_unsigned_recall_from_any_peer_erases_nothing(db) -> None:
    """Attack 1 at the unit level: a placeholder at the origin's next seq carrying
    the deprecated unsigned recall fields, even from the peer the record came
    from, neither erases the record nor pins its version; the origin's real
    next entry is still taken."""
    v1, _ = log_with_narrowing()
    v2_open = entry(2, v1.hash, 2, ["members"], "secret words, corrected")
    node = db("node")
    deliver(node, "hub", [v1])
    fake = federation_pb2.LogItem(origin=X, seq=2, hash=b"\x00" * 32, recall_record_id="rec",
                                  recall_version=4294967295)
    deliver(node, "hub", [fake])
    assert node.execute("SELECT version, state FROM records").fetchone() == (1, "active")
    assert b"secret words" in payloads(node)
    deliver(node, X, [v2_open])
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "active")
    assert b"corrected" in payloads(node)


def test_a_stub_recall_is_honoured_from_any_peer_and_never_blocks(db) -> None:
    """The origin's stub proves version 2 exists: the older copy goes whoever
    brought it; when the real version 2 arrives and this node may hold it, it is
    stored and applied (a recall does not pin the version)."""
    v1 = entry(1, b"", 1, ["members"], "secret words")
    v2 = entry(2, v1.hash, 2, ["members"], "new words")
    node = db("node")
    deliver(node, "hub", [v1])
    deliver(node, "stranger", [withheld(v2)])
    assert b"secret" not in payloads(node)
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "recalled")
    deliver(node, X, [v2])
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "active")
    assert b"new words" in payloads(node)


def test_a_forged_stub_recall_is_refused(db) -> None:
    v1, v2 = log_with_narrowing()
    node = db("node")
    deliver(node, "hub", [v1])
    mallory = Ed25519PrivateKey.generate()
    body = records_pb2.RecordBody.FromString(v2.envelope.payload)
    forged = federation_pb2.LogItem(origin=X, seq=2, hash=v2.hash,
                                    stub=seal_stub(mallory, stub_of(body, v2.hash)))
    forged.stub.key_id = key_id(KEY.public_key())
    result = deliver(node, "mallory", [forged])
    assert result.rejected["bad stub"] == 1
    assert node.execute("SELECT version, state FROM records").fetchone() == (1, "active")


def test_content_is_kept_only_where_this_node_is_entitled(db) -> None:
    """Item 4: a hop forwarding an envelope this node's own policy does not allow
    leaves the position (hash, signature as evidence) and no content."""
    v1 = entry(1, b"", 1, ["nysic"], "secret words")
    node = db("node")
    deliver(node, "careless-hub", [v1], own="ffc")
    assert payloads(node) == b""
    row = node.execute("SELECT hash, signature IS NOT NULL, record_id, version FROM entries"
                       ).fetchone()
    assert row == (v1.hash, 1, "rec", 1)
    assert node.execute("SELECT count(*) FROM records").fetchone()[0] == 0
    # Another signed entry at that position is a fork, not a replacement.
    other = entry(1, b"", 1, ["nysic"], "other words")
    result = deliver(node, X, [other], own="ffc")
    assert result.forks and node.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1


def test_an_erased_position_is_still_a_fork_witness(db) -> None:
    """Item 3: after supersede erased version 1's content, a different signed
    entry at seq 1 is detected as a fork and quarantined, never applied."""
    v1 = entry(1, b"", 1, ["members"], "secret words")
    v2 = entry(2, v1.hash, 2, ["members"], "new words")
    node = db("node")
    deliver(node, X, [v1, v2])
    assert node.execute("SELECT payload IS NULL, signature IS NOT NULL FROM entries "
                        "WHERE seq = 1").fetchone() == (1, 1)
    equivocation = entry(1, b"", 1, ["members"], "rewritten history")
    result = deliver(node, "peer", [equivocation])
    assert result.forks
    assert b"rewritten" not in payloads(node)


def members_chain(n: int) -> list[federation_pb2.LogItem]:
    out, prev = [], b""
    for seq in range(1, n + 1):
        body = records_pb2.RecordBody(
            origin=X, seq=seq, prev=prev, record_id=f"r{seq}", version=1, created_ms=seq,
            expires_ms=4_000_000_000_000, kind=records_pb2.BOLO, title=f"entry {seq}",
            policy=records_pb2.AccessPolicy(tlp=2, audience=["members"], discoverability=2,
                                            relay=True))
        env = seal_record(KEY, body)
        prev = entry_hash(env.payload)
        out.append(federation_pb2.LogItem(origin=X, seq=seq, hash=prev, envelope=env))
    return out


def test_a_contradicted_hint_rewinds_the_chain_and_every_cursor(db) -> None:
    """Item 2 at a spoke: it holds a false placeholder (relayed by an honest hub)
    and its cursor moved past it. The origin's next entry contradicts it: the
    hint goes, every peer's cursor for the origin moves back to the last signed
    position, and the real entries are then taken (it used to be 'wrong chain
    link', for good)."""
    one, two, three = members_chain(3)
    node = db("node")
    deliver(node, "hub", [one])
    deliver(node, "hub", [federation_pb2.LogItem(origin=X, seq=2, hash=b"\x01" * 32)])
    deliver(node, "other", [one])
    fed_tx.set_cursor(node, "other", X, 2)
    result = deliver(node, "hub", [three])
    assert result.rewound == {X}
    assert node.execute("SELECT seq FROM entries").fetchall() == [(1,)]
    assert fed_tx.cursors(node, "hub") == {X: 1} and fed_tx.cursors(node, "other") == {X: 1}
    result = deliver(node, "hub", [two, three])
    assert not result.rejected and result.stored == 2
    assert node.execute("SELECT count(*) FROM entries WHERE payload IS NOT NULL"
                        ).fetchone()[0] == 3


def test_a_peer_whose_hints_keep_failing_cannot_make_a_node_loop(db) -> None:
    """Each rewind needs a new false hint; after MAX_REWINDS within the window the
    liar's placeholders for that origin are refused, and the origin's entries
    still go through."""
    from federation.ingest import LIAR, MAX_REWINDS
    one, two, three = members_chain(3)
    node = db("node")
    deliver(node, X, [one])
    rewinds = 0
    for i in range(MAX_REWINDS + 3):
        fake = federation_pb2.LogItem(origin=X, seq=2, hash=bytes([i + 1]) * 32)
        deliver(node, "mallory", [fake])
        rewinds += len(deliver(node, X, [three]).rewound)
    assert rewinds == MAX_REWINDS
    refused = node.execute("SELECT count(*) FROM rejections WHERE peer = 'mallory' AND "
                           "reason = ?", (LIAR,)).fetchone()[0]
    assert refused == 3
    result = deliver(node, X, [two, three])
    assert not result.rejected
    assert node.execute("SELECT count(*) FROM entries WHERE payload IS NOT NULL"
                        ).fetchone()[0] == 3


def test_a_version_never_held_is_not_revived_by_a_replay_after_its_recall(db) -> None:
    """The node got version 1's position only as a hint, then the origin's stub of
    version 2 (narrowed away from it): a stale peer replaying version 1 later must
    not make the node hold what the origin has since withdrawn."""
    v1, v2 = log_with_narrowing()
    node = db("node")
    deliver(node, "hub", [federation_pb2.LogItem(origin=X, seq=1, hash=v1.hash), withheld(v2)])
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "recalled")
    deliver(node, "stale", [v1])
    assert b"secret" not in payloads(node)
    assert node.execute("SELECT version, state FROM records").fetchone() == (2, "recalled")


def test_a_batch_stored_in_parts_does_what_one_call_does(tmp_path: Path) -> None:
    """A catch-up is stored in parts (links.YIELD_EVERY) so that a user's write can
    go in between; the parts share what one call would know (an origin stopped
    after a rewind), else a split batch wrote a false 'gap' against an honest hub
    (review, session 15)."""
    from federation.ingest import IngestResult

    chain = members_chain(5)

    def run(split: bool, where: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
        conn = open_sync(where / "n.db", create=True)
        keys = lambda o: KEYS if o == X else {}  # noqa: E731
        with immediate(conn):
            store_batch(conn, "hub", check_items([chain[0]], keys), 1, "node")
            store_batch(conn, "hub", check_items([federation_pb2.LogItem(
                origin=X, seq=2, hash=b"\x01" * 32)], keys), 1, "node")
        checked = check_items(chain[2:5], keys)
        total, stopped = IngestResult(), set()
        with immediate(conn):
            for part in ([checked[:1], checked[1:]] if split else [checked]):
                total.add(store_batch(conn, "hub", part, 1, "node", stopped=stopped))
        rows = conn.execute("SELECT peer, reason FROM rejections ORDER BY rowid").fetchall()
        conn.close()
        return dict(total.rejected), rows

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert run(True, tmp_path / "two") == run(False, tmp_path / "one")
