"""Key and certificate rotation across a chain origin -- hub -- spoke with real
daemons over mutual TLS (issue 9 items 1-3). The spoke never dials the origin:
it learns every announcement through the hub."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from node import keys
from node.devnet import Node
from node.identity import parse_card
from node.signing import entry_hash, seal_record
from node.wire import federation_pb2, records_pb2
from tests.integration.rogue import Rogue

GREEN = ("--tlp", "GREEN", "--audience", "members")


def chain(make_node) -> tuple[Node, Node, Node]:
    origin, hub, spoke = make_node("origin"), make_node("hub"), make_node("spoke")
    origin.pin(hub)
    hub.pin(origin)
    hub.pin(spoke)
    spoke.pin(hub)
    spoke.pin(origin, "--no-connect")
    origin.pin(spoke, "--no-connect")
    return origin, hub, spoke


def held(node: Node, record_id: str) -> bool:
    return record_id in node.held_record_ids()


def wait_held(node: Node, record_id: str, timeout: float = 30) -> None:
    node.wait_for(lambda: held(node, record_id), timeout, f"{record_id} at {node.center}")


def head(node: Node, origin: str) -> tuple[int, bytes]:
    with contextlib.closing(node.db()) as conn:
        row = conn.execute("SELECT seq, hash FROM entries WHERE origin = ? ORDER BY seq DESC "
                           "LIMIT 1", (origin,)).fetchone()
    return (row[0], row[1]) if row else (0, b"")


def rejections(node: Node, origin: str) -> list[tuple[int, str]]:
    with contextlib.closing(node.db()) as conn:
        return list(conn.execute("SELECT seq, reason FROM rejections WHERE origin = ?",
                                 (origin,)))


def query_ids(node: Node, text: str, *extra: str) -> dict[str, str]:
    """record id -> access, of a federated query's results."""
    out = {}
    for line in node.json_lines("query", text, *extra):
        if "summary" not in line:
            out[line["record_id"]] = line["access"]
    return out


def forged(origin: str, seq: int, prev: bytes, key_pem: bytes, title: str
           ) -> federation_pb2.LogItem:
    key = serialization.load_pem_private_key(key_pem, password=None)
    body = records_pb2.RecordBody(
        origin=origin, seq=seq, prev=prev, record_id=f"forged{seq}", version=1,
        created_ms=int(time.time() * 1000), expires_ms=int(time.time() * 1000) + 86_400_000,
        kind=records_pb2.BULLETIN, title=title,
        policy=records_pb2.AccessPolicy(tlp=records_pb2.GREEN, audience=["members"],
                                        discoverability=records_pb2.POINTER, relay=True))
    env = seal_record(key, body)  # type: ignore[arg-type]
    return federation_pb2.LogItem(origin=origin, seq=seq, hash=entry_hash(env.payload),
                                  envelope=env)


def test_signing_key_rotation_reaches_a_spoke_through_the_hub(make_node, tmp_path: Path
                                                               ) -> None:
    origin, hub, spoke = chain(make_node)
    before = origin.publish("--kind", "BULLETIN", "--title", "before rotation", *GREEN)
    wait_held(spoke, before["record_id"])
    assert query_ids(spoke, "rotation") == {before["record_id"]: "FULL"}
    old_card = parse_card(origin.card())
    old_key_pem = (origin.home / "signing.key").read_bytes()

    rotated = origin.json("keys", "rotate", "--signing")
    new_card = parse_card(origin.card())
    assert new_card.signing_key != old_card.signing_key  # identity prints the new card
    assert new_card.tls_fingerprint == old_card.tls_fingerprint
    after = origin.publish("--kind", "BULLETIN", "--title", "after rotation", *GREEN)
    # The hub verifies with the key the rotation announced; the spoke learns it
    # from the hub (it never talks to the origin).
    wait_held(hub, after["record_id"])
    wait_held(spoke, after["record_id"])
    shown = spoke.json("peers", "show", "origin")
    assert [(k["from_seq"], k["until_seq"]) for k in shown["keys"]] == [
        (1, rotated["seq"]), (rotated["seq"] + 1, None)]
    assert shown["keys"][1]["key_id"] == rotated["new_key_id"]
    # Queries: the origin's are signed with the new key now; what it published
    # before and after verifies at the spoke.
    assert query_ids(origin, "rotation", "--centers", "hub") == {
        before["record_id"]: "FULL", after["record_id"]: "FULL"}
    assert query_ids(spoke, "rotation") == {before["record_id"]: "FULL",
                                            after["record_id"]: "FULL"}

    # A thief with the old key signs the next position: refused, never stored.
    seq, prev = head(spoke, "origin")
    rogue = Rogue(tmp_path, "mallory")
    rogue.items = [forged("origin", seq + 1, prev, old_key_pem, "signed with the old key")]
    rogue.serve(spoke.card())
    try:
        spoke.ok("peers", "add", rogue.card.line())
        spoke.wait_for(lambda: any("not valid at this position" in r
                                   for s, r in rejections(spoke, "origin") if s == seq + 1),
                       30, "the old key's entry refused")
        assert not held(spoke, f"forged{seq + 1}")
        assert head(spoke, "origin")[0] == seq
        shown = spoke.json("peers", "show", "origin")
        assert [e["seq"] for e in shown["distrusted_entries"]] == [seq + 1]
    finally:
        rogue.stop()
    # ... and the origin's next entry under the new key still arrives.
    later = origin.publish("--kind", "BULLETIN", "--title", "later", *GREEN)
    wait_held(spoke, later["record_id"])

    # The key history survives a restart (learned keys live in the database).
    spoke.stop()
    spoke.start()
    assert len(spoke.json("peers", "show", "origin")["keys"]) == 2
    assert query_ids(spoke, "later", "--centers", "hub") == {later["record_id"]: "FULL"}
    origin.stop()
    origin.start()  # the origin restarts with its new key
    assert json.loads(origin.ok("identity", "--json"))["card"] == new_card.line()
    assert origin.publish("--kind", "BULLETIN", "--title", "after restart", *GREEN)
    assert keys.load_signing_key(origin.home / "signing.key")
