"""Key and certificate rotation across a chain origin -- hub -- spoke with real
daemons over mutual TLS (issue 9 items 1-3). The spoke never dials the origin:
it learns every announcement through the hub."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from node.config import keys
from node.config.identity import parse_card
from node.core.signing import entry_hash, seal_record
from node.devnet import Node, star
from node.wire import federation_pb2, records_pb2
from tests.integration.rogue import Rogue
from tests.integration.test_metrics import scrape, value, with_metrics

GREEN = ("--tlp", "GREEN", "--audience", "members")


def chain(make_node) -> tuple[Node, Node, Node]:
    """origin <-> hub <-> spoke; origin and spoke pin each other's keys only."""
    origin, hub, spoke = make_node("origin"), make_node("hub"), make_node("spoke")
    star(hub, [origin, spoke])
    return origin, hub, spoke


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
    spoke.wait_held(before["record_id"])
    assert query_ids(spoke, "rotation") == {before["record_id"]: "FULL"}
    old_card = parse_card(origin.card())
    old_key_pem = (origin.home / "signing.key").read_bytes()

    rotated = origin.json("keys", "rotate", "--signing")
    # The audit head was last signed by the old key: it still verifies.
    assert origin.json("audit", "verify")["ok"]
    new_card = parse_card(origin.card())
    assert new_card.signing_key != old_card.signing_key  # identity prints the new card
    assert new_card.tls_fingerprint == old_card.tls_fingerprint
    after = origin.publish("--kind", "BULLETIN", "--title", "after rotation", *GREEN)
    # The hub verifies with the key the rotation announced; the spoke learns it
    # from the hub (it never talks to the origin).
    hub.wait_held(after["record_id"])
    spoke.wait_held(after["record_id"])
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
        assert not spoke.holds(f"forged{seq + 1}")
        assert head(spoke, "origin")[0] == seq
        shown = spoke.json("peers", "show", "origin")
        assert [e["seq"] for e in shown["distrusted_entries"]] == [seq + 1]
    finally:
        rogue.stop()
    # ... and the origin's next entry under the new key still arrives.
    later = origin.publish("--kind", "BULLETIN", "--title", "later", *GREEN)
    spoke.wait_held(later["record_id"])

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


def fast_tls(node: Node, **settings: float) -> None:
    """Shorten the [tls] timings of a node that is not running yet."""
    for key, setting in {"check_interval_s": 0.5, **settings}.items():
        text = (node.home / "node.toml").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key} = "))
        node.edit_config(line, f"{key} = {setting}")


def fingerprint(node: Node) -> str:
    return node.status()["tls"]["fingerprint"]


def pinned_certs(node: Node, center: str) -> list[str]:
    """`fcnode peers show CENTER`'s certificates, by the local API (polled)."""
    return [c["fingerprint"] for c in node.call("ShowPeer", {"center": center})["certificates"]]


def test_tls_renewal_needs_no_admin_at_any_peer(make_node) -> None:
    origin = make_node("origin", start=False)
    fast_tls(origin, switch_after_days=5 / 86400)  # present it 5 s after announcing
    metrics_url = with_metrics(origin)
    origin.start()
    hub = make_node("hub", start=False)
    hub_metrics = with_metrics(hub)
    hub.start()
    spoke = make_node("spoke")
    star(hub, [origin, spoke])
    first = origin.publish("--kind", "BULLETIN", "--title", "before renewal", *GREEN)
    spoke.wait_held(first["record_id"])
    old_fp = fingerprint(origin)

    renewed = origin.json("keys", "rotate", "--tls")
    new_fp = renewed["new_fingerprint"]
    assert new_fp != old_fp
    assert origin.json("status")["tls"]["next"]["fingerprint"] == new_fp
    # Both peers pin the announced certificate beside the card's, the spoke
    # through the hub; nobody ran a command there.
    for peer in (hub, spoke):
        peer.wait_for(lambda p=peer: new_fp in pinned_certs(p, "origin"), 30,
                      "the announced certificate pinned")
    origin.wait_for(lambda: fingerprint(origin) == new_fp, 40, "the renewed certificate used")
    assert parse_card(origin.card()).tls_fingerprint == new_fp
    # The expiry gauges follow the renewal: the origin's own, and the hub's for it.
    new_expiry = keys.cert_expiry_ms((origin.home / "tls.crt").read_bytes()) / 1000
    assert value(scrape(metrics_url)[1], "fcnode_tls_cert_expiry_timestamp_seconds") == \
        new_expiry
    assert value(scrape(hub_metrics)[1], "fcnode_peer_tls_cert_expiry_timestamp_seconds",
                 peer="origin") == new_expiry
    # New handshakes both ways with the new certificate: restart the hub.
    hub.stop()
    hub.start()
    second = origin.publish("--kind", "BULLETIN", "--title", "after renewal", *GREEN)
    hub.wait_held(second["record_id"])
    spoke.wait_held(second["record_id"])
    # (The origin's own link to the hub may still be backing off from the restart:
    # its first query can find the hub unreachable, so it asks until answered.)
    origin.wait_for(lambda: query_ids(origin, "renewal", "--centers", "hub") == {
        first["record_id"]: "FULL", second["record_id"]: "FULL"}, 30, "the hub answers origin")
    hub.wait_for(lambda: query_ids(hub, "renewal", "--centers", "origin") == {
        first["record_id"]: "FULL", second["record_id"]: "FULL"}, 30, "origin answers the hub")
    assert query_ids(spoke, "renewal") == {first["record_id"]: "FULL",
                                           second["record_id"]: "FULL"}


