"""Issue 8, item 5: discovery reveals no content.

A POINTER (and a restricted record's notice) comes only from an exact
entity-key match; text, labels and since are never evaluated against content
the asker may not read (they neither produce nor exclude a pointer). A query
with no entity key returns FULL records only. Local search, federated query
and hubs answering for copies all follow it.
"""

from __future__ import annotations

import contextlib
import sqlite3

from node.devnet import Node, mesh

PHONE = "phone=(555) 010-7777"


def _publish_unreadable(node: Node) -> tuple[dict, dict]:
    """An AMBER SAR readable only by sworn_le users (discoverable as a pointer),
    and a restricted TIP on the same phone."""
    sar = node.publish("--kind", "SAR", "--title", "Narcotics stash house on Elm",
                       "--narrative", "case 24-117 heavy foot traffic", "--entity", PHONE,
                       "--label", "narcotics", "--tlp", "AMBER", "--require", "sworn_le",
                       "--discoverability", "pointer", "--justification", "informant report")
    tip = node.publish("--kind", "TIP", "--title", "Informant says stash moved",
                       "--entity", PHONE, "--label", "narcotics", "--tlp", "AMBER",
                       "--require", "sworn_le", "--discoverability", "restricted",
                       "--justification", "informant")
    return sar, tip


def test_local_search_gives_pointers_only_for_entity_matches(make_node) -> None:
    node = make_node("ncric")
    node.add_user("officer", "sworn_le")
    node.add_user("clerk")
    sar, _ = _publish_unreadable(node)

    def clerk(*args: str) -> list[dict]:
        return node.json_lines("search", *args, user="clerk")

    # Before the fix, each of these gave the clerk a POINTER: an oracle for the
    # words, case number, label, kind and creation time of a record it may not read.
    assert clerk("stash") == []
    assert clerk("24", "117") == []
    assert clerk("--label", "narcotics") == []
    assert clerk("--kind", "SAR") == []
    assert clerk("--since", "1d") == []
    # The entity finds it: a pointer, never its content (the restricted TIP: nothing).
    pointer = {"record_id": sar["record_id"], "origin": "ncric", "kind": "SAR",
               "access": "POINTER", "contact": "NCRIC fusion center watch desk"}
    assert clerk("--entity", PHONE) == [pointer]
    # Text, labels and time neither include nor exclude a pointer; kind and origin do.
    assert clerk("--entity", PHONE, "zebra") == [pointer]
    assert clerk("--entity", PHONE, "--label", "robbery", "--since", "2099-01-01") == [pointer]
    assert clerk("--entity", PHONE, "--kind", "BOLO") == []
    assert clerk("--entity", PHONE, "--origin", "nysic") == []
    # Who may read it gets FULL results that match every filter, as before.
    officer = node.json_lines("search", "stash", user="officer")
    assert [r["access"] for r in officer] == ["FULL", "FULL"]
    assert node.json_lines("search", "--entity", PHONE, "zebra", user="officer") == []
    assert len(node.json_lines("search", "--entity", PHONE, "elm", user="officer")) == 1


def test_query_without_entity_gets_no_pointer_and_leaves_no_notice(make_node) -> None:
    a, b = make_node("alpha"), make_node("bravo")
    mesh(a, b)
    a.add_user("ana")
    sar, tip = _publish_unreadable(b)

    def ask(*args: str) -> list[dict]:
        lines = a.json_lines("query", *args, "--timeout", "5s", user="ana")
        assert lines[-1]["summary"]["bravo"]["status"] == "answered", lines[-1]
        return lines[:-1]

    # Before the fix: a POINTER to bravo's SAR for each of these, and a notice.
    assert ask("stash") == []
    assert ask("--label", "narcotics") == []
    assert ask("--kind", "SAR", "--since", "1d") == []
    assert b.json_lines("notices") == []
    got = ask("--entity", PHONE, "zebra")
    assert [(r["record_id"], r["access"]) for r in got] == [(sar["record_id"], "POINTER")]
    assert "title" not in got[0]
    notices = b.json_lines("notices")
    assert [(n["kind"], n["records"], n["searched_by"]) for n in notices] == [
        ("deconfliction", [tip["record_id"]], "alpha/ana")]


def test_hub_answers_for_copies_by_the_same_rule(make_node) -> None:
    """origin — hub — asker: the hub holds an AMBER copy the asker may not read."""
    origin, hub, asker = make_node("origin"), make_node("hub"), make_node("asker")
    origin.pin(hub)
    hub.pin(origin)
    hub.pin(asker)
    asker.pin(hub)
    asker.pin(origin, connect=False)  # to verify what the hub passes on
    asker.add_user("ana")
    rec = origin.publish("--kind", "BOLO", "--title", "Grey van seen at depot",
                         "--entity", PHONE, "--label", "depot", "--tlp", "AMBER",
                         "--audience", "hub", "--discoverability", "pointer")
    # A hub can show a pointer only with the origin's signed stub: replication
    # passes it on with the copy of a record not everyone may read.
    def hub_has_stub() -> bool:
        with contextlib.closing(hub.db()) as conn:
            return conn.execute("SELECT 1 FROM entries WHERE record_id = ? "
                                "AND stub IS NOT NULL", (rec["record_id"],)).fetchone()
    origin.wait_for(hub_has_stub, 20, "replication of the copy with its stub")

    def ask(*args: str) -> list[dict]:
        lines = asker.json_lines("query", *args, "--timeout", "5s", user="ana")
        assert lines[-1]["summary"]["hub"]["status"] == "answered", lines[-1]
        return lines[:-1]

    assert ask("grey", "van") == []  # before the fix: a POINTER from the hub
    assert ask("--label", "depot") == []
    got = ask("--entity", PHONE, "--label", "other")
    assert [(r["record_id"], r["access"], r["version"], r["from"]) for r in got] == [
        (rec["record_id"], "POINTER", 1, "hub")]


def test_records_from_before_stubs_still_give_verifiable_pointers(make_node) -> None:
    """An upgraded origin signs stubs for its older entries at start: a pointer
    needs one, and entries appended before stubs existed have none."""
    a, b = make_node("alpha"), make_node("bravo")
    mesh(a, b)
    a.add_user("ana")
    sar, _ = _publish_unreadable(b)
    b.stop()
    with contextlib.closing(sqlite3.connect(b.home / "node.db")) as conn, conn:
        conn.execute("UPDATE entries SET stub = NULL, stub_signature = NULL, "
                     "stub_key_id = NULL")  # as a database from before migration 2
    b.start()
    # alpha's link to the restarted bravo may still be backing off: wait for it.
    a.wait_for(lambda: any(p["center"] == "bravo" and p["state"] == "connected"
                           for p in a.status()["peers"]), 30, "bravo reconnected")
    lines = a.json_lines("query", "--entity", PHONE, "--timeout", "5s", user="ana")
    assert lines[-1]["summary"]["bravo"]["status"] == "answered", lines[-1]
    assert [(r["record_id"], r["access"], r["version"]) for r in lines[:-1]] == [
        (sar["record_id"], "POINTER", 1)]
    with contextlib.closing(b.db()) as conn:
        assert conn.execute("SELECT count(*) FROM entries WHERE stub IS NULL").fetchone()[0] == 0
