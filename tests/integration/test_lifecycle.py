"""Issue 5 (and issue 3's "policy changes travel"): updates, retraction, review,
validation and purge across a hub-and-spoke network of real daemons."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from pathlib import Path

from node.devnet import Node, star
from node.wire import federation_pb2
from tests.integration.rogue import Rogue

SECRET_TITLE = "Quixotic harbour smuggling ring"
SECRET_NARRATIVE = "Vessel Marigold offloads at pier nineteen"
SECRET_PHONE = "phone=555 867 5309"


def db_bytes(node: Node) -> bytes:
    """Everything on disk for this node's database: main file and WAL."""
    out = b""
    for name in ("node.db", "node.db-wal"):
        path = node.home / name
        if path.exists():
            out += path.read_bytes()
    return out


def wait_erased(node: Node, *needles: bytes) -> None:
    """Content is gone from the file once the purge's WAL checkpoint has run."""
    node.wait_for(lambda: not any(n in db_bytes(node) for n in needles), 10,
                  f"{needles} erased from {node.center}'s database file")


def wait_state(node: Node, record_id: str, version: int, state: str) -> None:
    node.wait_for(lambda: node.record_state(record_id) == (version, state), 20,
                  f"{record_id[:8]} v{version} {state}")


def hub_and_spokes(make_node, n: int = 2, compact_s: float = 0.0
                   ) -> tuple[Node, list[Node]]:
    """``compact_s``: the nodes' index_compact_s (purges from peers leave the text
    index file within it)."""
    if compact_s:
        hub = _compacting_every(make_node, "hub", compact_s)
        spokes = [_compacting_every(make_node, f"spoke{i}", compact_s) for i in range(n)]
    else:
        hub = make_node("hub")
        spokes = [make_node(f"spoke{i}") for i in range(n)]
    star(hub, spokes)
    return hub, spokes


def test_narrowed_policy_recalls_copies_and_newest_version_wins(make_node) -> None:
    hub, (origin, spoke) = hub_and_spokes(make_node)
    rec = origin.publish("--kind", "BOLO", "--title", SECRET_TITLE, "--narrative",
                         SECRET_NARRATIVE, "--entity", SECRET_PHONE, "--audience", "members")
    rid = rec["record_id"]
    wait_state(spoke, rid, 1, "active")
    # Narrow: only the hub may hold it now; the spoke got it through the hub.
    upd = origin.json("update", rid, "--audience", "hub", "--tlp", "AMBER+STRICT",
                      "--title", SECRET_TITLE + " (corrected)", "--reason", "shared in error")
    assert upd["version"] == 2
    wait_state(hub, rid, 2, "active")
    wait_state(spoke, rid, 2, "recalled")  # it knows version 2 exists, not its content
    wait_erased(spoke, SECRET_NARRATIVE.encode(), b"Quixotic")
    assert spoke.json_lines("search", "harbour") == []
    notices = spoke.json_lines("notices")
    assert [(n["kind"], n["origin"], n["record_id"]) for n in notices] == [
        ("recall", "spoke0", rid)]
    assert "Quixotic" not in str(notices)  # a recall carries no content
    hub_notice = hub.json_lines("notices")[0]
    assert (hub_notice["kind"], hub_notice["version"], hub_notice["reason"]) == (
        "correction", 2, "shared in error")
    got = hub.json("get", rid)
    assert got["title"].endswith("(corrected)") and got["tlp"] == "AMBER+STRICT"
    # The hub holds it but may not relay AMBER+STRICT: the spoke's file never sees v2.
    assert b"(corrected)" not in db_bytes(spoke)
    assert origin.json("status")["records"]["spoke0"] == {"active": 1}


