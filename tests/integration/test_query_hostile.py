"""Issue 8: a hostile peer against federated query, over real mutual TLS.

Item 8: restricted hits cannot flood the origin. Item 12 (first part): query
ids are unique per requesting center.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import grpc

from node import entities
from node.devnet import Node
from tests.integration.rogue import Rogue

PHONE = ("phone", "555 010 4242")


def _publish_restricted(node: Node, tmp_path: Path, n: int) -> None:
    drafts = [{"kind": "BOLO", "title": f"Restricted case {i}: officer safety",
               "entities": [f"{PHONE[0]}={PHONE[1]}"],
               "policy": {"tlp": "AMBER", "audience": [], "discoverability": "restricted"}}
              for i in range(n)]
    path = tmp_path / "restricted.json"
    path.write_text(json.dumps(drafts))
    assert len(node.ok("publish", "--file", str(path), "--json").splitlines()) == n


def _notice_rows(node: Node) -> tuple[int, int]:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*), coalesce(sum(length(detail)), 0) FROM notices "
                            "WHERE kind = 'deconfliction'").fetchone()


def test_restricted_hits_leave_one_bounded_notice_per_query(make_node, tmp_path: Path) -> None:
    node = make_node("delta", start=False)
    node.edit_config("max_results = 500", "max_results = 100")
    node.edit_config("max_notices = 10000", "max_notices = 5")
    node.start()
    _publish_restricted(node, tmp_path, 150)
    rogue = Rogue(tmp_path, "echo")
    node.ok("peers", "add", rogue.card.line())
    key = entities.match_keys(*PHONE)[0]
    text = "officer safety " * 34  # 510 characters: the most a query may carry

    status, answers = rogue.ask(node.listen, node.card(), rogue.signed_query(
        user="mallory", entity_keys=[key], text=text, limit=100))
    assert status == grpc.StatusCode.OK
    assert not any(a.records or a.pointers for a in answers)  # restricted: told nothing
    assert answers[-1].truncated  # the work limit stopped it: restricted matches count
    notices = [n for n in node.json_lines("notices") if n["kind"] == "deconfliction"]
    # Before the fix: 150 notices, each holding the full text.
    assert len(notices) == 1
    (notice,) = notices
    assert notice["searched_by"] == "echo/mallory" and notice["entities"] == [key]
    assert notice["matched"] == 100  # max_results: the work limit counts them
    assert len(notice["records"]) == 50 and len(set(notice["records"])) == 50
    assert notice["text"] == text[:256]
    count, size = _notice_rows(node)
    assert count == 1 and size < 4096

    # More queries: the notices stay within max_notices (5), the oldest dropped.
    for _ in range(8):
        status, _ = rogue.ask(node.listen, node.card(), rogue.signed_query(
            user="mallory", entity_keys=[key], text=text, limit=100))
        assert status == grpc.StatusCode.OK
    count, size = _notice_rows(node)
    assert count == 5 and size < 5 * 4096
    # A longer text than any fcnode requester sends is refused, nothing written.
    status, _ = rogue.ask(node.listen, node.card(), rogue.signed_query(
        entity_keys=[key], text="x" * 513))
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert _notice_rows(node)[0] == 5


def test_query_ids_are_unique_per_requesting_center(make_node, tmp_path: Path) -> None:
    node = make_node("delta")
    echo, fox = Rogue(tmp_path, "echo"), Rogue(tmp_path, "fox")
    for r in (echo, fox):
        node.ok("peers", "add", r.card.line())
    seen_id = "ab" * 16  # e.g. an id fox saw when echo asked it
    first = fox.signed_query(query_id=seen_id, text="anything")
    assert fox.ask(node.listen, node.card(), first)[0] == grpc.StatusCode.OK
    # Before the fix: ALREADY_EXISTS, fox got echo's real query refused as a replay.
    theirs = echo.signed_query(query_id=seen_id, text="anything")
    assert echo.ask(node.listen, node.card(), theirs)[0] == grpc.StatusCode.OK
    # A replay by the same center is still refused.
    assert echo.ask(node.listen, node.card(), theirs)[0] == grpc.StatusCode.ALREADY_EXISTS
    assert fox.ask(node.listen, node.card(), first)[0] == grpc.StatusCode.ALREADY_EXISTS