def test_certificate_about_to_expire_is_renewed_automatically(make_node) -> None:
    # The peers first, so that the short life below is spent on the renewal, not
    # on starting daemons.
    hub, spoke = make_node("hub"), make_node("spoke")
    origin = make_node("origin", start=False)
    # A certificate that expires 30 s from now, made before the card is handed
    # out; renewal 22 s before expiry (about 8 s from now, by the periodic check
    # while the network runs), presented 6 s after announcing.
    (origin.home / "tls.key").unlink()
    (origin.home / "tls.crt").unlink()
    keys.generate_tls(origin.home / "tls.key", origin.home / "tls.crt", "origin",
                      days=30 / 86400)
    expires = keys.cert_expiry_ms((origin.home / "tls.crt").read_bytes()) / 1000
    fast_tls(origin, lifetime_days=1.0, renew_before_days=22 / 86400,
             switch_after_days=6 / 86400)
    origin.start()
    star(hub, [origin, spoke])
    old_fp = fingerprint(origin)
    first = origin.publish("--kind", "BULLETIN", "--title", "short lived one", *GREEN)
    spoke.wait_held(first["record_id"])
    assert "TLS certificate expires soon" in origin.log_tail(100_000)

    origin.wait_for(lambda: fingerprint(origin) != old_fp, 90, "automatic renewal")
    new_fp = fingerprint(origin)
    assert new_fp in pinned_certs(hub, "origin")
    spoke.wait_for(lambda: new_fp in pinned_certs(spoke, "origin"), 30, "spoke pins it")
    # Past the old certificate's expiry: fresh handshakes only work with the new one.
    time.sleep(max(0.0, expires - time.time() + 2))
    hub.stop()
    hub.start()
    second = origin.publish("--kind", "BULLETIN", "--title", "short lived two", *GREEN)
    spoke.wait_held(second["record_id"], 60)
    assert {first["record_id"], second["record_id"]} <= spoke.held_record_ids()
    assert query_ids(hub, "short", "--centers", "origin") == {
        first["record_id"]: "FULL", second["record_id"]: "FULL"}


