"""Red team, issue 8 item 2: a rogue pinned only by a hub frames the hub.

The rogue sends the hub a run of fake placeholders for an origin's next
positions. The hub relays them (it cannot tell), and when the origin's real
entries correct them, the spoke charges each contradicted placeholder to the
hub, the peer it got them from. After MAX_REWINDS the spoke refuses the hub's
placeholders for that origin for an hour, so the first entry the origin
withholds from the spoke (a placeholder is all the hub may send for it) stops
the spoke's chain, and every later entry the spoke is entitled to never comes.
"""

from __future__ import annotations

import os
from pathlib import Path

from node.wire import federation_pb2
from tests.integration.rogue import Rogue


def test_fakes_relayed_by_an_honest_hub_do_not_cut_its_spokes_off(make_node,
                                                                  tmp_path: Path) -> None:
    origin, hub, spoke = make_node("yankee"), make_node("hubzulu"), make_node("spokez")
    origin.pin(hub)
    hub.pin(origin)
    hub.pin(spoke)
    spoke.pin(hub)
    spoke.pin(origin, connect=False)
    origin.publish("--kind", "BULLETIN", "--title", "first", "--audience", "members")
    spoke.wait_for(lambda: spoke.head("yankee") == 1, 20, "seq 1 at the spoke")
    rogue = Rogue(tmp_path, "mallory")
    rogue.items = [federation_pb2.LogItem(origin="yankee", seq=s, hash=os.urandom(32))
                   for s in range(2, 8)]
    rogue.serve(hub.card())
    hub.ok("peers", "add", rogue.card.line())
    spoke.wait_for(lambda: spoke.head("yankee") == 7, 20, "the fakes relayed to the spoke")
    recs = [origin.publish("--kind", "BULLETIN", "--title", f"real {i}", "--audience",
                           "members") for i in range(6)]
    spoke.wait_for(lambda: spoke.record_state(recs[-1]["record_id"]) == (1, "active"), 30,
                   "the real entries at the spoke")
    # The origin withholds one entry from the spoke, then shares one with everyone.
    origin.publish("--kind", "BULLETIN", "--title", "hub only", "--audience", "yankee",
                   "--audience", "hubzulu")
    shared = origin.publish("--kind", "BULLETIN", "--title", "for all", "--audience",
                            "members")
    hub.wait_for(lambda: hub.record_state(shared["record_id"]) == (1, "active"), 20,
                 "the last entry at the hub")
    # Before the fix: the spoke refused the hub's placeholder ("placeholders
    # refused: this peer's were contradicted") and never got past it.
    spoke.wait_for(lambda: spoke.record_state(shared["record_id"]) == (1, "active"), 30,
                   "the shared entry at the spoke, past the withheld one")
    rogue.stop()
