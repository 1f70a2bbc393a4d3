"""Issue 2: one center's node, driven through the CLI against a real daemon."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import stat
from pathlib import Path

from node.config.identity import parse_card
from node.devnet import Node, run_cli


def test_init_creates_a_complete_home_and_refuses_to_overwrite(tmp_path: Path) -> None:
    # `fcnode init` as an administrator runs it (devnet's nodes call init_node in-process).
    node = Node(tmp_path, "ncric", init=False)
    r = run_cli("init", "--home", str(node.home), "--center", "ncric", "--name", "NCRIC",
                "--listen", node.listen, "--json")
    assert r.returncode == 0, r.stderr
    node.token = node.tokens["admin"] = json.loads(r.stdout)["admin_token"]
    assert node.token.startswith("admin:")
    for key in ("signing.key", "tls.key"):
        assert stat.S_IMODE((node.home / key).stat().st_mode) == 0o600
    for name in ("node.toml", "peers.toml", "tls.crt", "node.db"):
        assert (node.home / name).exists()
    again = run_cli("init", "--home", str(node.home), "--center", "ncric", "--name", "X",
                    "--listen", "127.0.0.1:1")
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr
    card = parse_card(node.ok("identity").strip())
    assert (card.center, card.address) == ("ncric", node.listen)
    ident = node.json("identity")
    assert ident["tls_fingerprint"] == card.tls_fingerprint and ident["center"] == "ncric"


def test_init_rejects_bad_center_and_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "bad"
    r = run_cli("init", "--home", str(home), "--center", "Bad_ID", "--name", "x",
                "--listen", "127.0.0.1:7000")
    assert r.returncode == 2 and "invalid center id" in r.stderr
    assert not home.exists()


def test_home_from_environment(make_node) -> None:
    node = make_node("envhome")
    r = run_cli("status", "--json", token=node.token, home=node.home)
    assert r.returncode == 0 and json.loads(r.stdout)["center"] == "envhome"


def test_serve_status_single_instance_and_clean_shutdown(make_node) -> None:
    node = make_node("nysic")
    status = node.json("status")
    assert status["center"] == "nysic" and status["storage"].endswith("node.db")
    second = node.cli("serve")
    assert second.returncode != 0 and "already running" in second.stderr
    assert node.stop(signal.SIGTERM) == 0
    down = node.cli("status")
    assert down.returncode == 3 and "no fcnode daemon is running" in down.stderr
    logs = [json.loads(line) for line in node.log_path.read_text().splitlines()
            if line.startswith("{")]
    assert {"serving", "stopped"} <= {entry["event"] for entry in logs}


def test_sighup_reloads_groups(make_node) -> None:
    node = make_node("ffc")
    bad = node.cli("publish", "--kind", "BULLETIN", "--title", "t", "--audience", "region:se")
    assert bad.returncode != 0 and "unknown group 'region:se'" in bad.stderr
    node.edit_config("[groups]", '[groups]\n"region:se" = ["ffc"]')
    node.send_signal(signal.SIGHUP)
    node.wait_for(lambda: node.cli("publish", "--kind", "BULLETIN", "--title", "t",
                                   "--audience", "region:se").returncode == 0, 10,
                  "the reloaded group")


def test_publish_get_and_search_under_policy(make_node, tmp_path: Path) -> None:
    node = make_node("ncric")
    node.add_user("officer", "sworn_le", "ntk:narcotics")
    node.add_user("clerk")
    bolo = node.publish("--kind", "BOLO", "--title", "Armed robbery suspect vehicle",
                        "--entity", "plate=7abc-123", "--entity", "person=Doe, John;1980-01-02",
                        "--tlp", "GREEN", "--audience", "members", "--label", "robbery")
    assert set(bolo) >= {"record_id", "origin", "seq", "version"} and bolo["seq"] == 1
    sar = node.publish("--kind", "SAR", "--title", "Narcotics stash house",
                       "--narrative", "Heavy foot traffic at night", "--entity",
                       "phone=(555) 123-4567", "--require", "sworn_le", "--require",
                       "ntk:narcotics", "--justification", "informant report, corroborated")
    record_file = tmp_path / "tip.json"
    record_file.write_text(json.dumps({
        "kind": "TIP", "title": "Caller reports plate 7ABC123 near school",
        "entities": [{"type": "plate", "value": "CA:7ABC123"}],
        "policy": {"tlp": "AMBER", "discoverability": "restricted", "require": ["sworn_le"]},
        "part23": {"justification": "citizen tip", "source_reliability": "C"}}))
    tip = node.json("publish", "--file", str(record_file))
    assert tip["seq"] == 3

    # The plate matches however it was typed; each user sees only what they may.
    officer = node.json_lines("search", "--entity", "plate=7ABC-123", user="officer")
    assert {r["record_id"] for r in officer} == {bolo["record_id"], tip["record_id"]}
    assert all(r["access"] == "FULL" for r in officer)
    for r in officer:
        assert {"record_id", "origin", "kind", "title", "version", "tlp"} <= set(r)
    clerk = node.json_lines("search", "--entity", "plate=7ABC123", user="clerk")
    assert [r["record_id"] for r in clerk] == [bolo["record_id"]]  # TIP is restricted
    phone = node.json_lines("search", "--entity", "phone=+1 555 123 4567", user="clerk")
    assert phone == [{"record_id": sar["record_id"], "origin": "ncric", "kind": "SAR",
                      "access": "POINTER", "contact": "NCRIC fusion center watch desk"}]
    text = node.json_lines("search", "stash", user="officer")
    assert [r["title"] for r in text] == ["Narcotics stash house"]
    assert node.json_lines("search", "--kind", "BOLO", "--since", "1d", user="clerk")
    assert node.json_lines("search", "--label", "robbery", user="clerk")[0]["kind"] == "BOLO"
    assert node.json_lines("search", "--origin", "nysic", user="officer") == []

    full = node.json("get", sar["record_id"], user="officer")
    assert full["narrative"] == "Heavy foot traffic at night"
    assert full["verification"]["valid"] and full["verification"]["chain"] == "linked"
    assert full["verification"]["chain_seq"] == 2 and full["verification"]["signer"] == "ncric"
    withheld = node.json("get", sar["record_id"], user="clerk")
    assert withheld["access"] == "POINTER" and "narrative" not in withheld
    hidden = node.cli("get", tip["record_id"], user="clerk")
    assert hidden.returncode != 0 and "that you may see" in hidden.stderr


def test_get_reports_a_record_tampered_in_the_database(make_node) -> None:
    node = make_node("nctc")
    rec = node.publish("--kind", "BULLETIN", "--title", "Original title", "--audience",
                       "members")
    node.stop()
    with sqlite3.connect(node.home / "node.db") as conn:
        payload = conn.execute("SELECT payload FROM entries WHERE seq = 1").fetchone()[0]
        conn.execute("UPDATE entries SET payload = ? WHERE seq = 1",
                     (payload.replace(b"Original", b"Modified"),))
    node.start()
    r = node.cli("get", rec["record_id"], "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["verification"]["valid"] is False


def test_users_and_credentials(make_node, tmp_path: Path) -> None:
    node = make_node("wsfc")
    added = node.json("users", "add", "ana", "--attr", "sworn_le")
    assert added["user"] == "ana" and added["token"].startswith("ana:")
    node.tokens["ana"] = added["token"]
    listed = node.json_lines("users", "list")
    assert {u["user"] for u in listed} == {"admin", "ana"}
    denied = node.cli("users", "add", "eve", user="ana")
    assert denied.returncode == 1 and "admin role" in denied.stderr
    assert node.cli("audit", user="ana").returncode == 1
    bad = run_cli("status", "--home", str(node.home), token="ana:not-the-secret")
    assert bad.returncode == 1 and "not valid" in bad.stderr
    none = run_cli("status", "--home", str(node.home))
    assert none.returncode == 2 and "FCNODE_TOKEN" in none.stderr
    token_file = tmp_path / "ana.token"
    token_file.write_text(node.tokens["ana"])
    os.chmod(token_file, 0o644)
    loose = run_cli("status", "--home", str(node.home), "--token-file", str(token_file))
    assert loose.returncode == 2 and "must be 0600" in loose.stderr
    os.chmod(token_file, 0o600)
    assert run_cli("status", "--home", str(node.home), "--token-file",
                   str(token_file)).returncode == 0
    typo = node.cli("users", "add", "bad", "--attr", "sworn-le")
    assert typo.returncode != 0 and "unknown attribute" in typo.stderr
    node.ok("users", "remove", "ana")
    gone = node.cli("status", user="ana")
    assert gone.returncode == 1
    last = node.cli("users", "remove", "admin")
    assert last.returncode != 0 and "last admin" in last.stderr


def test_audit_records_actions_and_verify_detects_tampering(make_node) -> None:
    node = make_node("mdfc")
    node.add_user("ana", "sworn_le")
    rec = node.publish("--kind", "BULLETIN", "--title", "Bulletin", "--audience", "members",
                       user="ana")
    node.ok("search", "bulletin", user="ana")
    node.ok("get", rec["record_id"], user="ana")
    entries = node.json_lines("audit")
    actions = [(e["actor"], e["action"]) for e in entries]
    assert ("admin", "user.add") in actions and ("ana", "record.publish") in actions
    assert ("ana", "search") in actions and ("ana", "record.view") in actions
    assert "Bulletin" not in json.dumps(entries)  # no record content in the audit log
    assert node.json("audit", "verify")["ok"] is True

    node.stop()
    with sqlite3.connect(node.home / "node.db") as conn:
        seq = conn.execute("SELECT seq FROM audit WHERE action = 'search'").fetchone()[0]
        conn.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = ?", (seq,))
    node.start()
    r = node.cli("audit", "verify")
    assert r.returncode == 1 and f"entry {seq} (search by someone-else): content was edited" \
        in r.stdout

    node.stop()
    with sqlite3.connect(node.home / "node.db") as conn:
        conn.execute("UPDATE audit SET actor = 'ana' WHERE seq = ?", (seq,))
        conn.execute("DELETE FROM audit WHERE seq = ?", (seq - 1,))
    node.start()
    r = node.cli("audit", "verify")
    assert r.returncode == 1 and f"entries {seq - 1}..{seq - 1} are missing" in r.stdout


def test_status_and_peer_details_are_for_admins_only(make_node) -> None:
    """Issue 8 item 11: record counts, heads, cursors, rejections, quarantine and
    peer details are metadata for admins; an analyst learns which centers are up."""
    a, b = make_node("oscar"), make_node("papa")
    a.pin(b)
    b.pin(a)
    a.add_user("ana", "sworn_le")
    a.publish("--kind", "BOLO", "--title", "Counted record")
    a.wait_for(lambda: any(p["state"] == "connected" for p in a.status()["peers"]),
               20, "papa connected")
    full = a.json("status")
    assert {"records", "heads", "peers", "rejected", "quarantined"} <= set(full)
    seen = a.json("status", user="ana")
    assert set(seen) == {"center", "name", "uptime_s", "connected"}
    assert (seen["center"], seen["connected"]) == ("oscar", ["papa"])
    text = a.ok("status", user="ana")
    assert "papa" in text and "records" not in text and "storage" not in text
    for args in (["peers", "list"], ["peers", "show", "papa"], ["peers", "groups"]):
        r = a.cli(*args, user="ana")
        assert r.returncode == 1 and "needs the admin role" in r.stderr, (args, r.stderr)
        assert a.cli(*args).returncode == 0


def test_a_signing_key_is_pinned_for_one_center_only(make_node) -> None:
    """Issue 8 item 12: a card that carries a key already pinned for another center
    id is refused, by `peers add` and on a peers.toml reload."""
    a, b = make_node("quebec"), make_node("romeo")
    c = make_node("sierra", start=False)
    a.pin(b)
    # Another center's signing key does not carry sierra's seal key signature: these
    # cards have the form of older ones (an unsigned seal key), which parse.
    stolen = dataclasses.replace(parse_card(c.card()), seal_signature=b"",
                                 signing_key=parse_card(b.card()).signing_key)
    r = a.cli("peers", "add", stolen.line())
    assert r.returncode == 2 and "signing key is already pinned for 'romeo'" in r.stderr
    own = dataclasses.replace(parse_card(c.card()), seal_signature=b"",
                              signing_key=parse_card(a.card()).signing_key)
    r = a.cli("peers", "add", own.line())
    assert r.returncode == 2 and "this node's own signing key" in r.stderr
    assert [p["center"] for p in a.json_lines("peers", "list")] == ["romeo"]
    peers_file = a.home / "peers.toml"
    peers_file.write_text(peers_file.read_text() + f'\n[[peer]]\ncard = "{stolen.line()}"\n')
    a.proc.send_signal(signal.SIGHUP)
    a.wait_for(lambda: "reload refused" in a.log_tail(), 10, "reload refusal in the log")
    assert "signing key is already pinned for 'romeo'" in a.log_tail()
    assert [p["center"] for p in a.json_lines("peers", "list")] == ["romeo"]


def test_a_removed_users_name_is_never_reissued(make_node) -> None:
    """Issue 8 item 12: RED named readers and authorship go by name, so a new user
    must never inherit a removed user's name (and with it their records)."""
    node = make_node("tango")
    node.add_user("ana", "sworn_le")
    node.publish("--kind", "BOLO", "--title", "Named reader only", "--tlp", "RED",
                 "--require", "user:tango/ana", user="ana")
    node.ok("users", "remove", "ana")
    again = node.cli("users", "add", "ana", "--attr", "sworn_le")
    assert again.returncode == 2 and "was removed" in again.stderr
    assert {u["user"] for u in node.json_lines("users", "list")} == {"admin"}
    reserved = node.cli("users", "add", "fcnode")
    assert reserved.returncode == 2 and "reserved" in reserved.stderr
    node.stop()
    node.start()  # the removed name survives a restart (it is in the database)
    assert node.cli("users", "add", "ana").returncode == 2
    assert node.json("audit", "verify")["ok"]
