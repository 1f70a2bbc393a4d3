"""Red team, issue 8 items 5 and 6: a hostile pinned peer relays another
center's real, origin-signed stubs as POINTERs for queries they do not answer.

The rogue obtains a genuine stub the ordinary way (it asks the origin with an
entity key it knows and gets a POINTER), then replays it in its own answers to
another center. The stub verifies; what it must not do is make the asker show
"the origin holds a record for this" where the query could not have produced a
pointer at all.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from node.core import entities
from node.devnet import mesh
from tests.integration.rogue import Rogue


def test_relayed_real_stub_is_no_pointer_for_a_query_without_entities(
        make_node, tmp_path: Path) -> None:
    alpha, bravo = make_node("alpha"), make_node("bravo")
    mesh(alpha, bravo)
    alpha.add_user("det")
    phone = ("phone", "555 010 7777")
    rec = bravo.publish("--kind", "SAR", "--title", "Undercover meeting at the harbour",
                        "--entity", f"{phone[0]}={phone[1]}", "--tlp", "AMBER",
                        "--discoverability", "pointer", "--justification", "active case")
    rogue = Rogue(tmp_path, "rogue")
    bravo.ok("peers", "add", rogue.card.line())
    # The rogue harvests bravo's real stub with a legitimate entity query.
    status, answers = rogue.ask(bravo.listen, bravo.card(), rogue.signed_query(
        user="m", entity_keys=[entities.match_keys(*phone)[0]]))
    assert status == grpc.StatusCode.OK
    harvested = [p for a in answers for p in a.pointers]
    assert [p.record_id for p in harvested] == [rec["record_id"]]
    # ... and relays it, unchanged, as its answer to alpha's free-text query.
    rogue.pointers = harvested
    rogue.serve(alpha.card())
    alpha.ok("peers", "add", rogue.card.line())

    lines = alpha.json_lines("query", "harbour", "--timeout", "5s", user="det")
    summary = lines[-1]["summary"]
    assert summary["rogue"]["status"] == "answered"
    assert summary["bravo"]["status"] == "answered"
    # A query with no entity returns FULL records only (item 5): bravo itself
    # answers nothing, and no relayed stub may turn the word "harbour" into a
    # pointer to bravo's record. Before the fix: the pointer was shown.
    assert lines[:-1] == []
    assert summary["rogue"]["dropped"] == 1
    rogue.stop()