def test_retraction_reaches_every_holder(make_node) -> None:
    hub, (origin, spoke) = hub_and_spokes(make_node)
    rid = origin.publish("--kind", "BULLETIN", "--title", "Bridge closure rumour",
                         "--audience", "members")["record_id"]
    wait_state(spoke, rid, 1, "active")
    assert spoke.json_lines("search", "bridge")
    origin.ok("retract", rid, "--reason", "source recanted")
    for node in (origin, hub, spoke):
        wait_state(node, rid, 2, "retracted")
        assert node.json_lines("search", "bridge") == []
    for node in (hub, spoke):
        notice = node.json_lines("notices")[0]
        assert (notice["kind"], notice["reason"], notice["by"]) == (
            "retraction", "source recanted", "admin")
    again = origin.cli("update", rid, "--title", "back")
    assert again.returncode != 0 and "retracted" in again.stderr
    other = hub.cli("retract", rid, "--reason", "not mine")
    assert other.returncode != 0 and "only its origin" in other.stderr
    # Ending a record needs the admin role or authorship, not read access; changing
    # its content needs read access.
    origin.add_user("ana", "sworn_le")
    origin.add_user("clerk")
    secret = origin.publish("--kind", "BOLO", "--title", "eyes only", "--require", "sworn_le",
                            user="ana")["record_id"]
    denied = origin.cli("purge", secret, "--reason", "tidy", user="clerk")
    assert denied.returncode == 1 and "that you may see" in denied.stderr
    assert origin.cli("update", secret, "--title", "x").returncode == 1  # admin cannot read it
    assert origin.json("purge", secret, "--reason", "retention review")["kind"] == "PURGE"
    assert "record.retract" in {e["action"] for e in origin.json_lines("audit")}


def test_purge_erases_content_everywhere_even_for_a_spoke_offline_during_it(
        make_node, tmp_path: Path) -> None:
    hub, (origin, spoke) = hub_and_spokes(make_node, compact_s=2.0)
    rec = origin.publish("--kind", "BOLO", "--title", SECRET_TITLE, "--narrative",
                         SECRET_NARRATIVE, "--entity", SECRET_PHONE, "--audience", "members")
    rid = rec["record_id"]
    wait_state(spoke, rid, 1, "active")
    # The text index holds the words too (lower case, as FTS5 keeps its terms):
    # they must leave every file, the index's segments included.
    indexed = (b"quixotic", b"marigold")
    assert all(w in db_bytes(spoke) for w in indexed)
    with contextlib.closing(origin.db()) as conn:
        old = conn.execute("SELECT seq, hash, payload, signature, key_id, stub FROM entries "
                           "WHERE record_id = ?", (rid,)).fetchone()  # stub: v2's signed bytes
    spoke.stop()                       # offline during the purge, holding version 1
    origin.ok("purge", rid, "--reason", "information found unreliable")
    wait_state(hub, rid, 2, "purged")
    spoke.start()                      # comes back with the old version
    wait_state(spoke, rid, 2, "purged")
    time.sleep(1.5)                    # the hub also pulls from the spoke: nothing revives
    for node in (origin, hub, spoke):
        assert node.record_state(rid) == (2, "purged")
        wait_erased(node, b"Quixotic", b"Marigold", b"5558675309", b"555 867 5309",
                    *indexed)
        with contextlib.closing(node.db()) as conn:
            tomb = conn.execute("SELECT kind, payload IS NOT NULL FROM entries "
                                "WHERE record_id = ? AND kind = 'PURGE'", (rid,)).fetchone()
            fts = conn.execute("SELECT count(*) FROM records_fts WHERE records_fts MATCH "
                               "'quixotic'").fetchone()[0]
        assert tomb == ("PURGE", 1) and fts == 0
        assert node.json("audit", "verify")["ok"]
        assert node.json_lines("search", "--entity", SECRET_PHONE) == []
    assert "purge" in {n["kind"] for n in spoke.json_lines("notices")}

    # A peer replaying the old signed envelope is refused, and stores nothing.
    rogue = Rogue(tmp_path, "replayer")
    seq, digest, payload, signature, key_id, stub = old
    rogue.items = [federation_pb2.LogItem(origin="spoke0", seq=seq, hash=digest,
                                          envelope={"payload": payload,
                                                    "signature": signature,
                                                    "key_id": key_id, "stub": stub})]
    rogue.serve(hub.card())
    hub.ok("peers", "add", rogue.card.line())
    hub.wait_for(lambda: hub.status()["rejected"].get("record was purged"), 20,
                 "the replay refused")
    assert hub.record_state(rid) == (2, "purged") and b"Quixotic" not in db_bytes(hub)
    rogue.stop()


