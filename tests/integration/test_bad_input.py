"""Issue 2, bad input: each gets one clear line, a non-zero exit, and nothing
half-written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest


def record_count(node) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*) FROM entries").fetchone()[0]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    (json.dumps({"kind": "RUMOR", "title": "x"}), "unknown kind 'RUMOR'"),
    (json.dumps({"kind": "BOLO"}), "missing required field 'title'"),
    (json.dumps({"kind": "SAR", "title": "x"}), "missing required field 'justification'"),
    (json.dumps({"kind": "BOLO", "title": "x", "narrative": "a" * 70_000}), "larger than"),
    (json.dumps({"kind": "BOLO", "title": "x", "policy": {"tlp": "PURPLE"}}), "invalid TLP"),
    (json.dumps({"kind": "BOLO", "title": "x", "policy": {"audience": ["hidta:none"]}}),
     "unknown group 'hidta:none'"),
    (json.dumps({"kind": "BOLO", "title": "x", "policy": {"audience": ["nobody"]}}),
     "unknown center 'nobody'"),
    (json.dumps({"kind": "BOLO", "title": "x", "colour": "red"}), "unknown field 'colour'"),
    (json.dumps({"kind": "BOLO", "title": "x", "entities": ["phone=12"]}), "not a valid phone"),
    (json.dumps([{"kind": "BOLO", "title": "ok"}, {"kind": "BOLO"}]), "missing required field"),
])
def test_invalid_record_files_are_refused(make_node, tmp_path: Path, content: str,
                                          message: str) -> None:
    node = make_node("ncric")
    path = tmp_path / "record.json"
    path.write_text(content)
    r = node.cli("publish", "--file", str(path))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert record_count(node) == 0


def test_stdin_publish_and_flag_errors(make_node) -> None:
    node = make_node("nysic")
    good = node.ok("publish", "--file", "-", "--json",
                   stdin=json.dumps({"kind": "BULLETIN", "title": "from stdin"}))
    assert json.loads(good)["seq"] == 1
    r = node.cli("publish", "--kind", "BOLO", "--title", "t", "--tlp", "BLUE")
    assert r.returncode == 2 and "invalid TLP 'BLUE'" in r.stderr
    r = node.cli("publish", "--title", "no kind")
    assert r.returncode == 2 and "--kind" in r.stderr
    assert record_count(node) == 1


def test_loose_key_permissions_refuse_to_start(make_node) -> None:
    node = make_node("ffc", start=False)
    os.chmod(node.home / "signing.key", 0o644)
    r = node.cli("serve")
    assert r.returncode != 0
    assert "has mode 0644; it must be 0600" in r.stderr


def test_corrupt_database_refuses_to_start(make_node) -> None:
    node = make_node("wsfc", start=False)
    db = node.home / "node.db"
    data = bytearray(db.read_bytes())
    data[:100] = b"\xff" * 100
    db.write_bytes(bytes(data))
    r = node.cli("serve")
    assert r.returncode != 0 and "corrupt" in r.stderr


def test_locked_database_is_reported_and_nothing_is_written(make_node) -> None:
    node = make_node("mdfc")
    holder = sqlite3.connect(node.home / "node.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = node.cli("publish", "--kind", "BULLETIN", "--title", "blocked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == 1 and "is locked" in r.stderr
    assert record_count(node) == 0
    node.ok("publish", "--kind", "BULLETIN", "--title", "after the lock")
    assert record_count(node) == 1


def test_killed_publish_leaves_all_or_nothing(make_node, tmp_path: Path) -> None:
    node = make_node("nctc")
    batch = [{"kind": "BULLETIN", "title": f"bulk {i}", "entities": [f"phone=555{i:07d}"]}
             for i in range(4000)]
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(batch))
    publisher = node.cli_popen("publish", "--file", str(path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(0.9)  # parsing and sending take a moment; then kill mid-flight
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    node.proc = None
    publisher.wait(30)
    node.start()
    count = record_count(node)
    assert count in (0, 4000)
    assert node.json("audit", "verify")["ok"]
    status = node.json("status")
    assert status["records"].get("nctc", {}).get("active", 0) == count
