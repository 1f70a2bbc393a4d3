"""Red team, issue 8 item 5: where a POINTER falls in a result list must not
date the record it points to.

Results come newest first, and one limit cut FULL records and POINTERs alike.
An asker who knows when the records it may read were made learned from the
order (a pointer between two of them) and from which of them the limit kept
(limit 1: the pointer, or the newest readable record) when a record it may not
read was created, the time filters' oracle by another way. A peer can make its
own records with any creation time and bisect. Now readable records and
pointers have their own budgets, and pointers come after, in record-id order.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from node.core import entities
from tests.integration.rogue import Rogue

PHONE = "phone=555 010 2727"


def test_pointer_position_reveals_no_creation_time(make_node, tmp_path: Path) -> None:
    node = make_node("delta")
    node.add_user("det")
    older = node.publish("--kind", "BULLETIN", "--title", "Older", "--entity", PHONE,
                         "--tlp", "GREEN", "--audience", "members")
    hidden = node.publish("--kind", "SAR", "--title", "Hidden", "--entity", PHONE,
                          "--tlp", "AMBER", "--require", "ntk:narcotics",
                          "--discoverability", "pointer", "--justification", "active case")
    newer = node.publish("--kind", "BULLETIN", "--title", "Newer", "--entity", PHONE,
                         "--tlp", "GREEN", "--audience", "members")

    shown = node.json_lines("search", "--entity", PHONE, user="det")
    # Before the fix: [newer, hidden, older], so 'hidden' was made between them.
    assert [(r["record_id"], r["access"]) for r in shown] == [
        (newer["record_id"], "FULL"), (older["record_id"], "FULL"),
        (hidden["record_id"], "POINTER")]
    # With limit 1, the pointer is shown whatever the readable records' times.
    shown = node.json_lines("search", "--entity", PHONE, "--limit", "1", user="det")
    assert {(r["record_id"], r["access"]) for r in shown} == {
        (newer["record_id"], "FULL"), (hidden["record_id"], "POINTER")}

    # The same over federation: a peer asking with limit 1 gets the newest
    # record it may read and the pointer, not one or the other by time.
    rogue = Rogue(tmp_path, "echo")
    node.ok("peers", "add", rogue.card.line())
    status, answers = rogue.ask(node.listen, node.card(), rogue.signed_query(
        user="m", entity_keys=[entities.match_keys("phone", "555 010 2727")[0]], limit=1))
    assert status == grpc.StatusCode.OK
    assert sum(len(a.records) for a in answers) == 1
    assert [p.record_id for a in answers for p in a.pointers] == [hidden["record_id"]]