def test_every_own_entry_is_published_with_an_origin_signed_stub(make_node) -> None:
    """The stub (content-free, signed at publish) is what proves a recall and what a
    POINTER carries: the origin signs one for each entry, lifecycle entries included."""
    from node.config import keys
    from node.config.home import Home
    from node.core.signing import key_id, open_stub

    node = make_node("stubc")
    rec = node.publish("--kind", "BULLETIN", "--title", "Secret title", "--audience",
                       "members")
    node.ok("retract", rec["record_id"], "--reason", "wrong")
    public = keys.load_signing_key(Home(node.home).signing_key).public_key()
    # v2: the stub is signed by the entry's own signature (no second copy stored).
    rows = node.db().execute("SELECT seq, hash, record_id, version, stub, coalesce("
                             "stub_signature, signature), coalesce(stub_key_id, key_id) "
                             "FROM entries ORDER BY seq").fetchall()
    assert len(rows) == 2
    from node.wire import records_pb2
    for seq, digest, rid, version, stub, sig, kid in rows:
        opened = open_stub(records_pb2.SignedStub(stub=stub, signature=sig, key_id=kid),
                           {key_id(public): public})
        assert (opened.origin, opened.seq, opened.hash, opened.record_id, opened.version) == (
            "stubc", seq, digest, rid, version)
        assert b"Secret" not in stub
