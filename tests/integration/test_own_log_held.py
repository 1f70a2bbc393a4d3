"""Own-log recovery must not adopt a thief's entries silently (stop 15 open item 1).

A thief runs a node from a copy of the victim's home (its keys, its address) while
the victim is down, and publishes at the victim's next positions; a peer takes them
(the victim's key is still trusted there). When the victim comes back, that peer
shows it entries beyond its head that its own key signed. Unmarked by `fcnode
restore`, the victim adopts none of them: it is held, says so, signs nothing, until
its administrator decides. Real daemons over mutual TLS."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from node.devnet import Node
from tests.integration.test_metrics import scrape, value, with_metrics
from tests.integration.test_restore import publish_once_recovered

GREEN = ("--tlp", "GREEN", "--audience", "members")


def _own(node: Node, origin: str = "victim") -> dict[int, bytes]:
    with contextlib.closing(node.db()) as conn:
        return dict(conn.execute("SELECT seq, hash FROM entries WHERE origin = ? ORDER BY seq",
                                 (origin,)).fetchall())


def _quarantined(node: Node) -> list[tuple]:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT origin FROM quarantine").fetchall()


def _thief_of(victim: Node, root: Path) -> Node:
    """A node run from a copy of the victim's home: same keys, users, peers, address."""
    root.mkdir()
    shutil.copytree(victim.home, root / victim.center,
                    ignore=shutil.ignore_patterns("*.sock", "*.lock", "lock"))
    thief = Node(root, victim.center, victim.name, port=victim.port, init=False)
    thief.tokens = dict(victim.tokens)
    thief.token = victim.token
    return thief