def test_review_validate_and_automatic_purge_on_expiry(make_node) -> None:
    hub = make_node("hub")
    origin = make_node("origin", start=False)
    origin.edit_config("retention_sweep_s = 60.0", "retention_sweep_s = 0.5")
    origin.start()
    hub.pin(origin)
    origin.pin(hub)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)).isoformat()
    short = origin.publish("--kind", "TIP", "--title", "Ephemeral lead on Zephyr", "--audience",
                           "members", "--justification", "walk-in", "--expires", soon)
    keep = origin.publish("--kind", "BOLO", "--title", "Long lived", "--audience", "members")
    due = origin.json_lines("review", "--due-within", "30d")
    assert [r["record_id"] for r in due] == [short["record_id"]]
    wait_state(hub, short["record_id"], 1, "active")
    later = origin.json("validate", keep["record_id"], "--reason", "still active case")
    assert later["version"] == 2
    view = origin.json("get", keep["record_id"])
    expires = dt.datetime.fromisoformat(view["expires"].replace("Z", "+00:00"))
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(days=4 * 365)
    wait_state(origin, short["record_id"], 2, "purged")
    wait_state(hub, short["record_id"], 2, "purged")
    wait_erased(origin, b"Zephyr", b"zephyr")  # the indexed word too: its own purge
    wait_erased(hub, b"Zephyr")
    actions = [e["action"] for e in origin.json_lines("audit")]
    assert "record.validate" in actions and "record.purge" in actions
    assert origin.json("audit", "verify")["ok"]
    assert hub.record_state(keep["record_id"]) == (2, "active")


def test_authorship_is_stable_and_only_the_author_changes_the_policy(make_node) -> None:
    """Issue 8 item 10: editing a record's title does not make the editor its author,
    so a reader cannot edit their way into widening its access policy."""
    node = make_node("kilo")
    node.add_user("alice", "sworn_le")
    node.add_user("bob", "sworn_le")
    rid = node.publish("--kind", "BOLO", "--title", "Grey van", "--require", "sworn_le",
                       user="alice")["record_id"]
    node.ok("update", rid, "--title", "Grey van, dented", user="bob")
    # The attack: having edited the title, bob widens the policy to everyone.
    widen = node.cli("update", rid, "--tlp", "CLEAR", "--audience", "members", user="bob")
    assert widen.returncode == 1 and "author or an admin" in widen.stderr
    view = node.json("get", rid, user="bob")
    assert (view["version"], view["author"], view.get("editor")) == (2, "alice", "bob")
    first_version_view = node.json("publish", "--kind", "TIP", "--title", "t",
                                   "--justification", "walk-in", user="bob")
    first = node.json("get", first_version_view["record_id"], user="bob")
    assert (first["author"], first.get("editor")) == ("bob", "bob")
    view = node.json("get", rid, user="alice")
    assert (view["version"], view["tlp"], view["audience"]) == (2, "AMBER", [])
    # Content edits by a reader stay allowed, even when they restate the policy
    # unchanged (a whole record in --file); the author changes the policy.
    same = json.dumps({"title": "Grey van, dented, CA plate",
                       "policy": {"tlp": "AMBER", "audience": [], "require": ["sworn_le"]}})
    node.ok("update", rid, "--file", "-", user="bob", stdin=same)
    sneaky = json.dumps({"policy": {"require": []}})
    assert node.cli("update", rid, "--file", "-", user="bob", stdin=sneaky).returncode == 1
    node.ok("validate", rid, "--reason", "still an open case", user="bob")
    node.ok("update", rid, "--tlp", "GREEN", user="alice")
    view = node.json("get", rid, user="bob")
    assert (view["version"], view["tlp"], view["author"], view["editor"]) == (
        5, "GREEN", "alice", "alice")
    node.ok("retract", rid, "--reason", "vehicle found", user="bob")
    gone = node.json("get", rid, user="alice")
    assert (gone["kind"], gone["author"], gone["editor"]) == ("RETRACTION", "alice", "bob")


