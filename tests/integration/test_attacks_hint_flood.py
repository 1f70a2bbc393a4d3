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


def titles(node, origin: str) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*) FROM entries WHERE origin = ? AND payload IS NOT "
                            "NULL", (origin,)).fetchone()[0]


def test_fake_placeholders_for_another_origin_are_one_row(make_node, tmp_path: Path) -> None:
    origin, hub, spoke = make_node("yankee"), make_node("hubzulu"), make_node("spokez")
    origin.pin(hub); hub.pin(origin); hub.pin(spoke); spoke.pin(hub)  # noqa: E702
    spoke.pin(origin, connect=False)
    origin.publish("--kind", "BULLETIN", "--title", "first", "--audience", "members")
    spoke.wait_for(lambda: rows(spoke, "yankee") == 1, 20, "seq 1 at the spoke")
    rogue = Rogue(tmp_path, "mallory")
    n = 20_000
    rogue.items = [federation_pb2.LogItem(origin="yankee", seq=s, hash=os.urandom(32))
                   for s in range(2, n + 2)]
    rogue.serve(hub.card())
    hub.ok("peers", "add", rogue.card.line())
    # The fakes reach the hub and, relayed as one range item, the spoke.
    spoke.wait_for(lambda: spoke.head("yankee") == n + 1, 30, "the fake range at the spoke")
    assert rows(hub, "yankee") == 2, "20,000 hints are one row at the hub"
    assert rows(spoke, "yankee") == 2, "and one row at the spoke"
    # The origin's next entries land inside the fake range and still reach the spoke.
    origin.publish("--kind", "BULLETIN", "--title", "second", "--audience", "members")
    origin.publish("--kind", "BULLETIN", "--title", "third", "--audience", "members")
    spoke.wait_for(lambda: titles(spoke, "yankee") == 3, 30, "seq 2 and 3 at the spoke")
    assert rows(hub, "yankee") <= 4 and rows(spoke, "yankee") <= 4


class _Staged(Rogue):
    """Serves ``stages[n]`` on its n-th Replicate call (the last one from then on)."""

    def __init__(self, root: Path, center: str) -> None:
        super().__init__(root, center)
        self.stages: list[list[federation_pb2.LogItem]] = []

    async def Replicate(self, request, context):  # type: ignore[no-untyped-def]
        import asyncio
        self.requests.append(request)
        n = min(len(self.requests), len(self.stages)) - 1
        yield federation_pb2.ReplicateBatch(items=self.stages[n])
        await asyncio.sleep(3600)


def test_a_hint_into_a_hole_keeps_the_range_at_the_head(make_node, tmp_path: Path) -> None:
    """A rewind leaves a hole below the origin's signed stub; a range of hints then
    sits at the head. A bare hint for the hole pulled the head's range row down into
    it (append_hint with first = head + 1 > last): the node lost its head and held a
    row whose first_seq exceeds its seq. Now the hint takes the hole alone."""
    from node.core.signing import envelope_stub

    node = make_node("victor")
    rogue = _Staged(tmp_path, "mallory")
    one = rogue.item(rogue.body(1, b"", "one"))
    two = rogue.item(rogue.body(2, one.hash, "two"))
    three = rogue.item(rogue.body(3, two.hash, "three"))
    rogue.stages = [
        [one, federation_pb2.LogItem(origin="mallory", seq=2, hash=os.urandom(32)),
         federation_pb2.LogItem(origin="mallory", seq=3, hash=three.hash,
                                stub=envelope_stub(three.envelope)),
         three],  # links past the false hint at 2: rewind, 2 becomes a hole
        [federation_pb2.LogItem(origin="mallory", seq=10, hash=os.urandom(32), range_first=4),
         federation_pb2.LogItem(origin="mallory", seq=2, hash=two.hash)]]
    rogue.serve(node.card())
    node.ok("peers", "add", rogue.card.line())
    node.wait_for(lambda: len(rogue.requests) >= 2, 30, "the resubscription after the rewind")

    def held() -> list[tuple]:
        with contextlib.closing(node.db()) as conn:
            return conn.execute("SELECT first_seq, seq FROM entries WHERE origin = 'mallory' "
                                "ORDER BY seq").fetchall()

    node.wait_for(lambda: (None, 2) in held() or (4, 2) in held(), 30, "the hint for the hole")
    assert held() == [(None, 1), (None, 2), (None, 3), (4, 10)], held()
    assert node.head("mallory") == 10