def test_peers_update_distrusts_a_stolen_key_after_a_seq(make_node, tmp_path: Path) -> None:
    victim, receiver = make_node("victim"), make_node("receiver")
    victim.pin(receiver)
    receiver.pin(victim)
    first = victim.publish("--kind", "BULLETIN", "--title", "genuine one", *GREEN)
    receiver.wait_held(first["record_id"])
    stolen = (victim.home / "signing.key").read_bytes()
    # The victim's stream from the receiver is open before the thief acts (it asked
    # for its own log then: what the receiver takes later comes only as a head).
    victim.wait_for(lambda: any(p["center"] == "receiver" and p["state"] == "connected"
                                for p in victim.status().get("peers", [])), 30, "connected")

    # The thief signs seq 2 with the stolen key and gets it to the receiver
    # through a peer of its own: the key is still trusted there, so it is taken.
    seq, prev = head(receiver, "victim")
    assert seq == 1
    rogue = Rogue(tmp_path, "mallory")
    rogue.items = [forged("victim", 2, prev, stolen, "signed by the thief")]
    rogue.serve(receiver.card())
    receiver.ok("peers", "add", rogue.card.line())
    receiver.wait_held("forged2")
    # The running victim hears the receiver's head of its log move beyond its own,
    # asks again and is shown seq 2 signed by its key. Not marked by a restore, it
    # adopts nothing and is held (tests/integration/test_own_log_held.py): the
    # runbook starts there.
    victim.wait_for(lambda: victim.json("status")["own_log"].get("held"), 30, "held")
    assert head(victim, "victim")[0] == 1
    plain = victim.cli("keys", "rotate", "--signing")
    assert plain.returncode == 1 and "own log held" in plain.stderr, plain.stderr

    # Runbook: the victim rotates as stolen (its rotation is seq 2: a fork at the
    # receiver, which quarantines the victim) and hands its new card over out of band
    # with "distrust after 1"; the receiver's administrator runs peers update.
    rotated = victim.json("keys", "rotate", "--signing", "--stolen")
    assert rotated["seq"] == 2
    assert not victim.json("status")["own_log"].get("held")
    assert [e["detail"]["rotation_seq"] for e in victim.json_lines("audit")
            if e["action"] == "recovery.reject"] == [2]
    receiver.wait_for(lambda: any(q["origin"] == "victim" for q in
                                  receiver.status()["quarantined"]), 30, "the fork")
    updated = receiver.json("peers", "update", victim.card(), "--distrust-after", "1")
    assert updated["distrust_after"] == 1 and updated["quarantined_for_review"] == 1
    assert not receiver.holds("forged2")
    # The victim's real seq 2 (its rotation, vouched for by the new key) and what it
    # signs with the new key arrive; the thief's replay is refused and kept for review.
    second = victim.publish("--kind", "BULLETIN", "--title", "genuine two", *GREEN)
    receiver.wait_held(second["record_id"])
    assert not receiver.holds("forged2")
    assert not receiver.json("status")["quarantined"]
    shown = receiver.json("peers", "show", "victim")
    assert [(k["from_seq"], k["until_seq"]) for k in shown["keys"]] == [(1, 1), (2, None)]
    assert [e["seq"] for e in shown["distrusted_entries"]] == [2]
    receiver.wait_for(lambda: any("not valid at this position" in r for s, r in
                                  rejections(receiver, "victim") if s == 2), 30,
                      "the thief's replay refused")
    assert query_ids(victim, "genuine", "--centers", "receiver") == {
        first["record_id"]: "FULL", second["record_id"]: "FULL"}
    rogue.stop()
    # peers.toml keeps the decision; it holds over a restart.
    receiver.stop()
    receiver.start()
    assert receiver.json("peers", "show", "victim")["distrust_after"] == 1
    third = victim.publish("--kind", "BULLETIN", "--title", "genuine three", *GREEN)
    receiver.wait_held(third["record_id"])
    assert not receiver.holds("forged2")


def test_peers_update_works_with_the_daemon_stopped(make_node) -> None:
    alpha, bravo = make_node("alpha"), make_node("bravo", start=False)
    bravo.pin(alpha)  # offline
    alpha.ok("keys", "rotate", "--signing")
    card = alpha.card()
    # Renamed, the card's seal key signature (over the center id) no longer holds:
    # drop it (an older card's form) so that the card parses and names nobody pinned.
    r = bravo.cli("peers", "update", "/".join(card.replace("alpha", "nobody", 1).split("/")[:8]))
    assert r.returncode != 0 and "no pinned peer 'nobody'" in r.stderr
    before = (bravo.home / "peers.toml").read_text()
    r = bravo.cli("peers", "update", card, "--distrust-after", "-1")
    assert r.returncode != 0 and (bravo.home / "peers.toml").read_text() == before
    assert bravo.json("peers", "update", card, "--distrust-after", "3")["distrust_after"] == 3
    assert "after = 3 }]" in (bravo.home / "peers.toml").read_text()
    offline = bravo.json("peers", "show", "alpha")
    assert [(k["from_seq"], k["until_seq"]) for k in offline["keys"]] == [(1, 3), (4, None)]
    bravo.start()
    shown = bravo.json("peers", "show", "alpha")
    assert shown["card"] == card and shown["distrust_after"] == 3
    assert shown["keys"][-1]["key_id"] and shown["keys"][-1]["until_seq"] is None


class _Relay(Rogue):
    """A hostile relay: sends ``items``; once ``later`` is set, ``later_items`` on the
    same stream (a hop may delay: here it times its forgery); then each of ``more``."""

    def __init__(self, root: Path, center: str) -> None:
        import threading
        super().__init__(root, center)
        self.later = threading.Event()
        self.later_items: list[federation_pb2.LogItem] = []
        self.more: list[list[federation_pb2.LogItem]] = []

    async def Replicate(self, request, context):  # type: ignore[no-untyped-def]
        import asyncio
        self.requests.append(request)
        yield federation_pb2.ReplicateBatch(items=self.items)
        while not self.later.is_set():
            await asyncio.sleep(0.1)
        yield federation_pb2.ReplicateBatch(items=self.later_items)
        sent = 0
        while True:
            if len(self.more) > sent:
                yield federation_pb2.ReplicateBatch(items=self.more[sent])
                sent += 1
            await asyncio.sleep(0.1)