def test_lifecycle_answers_absent_and_not_yours_alike(make_node) -> None:
    """Issue 8 item 11: update, retract, validate and purge give one answer for a
    record that does not exist and one the user may not see (here or elsewhere), as
    ``get`` does; an admin or the author may still end a record blind."""
    a, b = make_node("lima"), make_node("mike")
    a.pin(b)
    b.pin(a)
    for node in (a, b):
        node.add_user("ana", "sworn_le")
        node.add_user("clerk")
    mine = a.publish("--kind", "BOLO", "--title", "Sealed case", "--require", "sworn_le",
                     user="ana")["record_id"]
    done = a.publish("--kind", "BOLO", "--title", "Closed case", "--require", "sworn_le",
                     user="ana")["record_id"]
    a.ok("retract", done, "--reason", "closed", user="ana")
    theirs = b.publish("--kind", "BOLO", "--title", "Their case", "--require", "sworn_le",
                       "--audience", "members", user="ana")["record_id"]
    a.wait_for(lambda: theirs in a.held_record_ids(), 20, "mike's record at lima")
    absent = "0" * 32
    for op in (["update", "--title", "x"], ["retract", "--reason", "r"],
               ["validate", "--reason", "r"], ["purge", "--reason", "r"]):
        answers = set()
        for rid in (absent, mine, done, theirs):
            r = a.cli(op[0], rid, *op[1:], user="clerk")
            assert r.returncode == 1, (op, r.stderr)
            answers.add(r.stderr.replace(rid, "ID"))
        assert len(answers) == 1, (op, answers)
        assert "no record 'ID' that you may see" in answers.pop()
    # A user who may see the other center's record is told whose it is.
    other = a.cli("retract", theirs, "--reason", "r", user="ana")
    assert other.returncode == 1 and "only its origin" in other.stderr
    refused = [e for e in a.json_lines("audit") if e["detail"].get("refused")]
    assert len(refused) == 4 * 4 + 1 and refused[-1]["actor"] == "ana"
    # The author and an admin still end records they may not read.
    assert a.json("retract", mine, "--reason", "unreliable")["kind"] == "RETRACTION"
    assert a.json("purge", done, "--reason", "unreliable")["kind"] == "PURGE"


WORDS = ["quokkaqz", "yakqz", "vicunaqz", "impalaqz", "wapitiqz"]  # no shared prefixes


def purged_at_spoke(origin: Node, spoke: Node, title: str) -> None:
    """The origin publishes a record titled ``title`` and purges it; the spoke holds
    it purged, its erasure from the text index pending (one purge)."""
    rid = origin.publish("--kind", "BOLO", "--title", title, "--audience",
                         "members")["record_id"]
    wait_state(spoke, rid, 1, "active")
    origin.ok("purge", rid, "--reason", "unreliable")
    wait_state(spoke, rid, 2, "purged")
    assert spoke.status()["index_erasure"]["purges"] == 1


def _compacting_every(make_node, center: str, seconds: float) -> Node:
    node = make_node(center, start=False)
    node.edit_config("index_compact_s = 600.0", f"index_compact_s = {seconds}")
    return node.start()


def test_purges_from_a_peer_leave_the_index_file_within_the_bound(make_node) -> None:
    """Each purge from a peer rewrote this node's whole text index (FTS5 optimize,
    O(index)): an origin purging its records one by one made every node of the
    network do that at every entry. The records leave search at once; their words
    leave the index file at one compaction per index_compact_s."""
    origin = make_node("origin")
    spoke = _compacting_every(make_node, "spoke", 5.0)
    star(origin, [spoke])
    rids = [origin.publish("--kind", "BOLO", "--title", w, "--audience", "members")[
        "record_id"] for w in WORDS]
    for rid in rids:
        wait_state(spoke, rid, 1, "active")
    assert all(w.encode() in db_bytes(spoke) for w in WORDS)  # the test can see them
    for rid in rids:
        origin.ok("purge", rid, "--reason", "unreliable")
    # The origin's own purges (its administrator's request) compact at once.
    assert not [w for w in WORDS if w.encode() in db_bytes(origin)]
    assert "index_erasure" not in origin.status()
    for rid in rids:
        wait_state(spoke, rid, 2, "purged")
    # At the spoke: out of search at once, the words still in the file, pending.
    # (Asked of the index itself: a search through the CLI would write the words
    # into the audit log.)
    with contextlib.closing(spoke.db()) as conn:
        assert [conn.execute("SELECT count(*) FROM records_fts WHERE records_fts MATCH ?",
                             (w,)).fetchone()[0] for w in WORDS] == [0] * len(WORDS)
    pending = spoke.status()["index_erasure"]  # before the fix: compacted at every purge
    assert 1 <= pending["purges"] <= len(WORDS), pending
    assert "erasure  " in spoke.ok("status")
    wait_erased(spoke, *(w.encode() for w in WORDS))
    assert "index_erasure" not in spoke.status()
    lines = [ln for ln in spoke.log_tail(10_000_000).splitlines()
             if "text index compacted" in ln]
    assert 1 <= len(lines) <= 2, f"{len(lines)} compactions for {len(WORDS)} purges"


