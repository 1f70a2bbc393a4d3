"""Padded sealed answers (session 16, red team): an answer part is padded to the
next power of two before it is sealed for the hops it crosses. A part could reach
half the message limit plus one record, so padding could double it past the limit:
the answering center's whole answer (and what it relays) failed on the wire. Real
daemons over mutual TLS."""

from __future__ import annotations

from node.devnet import Node


def test_a_large_padded_answer_still_fits_a_message(make_node) -> None:
    req, hub = make_node("req"), make_node("hub")
    org: Node = make_node("org", start=False)
    # A small message limit: half of it is reached with a few large records.
    org.edit_config("max_message_bytes = 8388608", "max_message_bytes = 1048576")
    org.start()
    for a, b in ((req, hub), (hub, org)):
        a.pin(b)
        b.pin(a)
    req.ok("peers", "add", org.card(), "--no-connect")  # keys only: its sealed answer
    org.ok("peers", "add", req.card(), "--no-connect")  # keys only: the signed query
    narrative = "n" * 60_000
    for i in range(12):  # 12 x 60 KB: more than half of 1 MiB in one part
        org.publish("--kind", "BULLETIN", "--title", f"large {i}", "--narrative", narrative,
                    "--entity", "plate=PAD 77", "--tlp", "AMBER", "--audience", "org",
                    "--discoverability", "open")
    lines = req.json_lines("query", "--entity", "plate=PAD 77", "--timeout", "15s")
    summary = lines[-1]["summary"]
    assert summary["org"]["status"] == "answered", summary
    assert summary["org"]["results"] == 12, summary
