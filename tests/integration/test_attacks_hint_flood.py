"""Issue 10 item 5, played over real mutual TLS: a pinned peer sends one batch of
20,000 fake placeholders for another origin's log. Before range placeholders the
hub and the spoke behind it each stored 20,001 rows, and kept them. Now a run of
unsigned hints is one row whatever its length (and whoever sent its parts), so
the rows of hints a peer can make a node hold per origin are at most one per run
between two positions the origin vouched for; and the origin's next entries,
placed inside the fake range, still reach the spoke behind the hub."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from node.wire import federation_pb2
from tests.integration.rogue import Rogue


def rows(node, origin: str) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*) FROM entries WHERE origin = ?",
                            (origin,)).fetchone()[0]


def head(node, origin: str) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM entries WHERE origin = ?",
                            (origin,)).fetchone()[0]


def titles(node, origin: str) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*) FROM entries WHERE origin = ? AND payload IS NOT "
                            "NULL", (origin,)).fetchone()[0]


def test_fake_placeholders_for_another_origin_are_one_row(make_node, tmp_path: Path) -> None:
    origin, hub, spoke = make_node("yankee"), make_node("hubzulu"), make_node("spokez")
    origin.pin(hub); hub.pin(origin); hub.pin(spoke); spoke.pin(hub)  # noqa: E702
    spoke.pin(origin, "--no-connect")
    origin.publish("--kind", "BULLETIN", "--title", "first", "--audience", "members")
    spoke.wait_for(lambda: rows(spoke, "yankee") == 1, 20, "seq 1 at the spoke")
    rogue = Rogue(tmp_path, "mallory")
    n = 20_000
    rogue.items = [federation_pb2.LogItem(origin="yankee", seq=s, hash=os.urandom(32))
                   for s in range(2, n + 2)]
    rogue.serve(hub.card())
    hub.ok("peers", "add", rogue.card.line())
    # The fakes reach the hub and, relayed as one range item, the spoke.
    spoke.wait_for(lambda: head(spoke, "yankee") == n + 1, 30, "the fake range at the spoke")
    assert rows(hub, "yankee") == 2, "20,000 hints are one row at the hub"
    assert rows(spoke, "yankee") == 2, "and one row at the spoke"
    # The origin's next entries land inside the fake range and still reach the spoke.
    origin.publish("--kind", "BULLETIN", "--title", "second", "--audience", "members")
    origin.publish("--kind", "BULLETIN", "--title", "third", "--audience", "members")
    spoke.wait_for(lambda: titles(spoke, "yankee") == 3, 30, "seq 2 and 3 at the spoke")
    assert rows(hub, "yankee") <= 4 and rows(spoke, "yankee") <= 4