def _entries(node: Node, origin: str, seqs: tuple[int, ...]) -> list[federation_pb2.LogItem]:
    """The node's stored entries as a relay would send them (envelope, v2 stub)."""
    with contextlib.closing(node.db()) as conn:
        rows = conn.execute(
            f"SELECT seq, hash, payload, signature, key_id, stub FROM entries WHERE origin = ? "
            f"AND seq IN ({','.join('?' * len(seqs))}) ORDER BY seq", (origin, *seqs)).fetchall()
    return [federation_pb2.LogItem(origin=origin, seq=q, hash=h, envelope=records_pb2.Envelope(
        payload=p, signature=s, key_id=k, stub=st or b"")) for q, h, p, s, k, st in rows]


def test_a_thief_cannot_take_the_vouched_rotation_slot(make_node, tmp_path: Path) -> None:
    """Attack on the stolen-key runbook: after `peers update --distrust-after 1` the
    old key's entry at 2 is taken when the new key vouches for it. The new key's
    signature covered only (origin, seq, old key, new key), public once the center
    published its rotation: a thief with the old key, relaying to the receiver, wrapped
    it in an entry of its own at seq 2. The receiver took it, and the center's real
    seq 2 was then a fork: the center quarantined again, the runbook defeated. Now the
    new key also signs the whole entry (new_key_entry_signature); a copy with any field
    changed is refused, an unchanged copy is the center's own entry."""
    victim, receiver = make_node("victim"), make_node("receiver")
    receiver.pin(victim, connect=False)  # the victim's log reaches it only through a relay
    first = victim.publish("--kind", "BULLETIN", "--title", "genuine one", *GREEN)
    stolen = (victim.home / "signing.key").read_bytes()
    relay = _Relay(tmp_path, "mallory")
    relay.items = _entries(victim, "victim", (1,))
    relay.serve(receiver.card())
    receiver.ok("peers", "add", relay.card.line())
    receiver.wait_held(first["record_id"])

    assert victim.json("keys", "rotate", "--signing")["seq"] == 2
    real = records_pb2.RecordBody.FromString(_entries(victim, "victim", (2,))[0].envelope.payload)
    body = records_pb2.RecordBody()
    body.CopyFrom(real)  # the new key's signatures, copied from the published rotation
    body.title = "the thief's own seq 2"
    key = serialization.load_pem_private_key(stolen, password=None)
    env = seal_record(key, body)  # type: ignore[arg-type]
    relay.later_items = [federation_pb2.LogItem(origin="victim", seq=2,
                                                hash=entry_hash(env.payload), envelope=env)]
    receiver.ok("peers", "update", victim.card(), "--distrust-after", "1")
    relay.later.set()
    receiver.wait_for(lambda: any(s == 2 for s, _ in rejections(receiver, "victim"))
                      or head(receiver, "victim")[0] == 2, 30, "the forged seq 2")
    assert head(receiver, "victim")[0] == 1, "the thief's seq 2 was taken"
    assert any(s == 2 and "not valid at this position" in r
               for s, r in rejections(receiver, "victim"))
    # The center's real rotation and its next entry arrive: no fork, nothing quarantined.
    second = victim.publish("--kind", "BULLETIN", "--title", "genuine two", *GREEN)
    relay.more.append(_entries(victim, "victim", (2, 3)))
    receiver.wait_held(second["record_id"])
    assert not receiver.json("status")["quarantined"]
    relay.stop()


def test_a_catch_up_across_a_key_rotation_holds_everything(make_node) -> None:
    """Batches of a catch-up are verified as they arrive, before the ones ahead of
    them are stored: entries signed with a new key in the batches right after the
    rotation's could be refused as signed by an unknown key (review, session 15).
    Checks that failed on a key are made again once the rotation before them is
    stored."""
    origin, late = make_node("origin"), make_node("late", start=False)
    late.pin(origin)  # the card before the rotation, pinned while late is stopped
    origin.pin(late)
    drafts = [{"kind": "BULLETIN", "title": f"before {i}",
               "policy": {"tlp": "GREEN", "audience": ["members"]}} for i in range(700)]
    origin.publish_drafts(drafts)
    origin.json("keys", "rotate", "--signing")
    origin.publish_drafts([{**d, "title": f"after {i}"} for i, d in enumerate(drafts)])
    head = origin.json("status")["own_log"]["head"]
    late.start()
    late.wait_for(lambda: late.head("origin") >= head, 60, "the whole log after the rotation")
    assert not [r for s, r in rejections(late, "origin")]
    assert late.active("origin") == 1400
