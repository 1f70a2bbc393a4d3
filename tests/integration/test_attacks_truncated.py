"""Red team, issue 8 items 5 and 8: the `truncated` flag of a query answer must
not tell a center about restricted records it may learn nothing of.

A restricted record's existence may only ever become a deconfliction notice at
its origin. Before the fix, a peer asking with limit 1 on an entity that also
matched one record it may read got `truncated` as soon as the walk met a
restricted record after it: the answer was cut before the restricted match was
noted, so the asker learned "a restricted record on this phone exists" and the
origin was never told of the hit.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from node.core import entities
from tests.integration.rogue import Rogue

PHONE = ("phone", "555 010 6161")


def test_truncated_reveals_no_restricted_record(make_node, tmp_path: Path) -> None:
    node = make_node("delta")
    rogue = Rogue(tmp_path, "echo")
    node.ok("peers", "add", rogue.card.line())
    key = entities.match_keys(*PHONE)[0]
    node.publish("--kind", "BOLO", "--title", "Undercover operation", "--entity",
                 f"{PHONE[0]}={PHONE[1]}", "--tlp", "AMBER", "--discoverability", "restricted",
                 "--justification", "active case")
    node.publish("--kind", "BOLO", "--title", "Stolen phone", "--entity",
                 f"{PHONE[0]}={PHONE[1]}", "--tlp", "GREEN", "--audience", "members")

    status, answers = rogue.ask(node.listen, node.card(), rogue.signed_query(
        user="mallory", entity_keys=[key], limit=1))
    assert status == grpc.StatusCode.OK
    assert [len(a.records) for a in answers if a.records] == [1]
    assert not any(a.pointers for a in answers)
    # Nothing readable was left out: `truncated` must not say the restricted
    # record exists (before the fix it did).
    assert not answers[-1].truncated
    # ... and the restricted hit is the origin's to know: one notice.
    notices = [n for n in node.json_lines("notices") if n["kind"] == "deconfliction"]
    assert len(notices) == 1 and notices[0]["searched_by"] == "echo/mallory"
