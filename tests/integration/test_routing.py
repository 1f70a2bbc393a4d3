"""Issue 12 items 4 and 5: routing rules widen the audience at publish; ISE-SAR
behaviour codes are validated, filtered, and never part of a pointer."""

from __future__ import annotations

from pathlib import Path

from node.devnet import Node, run_cli

RULE = """
[[routing]]
name = "terrorism-to-jttf"
when = { kind = "TIP", label = "nexus:terrorism" }
add_audience = ["jttf"]
"""


def test_routing_rule_sends_terrorism_tips_to_the_jttf(make_node, tmp_path: Path) -> None:
    origin = make_node("ncric", start=False)
    jttf, other = make_node("jttf"), make_node("nysic")
    for peer in (jttf, other):
        origin.ok("peers", "add", peer.card())  # offline edit: the daemon is stopped
        peer.pin(origin)
    (origin.home / "node.toml").write_text((origin.home / "node.toml").read_text() + RULE)
    origin.start()

    tip = origin.publish("--kind", "TIP", "--title", "Caller reports pipe bombs",
                         "--label", "nexus:terrorism", "--justification", "caller's account",
                         "--tlp", "AMBER", "--entity", "phone=555-700-1000")
    assert tip["routing"] == ["terrorism-to-jttf"] and tip["audience"] == ["jttf"]
    plain = origin.publish("--kind", "TIP", "--title", "Burglary ring", "--label", "burglary",
                           "--justification", "pattern", "--tlp", "AMBER")
    assert "routing" not in plain
    text = origin.ok("publish", "--kind", "TIP", "--title", "Second terrorism tip", "--label",
                     "nexus:terrorism", "--justification", "x", "--audience", "nysic")
    assert "routed by rule(s) terrorism-to-jttf" in text and "jttf, nysic" in text

    jttf.wait_for(lambda: tip["record_id"] in jttf.held_record_ids(), 20, "routed tip")
    jttf.wait_for(lambda: len(jttf.held_record_ids()) == 2, 20, "second routed tip")
    assert plain["record_id"] not in jttf.held_record_ids()
    assert tip["record_id"] not in other.held_record_ids()
    rows = origin.json_lines("disseminations", tip["record_id"])
    assert [(r["center"], r["decision"]) for r in rows] == [("jttf", "FULL")]
    audit = [e for e in origin.json_lines("audit") if e["action"] == "record.publish"]
    by_id = {e["detail"]["record_id"]: e["detail"] for e in audit}
    assert by_id[tip["record_id"]]["routing"] == ["terrorism-to-jttf"]
    assert "routing" not in by_id[plain["record_id"]]


def test_a_rule_naming_an_unknown_center_is_refused_at_load(tmp_path: Path) -> None:
    node = Node(tmp_path, "ncric")
    (node.home / "node.toml").write_text((node.home / "node.toml").read_text() + RULE)
    r = run_cli("serve", "--home", str(node.home), timeout=30)
    assert r.returncode != 0
    assert "terrorism-to-jttf" in r.stderr and "unknown center 'jttf'" in r.stderr
    bad = RULE.replace('kind = "TIP"', 'kind = "MEMO"')
    (node.home / "node.toml").write_text((node.home / "node.toml").read_text()
                                         .replace(RULE, bad))
    r = run_cli("serve", "--home", str(node.home), timeout=30)
    assert r.returncode != 0 and "unknown kind 'MEMO'" in r.stderr


def test_behaviour_codes_are_validated_filtered_and_never_in_a_pointer(make_node) -> None:
    a, b = make_node("alpha"), make_node("bravo")
    a.pin(b)
    b.pin(a)
    b.add_user("reader", "sworn_le")
    r = a.cli("publish", "--kind", "SAR", "--title", "x", "--justification", "y",
              "--behavior", "LOITER")
    assert r.returncode == 2 and "unknown behavior 'LOITER'" in r.stderr and "SURVL" in r.stderr
    survl = a.publish("--kind", "SAR", "--title", "Man photographing the substation",
                      "--justification", "observed by a guard", "--behavior", "survl",
                      "--behavior", "PHOTO", "--entity", "plate=BHV 100", "--audience",
                      "members", "--tlp", "GREEN")
    other = a.publish("--kind", "SAR", "--title", "Stolen uniforms", "--justification", "report",
                      "--behavior", "THEFT", "--entity", "plate=BHV 100", "--audience",
                      "members", "--tlp", "GREEN")
    # An origin-only record: bravo may only learn of it through a pointer.
    hidden = a.publish("--kind", "SAR", "--title", "Hidden", "--justification", "j",
                       "--behavior", "SURVL", "--entity", "plate=BHV 100", "--tlp", "AMBER")
    got = {x["record_id"] for x in a.json_lines("search", "--behavior", "SURVL")}
    assert got == {survl["record_id"], hidden["record_id"]}
    got = {x["record_id"] for x in a.json_lines("search", "--behavior", "PHOTO",
                                                "--behavior", "SURVL")}
    assert got == {survl["record_id"]}
    assert a.json("get", survl["record_id"])["behaviors"] == ["SURVL", "PHOTO"]
    r = a.cli("search", "--behavior", "nope")
    assert r.returncode == 2 and "unknown behavior 'NOPE'" in r.stderr
    b.wait_for(lambda: {survl["record_id"], other["record_id"]} <= b.held_record_ids(), 20,
               "replication")
    lines = b.json_lines("query", "--entity", "plate=BHV 100", "--behavior", "THEFT",
                         user="reader")
    results = {x["record_id"]: x for x in lines[:-1]}
    # THEFT finds the readable THEFT record; the behaviour filter never hides (or
    # finds) the pointer, which carries no behaviour codes.
    assert results[other["record_id"]]["access"] == "FULL"
    assert survl["record_id"] not in results
    assert results[hidden["record_id"]]["access"] == "POINTER"
    assert "behaviors" not in results[hidden["record_id"]]
    assert b"SURVL" not in repr(results[hidden["record_id"]]).encode()
