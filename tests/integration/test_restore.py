"""Restore without forking (issue 9 item 5): a node restored from last night's
backup takes its own later entries back from its peers before it signs again.
Real daemons over mutual TLS; every assertion reads the nodes' databases."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
import time
from pathlib import Path

import pytest

from node.devnet import Node, mesh, run_cli

GREEN = ("--tlp", "GREEN", "--audience", "members")



def publish_once_recovered(node: Node, title: str) -> dict:
    """Publish as soon as the node signs again: refused until then (exit 1, saying
    that the own log waits), accepted after. The published record."""
    published: list[dict] = []

    def try_publish() -> bool:
        r = node.cli("publish", "--kind", "BULLETIN", "--title", title, *GREEN, "--json")
        if r.returncode == 0:
            published.append(json.loads(r.stdout))
            return True
        assert r.returncode == 1 and "own log" in r.stderr, r.stderr
        return False

    node.wait_for(try_publish, timeout=40, what="a publish to be accepted")
    return published[0]

def _q(node: Node, sql: str, *args: object) -> list[tuple]:
    with contextlib.closing(node.db()) as conn:
        return conn.execute(sql, args).fetchall()


def _own(node: Node, origin: str) -> dict[int, tuple]:
    """seq -> (hash, has payload, has signature or stub, record_id, version)."""
    return {r[0]: r[1:] for r in _q(
        node, "SELECT seq, hash, payload IS NOT NULL, (signature IS NOT NULL OR stub IS NOT "
        "NULL), record_id, version FROM entries WHERE origin = ? ORDER BY seq", origin)}


def _states(node: Node, origin: str) -> dict[str, tuple[int, str]]:
    return {r[0]: (r[1], r[2]) for r in _q(
        node, "SELECT record_id, version, state FROM records WHERE origin = ?", origin)}


def _forks(node: Node) -> list[tuple]:
    return _q(node, "SELECT origin, reason FROM quarantine") + _q(
        node, "SELECT origin, seq, source FROM forks")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish(node: Node, title: str, *extra: str) -> str:
    return node.publish("--kind", "BULLETIN", "--title", title, *GREEN, *extra)["record_id"]


@pytest.mark.parametrize("how", ["restore", "hand-copy"])
def test_restored_node_recovers_its_own_log_and_never_forks(make_node, tmp_path: Path,
                                                             how: str) -> None:
    a, b, c = make_node("ncric"), make_node("nysic"), make_node("ffc")
    mesh(a, b, c)
    kept, updated, retracted, purged_old = (_publish(a, f"before {i}") for i in range(4))
    backup = tmp_path / "ncric.db"
    taken = a.json("backup", str(backup))
    assert taken["own_head"]["seq"] == 4
    # After the backup: publishes, an update, a retraction, purges (one of a record
    # published after the backup), and a record only nysic may read.
    later = _publish(a, "after the backup")
    purged_new = _publish(a, "secret published and purged after the backup")
    only_nysic = a.publish("--kind", "BULLETIN", "--title", "for nysic only", "--tlp", "AMBER",
                           "--audience", "nysic")["record_id"]
    a.ok("update", updated, "--title", "updated after the backup")
    a.ok("retract", retracted, "--reason", "source recanted")
    a.ok("purge", purged_old, "--reason", "found unreliable")
    a.ok("purge", purged_new, "--reason", "found unreliable")
    head = a.head("ncric")
    assert head == 11
    for peer in (b, c):
        peer.wait_for(lambda p=peer: p.head("ncric") == head, what="ncric's log")
    truth = _own(a, "ncric")
    truth_states = _states(a, "ncric")

    a.stop()
    if how == "restore":
        out = a.json("restore", str(backup))
        assert out["own_head"]["seq"] == 4 and out["recovering"]
        assert Path(out["replaced"]).exists()  # the replaced database is kept aside
    else:  # what an administrator might do by hand: a file copy over node.db
        for side in ("node.db-wal", "node.db-shm"):
            (a.home / side).unlink(missing_ok=True)
        shutil.copyfile(backup, a.home / "node.db")
    assert a.head("ncric") == 4
    a.start()
    if how == "hand-copy":
        # Not marked by `fcnode restore`: entries beyond the head signed by this node's
        # key may be a thief's as well as its own. Nothing is adopted until an admin
        # decides (tests/integration/test_own_log_held.py plays the thief).
        a.wait_for(lambda: a.json("status")["own_log"].get("held"), 30, "the own log held")
        refused = a.cli("publish", "--kind", "BULLETIN", "--title", "too early", *GREEN)
        assert refused.returncode == 1 and "own log held" in refused.stderr, refused.stderr
        assert a.head("ncric") == 4
        assert a.json("recovery", "adopt")["adopted"]["own_head"] == 4
    # Publishing waits until the node has its own entries back: refused (exit 1,
    # saying why) until then, accepted after, at the position after the last one.
    published = [publish_once_recovered(a, "first after the restore")]
    after = published[0]["record_id"]
    # The next publish is accepted by every peer; nobody quarantines anyone.
    for peer in (b, c):
        peer.wait_for(lambda p=peer: after in p.held_record_ids() or _forks(p),
                      what="the new record (or a fork)")
    for node in (a, b, c):
        assert _forks(node) == [], node.center
        assert not node.json("status")["quarantined"]
        assert node.head("ncric") == head + 1, node.center
    assert published[0]["seq"] == head + 1

    # Every position is back with the same hash, and the origin's evidence.
    got = _own(a, "ncric")
    assert {s: v[0] for s, v in got.items() if s <= head} == {
        s: v[0] for s, v in truth.items()}
    # A position a peer holds erased without a stub comes back as its hash alone,
    # proven by this node's signature on the next entry (whose link ingest checked).
    hints = [s for s, v in got.items() if not v[2]]
    assert all(got.get(s + 1, (0, 0, False))[2] for s in hints), hints
    # Record states as at the origin before the restore: purged stays purged.
    states = _states(a, "ncric")
    assert {r: v for r, v in states.items() if r != after} == truth_states
    assert truth_states[purged_old][1] == truth_states[purged_new][1] == "purged"
    assert truth_states[retracted][1] == "retracted"
    assert truth_states[updated] == (2, "active")
    held = a.held_record_ids()
    assert purged_old not in held and purged_new not in held
    assert {kept, later, only_nysic, updated} <= held
    assert not _q(a, "SELECT 1 FROM records_fts WHERE records_fts MATCH 'secret'")
    for peer in (b, c):  # and at the peers, as before
        peer_states = _states(peer, "ncric")
        assert peer_states[purged_old][1] == peer_states[purged_new][1] == "purged"
        assert purged_old not in peer.held_record_ids()
    actions = [e["action"] for e in a.json_lines("audit")]
    if how == "restore":  # a restore marks the node: it recovers by itself, never held
        assert "node.restore" in actions and "recovery.held" not in actions
    else:
        assert "recovery.held" in actions and "recovery.adopt" in actions
    assert "recovery.finish" in actions
    assert a.json("audit", "verify")["ok"]


def test_publish_refused_while_recovering_until_finished(make_node, tmp_path: Path) -> None:
    a = make_node("ncric")
    b = make_node("nysic", start=False)
    a.pin(b)  # a dialled peer that is down: it cannot confirm anything
    _publish(a, "one")
    backup = tmp_path / "bundle.tar"
    a.json("backup", str(backup), "--include-keys")
    _publish(a, "two")
    a.stop()
    restored = a.json("restore", str(backup))
    assert restored["format"] == "tar" and restored["installed"] == []
    a.start()
    refused = a.cli("publish", "--kind", "BULLETIN", "--title", "too early")
    assert refused.returncode == 1, refused.stderr
    assert "recovering own log" in refused.stderr and "recovery finish" in refused.stderr
    assert a.head("ncric") == 1
    status = a.ok("status")
    assert "RECOVERING own log: 0 entries" in status
    denied_user = a.add_user("ortiz", "sworn_le")
    assert denied_user
    assert a.cli("recovery", "finish", user="ortiz").returncode == 1  # admins only
    done = a.json("recovery", "finish")
    assert done["was_recovering"] and done["own_head_seq"] == 1
    assert a.publish("--kind", "BULLETIN", "--title", "now")["seq"] == 2
    finish = [e for e in a.json_lines("audit") if e["action"] == "recovery.finish"]
    assert finish and finish[-1]["actor"] == "admin"
    # A restart does not bring the wait back (the marker is gone).
    a.stop()
    a.start()
    assert a.publish("--kind", "BULLETIN", "--title", "after restart")["seq"] == 3


def test_bad_restores_change_nothing(make_node, tmp_path: Path) -> None:
    a = make_node("ncric")
    other = make_node("nysic")
    _publish(a, "one")
    good = tmp_path / "good.tar"
    a.json("backup", str(good), "--include-keys")
    foreign = tmp_path / "nysic.db"
    other.json("backup", str(foreign))

    # With the daemon running: refused.
    running = a.cli("restore", str(good))
    assert running.returncode == 1 and "stop it first" in running.stderr
    a.stop()
    before = _sha(a.home / "node.db")
    names = sorted(p.name for p in a.home.iterdir())

    text = tmp_path / "notes.txt"
    text.write_text("not a backup\n")
    corrupt = tmp_path / "corrupt.db"
    data = bytearray(Path(a.home / "node.db").read_bytes())
    data[4096:8192] = b"\xff" * 4096  # a damaged page
    corrupt.write_bytes(bytes(data))
    plain = tmp_path / "plain.db"
    with contextlib.closing(sqlite3.connect(plain)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    altered = tmp_path / "altered.tar"
    with tarfile.open(good) as src, tarfile.open(altered, "w") as dst:
        for m in src.getmembers():
            blob = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "node.toml":
                blob += b"\n# edited\n"
                m.size = len(blob)
            dst.addfile(m, io.BytesIO(blob))
    cases = {text: "not an fcnode backup", corrupt: "corrupt",
             plain: "not an fcnode database", altered: "SHA-256",
             foreign: "does not verify with this center's key",
             tmp_path / "missing.db": "does not exist"}
    for path, why in cases.items():
        r = a.cli("restore", str(path))
        assert r.returncode in (1, 2) and why in r.stderr, (path.name, r.stderr)
        assert _sha(a.home / "node.db") == before, path.name
        assert sorted(p.name for p in a.home.iterdir()) == names, path.name
    a.start()
    assert a.json("status")["own_log"]["blocked"] == ""
    assert json.loads(a.ok("audit", "verify", "--json"))["ok"]

    # A rebuilt machine: the bundle fills an empty home (keys and config too).
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    r = run_cli("restore", str(good), "--home", str(rebuilt), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out["installed"]) == ["encryption.key", "node.toml", "peers.toml",
                                        "signing.key", "tls.crt", "tls.key"]
    assert out["replaced"] is None
    for name in ("signing.key", "tls.key", "encryption.key", "node.toml"):
        assert (rebuilt / name).read_bytes() == (a.home / name).read_bytes()
        assert (rebuilt / name).stat().st_mode & 0o777 == 0o600
    with contextlib.closing(sqlite3.connect(rebuilt / "node.db")) as conn:
        assert conn.execute("SELECT reason FROM own_recovery").fetchone()


def test_a_peer_cannot_start_recovery_or_write_the_own_log(make_node, tmp_path: Path) -> None:
    """A pinned peer claiming a higher head of this node's log, sending a bare hash
    and an entry of this origin signed with its own key: the node neither stops
    publishing nor stores any of it."""
    from node.core.signing import entry_hash, seal_record
    from tests.integration.rogue import Rogue

    a = make_node("ncric")
    rogue = Rogue(tmp_path, "mallory")
    forged = rogue.body(1, b"", "forged entry of ncric")
    forged.origin = "ncric"
    env = seal_record(rogue.signing, forged)
    from node.wire import federation_pb2

    rogue.items = [
        federation_pb2.LogItem(origin="ncric", seq=1, hash=entry_hash(env.payload)),
        federation_pb2.LogItem(origin="ncric", seq=1, hash=entry_hash(env.payload),
                               envelope=env)]
    rogue.heads = {"ncric": 50}
    rogue.serve(a.card())
    try:
        a.ok("peers", "add", rogue.card.line())
        a.wait_for(lambda: _q(a, "SELECT count(*) FROM rejections WHERE peer = 'mallory'")
                   [0][0] >= 1, what="the rogue's batch")
        status = a.json("status")
        assert not status["own_log"]["recovering"] and not status["own_log"]["blocked"]
        assert "held" not in status["own_log"]  # no entry its key signed: never held
        assert a.publish("--kind", "BULLETIN", "--title", "still mine")["seq"] == 1
        own = _own(a, "ncric")
        assert list(own) == [1] and own[1][1] and own[1][0] != entry_hash(env.payload)
        reasons = {r[0] for r in _q(a, "SELECT reason FROM rejections WHERE peer = 'mallory'")}
        assert reasons == {"entries of this node's own log come only from itself"}, reasons
        assert _forks(a) == []
    finally:
        rogue.stop()


def test_a_restore_clears_a_hold_taken_with_the_backup(make_node, tmp_path: Path) -> None:
    """A backup taken while held carries the held marker; restoring it is the
    administrator's word that the database is old: recovering, not held."""
    a = make_node("ncric", start=False)
    a.start()
    a.stop()  # the database exists, migrated
    with contextlib.closing(sqlite3.connect(a.home / "node.db")) as conn:
        conn.execute("INSERT INTO own_held (id, peer, seq, own_head, hash, since_ms) "
                     "VALUES (1, 'nysic', 2, 1, x'00', 1)")
        conn.commit()
    backup = tmp_path / "held.db"
    a.ok("backup", str(backup))
    a.ok("restore", str(backup))
    with contextlib.closing(sqlite3.connect(a.home / "node.db")) as conn:
        assert conn.execute("SELECT count(*) FROM own_held").fetchone()[0] == 0
        assert conn.execute("SELECT reason FROM own_recovery").fetchone()
    a.start()
    own = a.json("status")["own_log"]
    assert own["recovering"] and "held" not in own