def test_pending_erasure_is_compacted_at_shutdown(make_node, tmp_path: Path) -> None:
    """A pending erasure does not wait for the interval when the daemon stops, nor
    go into a backup (which would copy the index's segments with the words)."""
    origin = make_node("origin")
    spoke = _compacting_every(make_node, "spoke", 3600.0)
    star(origin, [spoke])
    purged_at_spoke(origin, spoke, WORDS[0])
    assert WORDS[0].encode() in db_bytes(spoke)
    spoke.ok("backup", str(tmp_path / "spoke.db"))
    assert WORDS[0].encode() not in (tmp_path / "spoke.db").read_bytes()
    assert "index_erasure" not in spoke.status()
    # Once more, for the way out.
    purged_at_spoke(origin, spoke, WORDS[1])
    assert WORDS[1].encode() in db_bytes(spoke)
    spoke.stop()
    assert WORDS[1].encode() not in db_bytes(spoke)


def test_pending_erasure_is_compacted_before_an_offline_backup(make_node,
                                                                tmp_path: Path) -> None:
    """Red team: a daemon killed (crash, OOM, kill -9) while a purge from a peer
    waits for index_compact_s leaves the purged words in the text index's
    segments (the index_erasure row survives for the next start). An offline
    `fcnode backup` taken before that start copied them into a file kept for
    years, beyond any bound."""
    origin = make_node("origin")
    spoke = _compacting_every(make_node, "spoke", 3600.0)
    star(origin, [spoke])
    purged_at_spoke(origin, spoke, WORDS[2])
    spoke.kill()  # no shutdown compaction
    assert WORDS[2].encode() in db_bytes(spoke)  # the test can see it
    spoke.ok("backup", str(tmp_path / "offline.db"))
    assert WORDS[2].encode() not in (tmp_path / "offline.db").read_bytes()
    with contextlib.closing(spoke.db()) as conn:
        assert conn.execute("SELECT count(*) FROM index_erasure").fetchone()[0] == 0


def test_superseded_and_retracted_words_leave_the_index_file_within_the_bound(
        make_node) -> None:
    """Red team: a new version (the origin removed a name it should not have
    written) and a retraction erase the old content (payload zeroed, out of
    search), but the words stayed in the text index's segments, in the file and in
    every backup, at every holder and at the origin: only a purge compacted the
    index. They now leave it within index_compact_s, as a purge's do."""
    origin = _compacting_every(make_node, "origin", 1.0)
    spoke = _compacting_every(make_node, "spoke", 1.0)
    star(origin, [spoke])
    kept, gone = WORDS[3], WORDS[4]
    rid = origin.publish("--kind", "BOLO", "--title", kept, "--audience",
                         "members")["record_id"]
    rid2 = origin.publish("--kind", "BOLO", "--title", gone, "--audience",
                          "members")["record_id"]
    wait_state(spoke, rid, 1, "active")
    wait_state(spoke, rid2, 1, "active")
    assert kept.encode() in db_bytes(spoke) and gone.encode() in db_bytes(spoke)
    origin.ok("update", rid, "--title", "harmless", "--reason", "name removed")
    origin.ok("retract", rid2, "--reason", "withdrawn")
    wait_state(spoke, rid, 2, "active")
    wait_state(spoke, rid2, 2, "retracted")
    for node in (origin, spoke):  # before the fix: there for good
        wait_erased(node, kept.encode(), gone.encode())
