"""Issue 3 (resilience, operations): a dead or silent peer blocks nothing; peer
files are validated on reload; standard gRPC tools work on both listeners; the
local socket works from a home too deep for a Unix socket path."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node.config.home import Home
from node.devnet import Node
from tests.integration.rogue import Rogue


class BlackHole:
    """Accepts TCP connections and never says a word (a hung peer)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_silent_peer_blocks_neither_publishing_nor_search_nor_other_peers(
        make_node, tmp_path: Path) -> None:
    a, b = make_node("alpha"), make_node("bravo")
    silent = Rogue(tmp_path, "silent")
    hole = BlackHole(silent.port)
    try:
        a.ok("peers", "add", silent.card.line())
        a.pin(b)
        b.pin(a)
        started = time.monotonic()
        ids = [a.publish("--kind", "BULLETIN", "--title", f"bulletin {i}", "--audience",
                         "members")["record_id"] for i in range(10)]
        publish_s = time.monotonic() - started
        b.wait_for(lambda: set(ids) <= b.held_record_ids(), 20, "replication to bravo")
        assert len(a.json_lines("search", "bulletin")) == 10
        lines = a.json_lines("query", "bulletin", "--timeout", "1500ms")
        summary = lines[-1]["summary"]
        assert summary["silent"]["status"] in ("timed out", "unreachable")
        assert summary["bravo"]["status"] == "answered"
        assert summary["silent"]["ms"] < 3000
        # Ten publishes through the CLI while a peer hangs: each is a CLI process
        # start (~0.3 s), not a wait on the peer.
        assert publish_s < 20
        peers = {p["center"]: p["state"] for p in a.json("status")["peers"]}
        assert peers["bravo"] == "connected" and peers["silent"] != "connected"
    finally:
        hole.close()


def test_a_second_node_on_a_taken_federation_address_refuses_to_start(make_node) -> None:
    first = make_node("alpha")
    second = make_node("bravo", start=False)
    second.edit_config(second.listen, first.listen)
    r = second.cli("serve")
    assert r.returncode != 0 and f"cannot listen on {first.listen}" in r.stderr
    assert first.json("status")["center"] == "alpha"


def test_hand_edited_peers_file_is_validated_on_reload(make_node) -> None:
    a, b = make_node("alpha"), make_node("bravo")
    a.pin(b)
    peers_file = a.home / "peers.toml"
    good = peers_file.read_text()
    peers_file.write_text(good.replace('card = "fcnode1/bravo/', 'card = "fcnode1/bravo-x/'))
    a.proc.send_signal(1)
    a.wait_for(lambda: "reload refused" in a.log_tail(), 10, "reload refusal in the log")
    refusal = next(x for x in a.log_tail().splitlines() if "reload refused" in x)
    # The renamed card's signed seal key no longer verifies (its statement names
    # the center); a card without one would not match its entry's name.
    assert "bravo-x" in refusal and ("does not verify" in refusal or "not match" in refusal)
    assert [p["center"] for p in a.json_lines("peers", "list")] == ["bravo"]
    # Removing the entry by hand and reloading unpins it in the running daemon.
    peers_file.write_text("# emptied by hand\n")
    a.proc.send_signal(1)
    a.wait_for(lambda: a.call("ListPeers") == [], 10, "peer removed by reload")
    bad = a.cli("peers", "add", "fcnode1/broken")
    assert bad.returncode == 2 and "not an fcnode identity card" in bad.stderr
    own = a.cli("peers", "add", a.card())
    assert own.returncode == 2 and "own identity card" in own.stderr


def _services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    return {s.name for r in replies for s in r.list_services_response.service}


def test_health_and_reflection_on_both_listeners(make_node, tmp_path: Path) -> None:
    node = make_node("alpha")
    with grpc.insecure_channel(f"unix:{node.home / 'fcnode.sock'}") as ch:
        local = _services(ch)
    assert {"fcnode.v1.Local", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= local
    friend = Rogue(tmp_path, "friend")
    node.ok("peers", "add", friend.card.line())
    with friend.channel(node.listen, node.card()) as ch:
        remote = _services(ch)
    assert {"fcnode.v1.Federation", "grpc.health.v1.Health"} <= remote
    assert "fcnode.v1.Local" not in remote


def test_home_too_deep_for_a_unix_socket_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    node = Node(deep, "deep")
    try:
        node.start()
        assert len(str(node.home / "fcnode.sock")) > 107
        assert node.json("status")["center"] == "deep"
        assert not (node.home / "fcnode.sock").exists()
        # The short runtime directory must stay private: opened up, it is refused.
        runtime = Home(node.home).socket.parent
        os.chmod(runtime, 0o777)
        try:
            r = node.cli("status")
            assert r.returncode != 0 and "is not private" in r.stderr
        finally:
            os.chmod(runtime, 0o700)
    finally:
        node.stop()