def test_a_claimed_head_repeated_costs_one_log_line_and_one_stream_a_minute(
        make_node, tmp_path: Path) -> None:
    """Red team (session 16): a claimed head of this node's own log beyond its own
    is no proof, and asks the peer again once a minute at most; but every batch
    carrying the claim wrote a warning line, so a peer sending heartbeats with a
    claim as fast as it liked wrote the victim's log without bound. Logged with the
    ask again: once a minute per peer (and when the claim grows)."""
    from tests.integration.rogue import Rogue

    a = make_node("ncric")
    rogue = Rogue(tmp_path, "mallory")
    rogue.heads = {"ncric": 50}
    rogue.heartbeats = 2000
    rogue.serve(a.card())
    try:
        a.ok("peers", "add", rogue.card.line())
        a.wait_for(lambda: rogue.requests, what="the rogue's stream")
        time.sleep(5)  # the heartbeats are read within a moment
        lines = [ln for ln in a.log_tail(10_000_000).splitlines()
                 if "own log beyond ours without sending" in ln]
        assert 1 <= len(lines) <= 3, f"{len(lines)} warning lines for one peer's claim"
        assert len(rogue.requests) <= 3  # asked again once, not per heartbeat
        assert not a.json("status")["own_log"]["blocked"]
    finally:
        rogue.stop()