def test_a_thiefs_entries_put_the_victim_on_hold_until_its_admin_adopts(
        make_node, tmp_path: Path) -> None:
    victim, receiver = make_node("victim"), make_node("receiver")
    victim.pin(receiver)
    receiver.pin(victim)
    genuine = victim.publish("--kind", "BULLETIN", "--title", "genuine one", *GREEN)
    receiver.wait_held(genuine["record_id"])

    # The victim is down; the thief starts from a copy of its home at its address and
    # publishes at seq 2 and 3. The receiver takes them: signed by the victim's key.
    victim.stop()
    thief = _thief_of(victim, tmp_path / "thief")
    url = with_metrics(victim)
    thief.start()
    try:
        stolen = [thief.publish("--kind", "BULLETIN", "--title", f"signed by the thief {i}",
                                *GREEN)["record_id"] for i in range(2)]
        for rid in stolen:
            receiver.wait_held(rid)
    finally:
        thief.stop()
    thief_log = _own(receiver)
    assert sorted(thief_log) == [1, 2, 3]

    # The victim comes back: its peer shows it seq 2..3 signed by its own key.
    victim.start()
    victim.wait_for(lambda: victim.json("status")["own_log"].get("held")
                    or victim.head("victim") > 1, 30, what="the own log held (or adopted)")
    assert list(_own(victim)) == [1], "the thief's entries were adopted as the victim's own"
    own = victim.json("status")["own_log"]
    assert own["held"]["peer"] == "receiver" and own["held"]["seq"] == 2
    assert own["held"]["own_head"] == 1 and own["held"]["entry_hash"] == thief_log[2].hex()
    assert not own["recovering"] and own["blocked"].startswith("own log held")
    assert "HELD own log: peer receiver sent seq 2" in victim.ok("status")
    # Nothing adopted, nothing signed: publish refused with the reason and the choice.
    assert list(_own(victim)) == [1]
    refused = victim.cli("publish", "--kind", "BULLETIN", "--title", "too early", *GREEN)
    assert refused.returncode == 1, refused.stderr
    assert "own log held: peer receiver sent seq 2" in refused.stderr
    assert "fcnode recovery adopt" in refused.stderr and "--stolen" in refused.stderr
    # Ending the wait is not a way out of the hold; no plain key rotation either.
    assert "own log held" in victim.cli("recovery", "finish").stderr
    rotate = victim.cli("keys", "rotate", "--signing")
    assert rotate.returncode == 1 and "own log held" in rotate.stderr, rotate.stderr
    assert list(_own(victim)) == [1]
    # For the administrator: an error naming the peer and the position (no content),
    # an audit entry, a metric.
    lines = [ln for ln in victim.log_tail(200_000).splitlines() if "own log HELD" in ln]
    assert lines and "receiver" in lines[0] and '"first_seq": 2' in lines[0], lines
    assert not any("signed by the thief" in ln for ln in victim.log_tail(200_000).splitlines())
    held = [e for e in victim.json_lines("audit") if e["action"] == "recovery.held"]
    assert len(held) == 1 and held[0]["actor"] == "fcnode"
    assert held[0]["detail"]["peer"] == "receiver" and held[0]["detail"]["seq"] == 2
    _, samples = scrape(url)
    assert (value(samples, "fcnode_own_entries_held_total", peer="receiver") or 0) >= 2

    # Held survives a restart (a persistent marker, not a moment's state).
    victim.stop()
    victim.start()
    refused = victim.cli("publish", "--kind", "BULLETIN", "--title", "still too early", *GREEN)
    assert refused.returncode == 1 and "own log held" in refused.stderr, refused.stderr

    # Only an administrator chooses: a user may not adopt.
    victim.add_user("ortiz", "sworn_le")
    assert victim.cli("recovery", "adopt", user="ortiz").returncode == 1
    assert victim.json("status")["own_log"].get("held")
    # The administrator decides it was an old copy: recovery proceeds as after a restore.
    adopted = victim.json("recovery", "adopt")
    assert adopted["adopted"]["peer"] == "receiver" and adopted["adopted"]["seq"] == 2
    assert not victim.json("status")["own_log"].get("held")
    published = [publish_once_recovered(victim, "after adopting")]
    assert published[0]["seq"] == 4
    assert {s: h for s, h in _own(victim).items() if s <= 3} == thief_log
    receiver.wait_held(published[0]["record_id"])
    assert not _quarantined(receiver) and not _quarantined(victim)
    actions = [e for e in victim.json_lines("audit") if e["action"].startswith("recovery.")]
    assert [e["action"] for e in actions] == ["recovery.held", "recovery.adopt",
                                              "recovery.finish"]
    assert actions[1]["actor"] == "admin"
    assert victim.json("audit", "verify")["ok"]
    # A second adopt has nothing to adopt.
    again = victim.cli("recovery", "adopt")
    assert again.returncode != 0 and "not held" in again.stderr


def test_a_publish_right_after_the_hold_committed_is_refused(make_node) -> None:
    """Red team (session 16): ingest commits the held marker in its transaction, and
    the link sets the in-memory held state after it returns; a publish transaction
    queued behind the ingest one on the database thread ran in between and checked
    only the in-memory state: it signed the next position over the thief's entry (the
    fork the held state exists to prevent). The refusal reads the marker in the
    write transaction. Here the marker is committed behind the running daemon's back:
    the same moment, held open."""
    import sqlite3

    victim = make_node("victim")
    victim.publish("--kind", "BULLETIN", "--title", "genuine one", *GREEN)
    with contextlib.closing(sqlite3.connect(victim.home / "node.db", timeout=10)) as conn:
        conn.execute("INSERT INTO own_held (id, peer, seq, own_head, hash, since_ms) "
                     "VALUES (1, 'receiver', 2, 1, x'00', 1)")
        conn.commit()
    refused = victim.cli("publish", "--kind", "BULLETIN", "--title", "over the thief's", *GREEN)
    assert refused.returncode == 1, "signed the next position while held"
    assert "own log held" in refused.stderr, refused.stderr
    assert list(_own(victim)) == [1]
