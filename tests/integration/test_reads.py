"""A real daemon answers `status` while its writer is held (issue 10 item 1),
and a search's answer still waits for its audit entry to be committed."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from typing import Any

from node.cli.client import Client
from node.config.home import Home


def draft(title: str) -> dict[str, Any]:
    return {"kind": "BOLO", "title": title, "entities": ["plate=7ABC-123"],
            "policy": {"tlp": "GREEN", "audience": ["members"], "require": [],
                       "discoverability": "pointer"},
            "part23": {"source_reliability": "B", "content_validity": "2"}}


def test_status_answers_while_the_writer_is_held(make_node) -> None:
    node = make_node("rdx")
    first = node.publish("--kind", "BOLO", "--title", "First", "--entity", "plate=7abc-123",
                         "--audience", "members")
    client = Client(Home(node.home), node.token, timeout=30.0)
    other = Client(Home(node.home), node.token, timeout=30.0)
    searcher = Client(Home(node.home), node.token, timeout=30.0)
    for c in (client, other, searcher):
        c.call("Status")  # channels up before the lock is taken
    events: list[str] = []
    results: dict[str, Any] = {}

    def publish() -> None:
        try:
            results["publish"] = other.call("Publish", {"records": [draft("Second")]})
        except Exception as exc:
            results["publish"] = exc
        events.append("publish returned")

    def search() -> None:
        results["search"] = list(searcher.stream(
            "Search", {"filters": {"entities": ["plate=7ABC123"]}}))
        events.append("search returned")

    # Another connection takes the write lock: the daemon's writer thread then
    # sits in its busy handler inside the publish, as it would in a long
    # ingest transaction.
    lock = sqlite3.connect(node.home / "node.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        writer = threading.Thread(target=publish)
        writer.start()
        time.sleep(0.3)  # the publish reaches the writer (if not, this test is only weaker)
        reader = threading.Thread(target=search)
        reader.start()
        status = client.call("Status")
        events.append("status answered")
        assert status["records"]["rdx"]["active"] == 1  # last committed state
        lock.execute("ROLLBACK")
        events.append("lock released")
        writer.join(30)
        reader.join(30)
    finally:
        with contextlib.suppress(sqlite3.Error):
            lock.execute("ROLLBACK")
        lock.close()
        for c in (client, other, searcher):
            c.close()

    # Status did not queue behind the held writer; the search's answer waited
    # for its audit entry, which needs the writer (28 CFR 23.20(f)).
    assert events[:2] == ["status answered", "lock released"], events
    assert sorted(events[2:]) == ["publish returned", "search returned"], events
    assert not isinstance(results["publish"], Exception), results["publish"]
    assert [r["record_id"] for r in results["search"]] == [first["record_id"]]
    with contextlib.closing(node.db()) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY seq")]
    assert "search" in actions
    # Read-your-writes: once the publish returned, a search sees it.
    second = results["publish"][0]["record_id"]
    found = {r["record_id"] for r in node.json_lines("search", "--entity", "plate=7ABC123")}
    assert found == {first["record_id"], second}
