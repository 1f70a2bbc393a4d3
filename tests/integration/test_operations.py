"""Operating a node: backups while the daemon runs (and while it is stopped),
peer edits on a stopped node, --version. Real daemons, real files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import tarfile
import threading
from pathlib import Path

from node.devnet import Node, run_cli


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records_in(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r[0] for r in conn.execute("SELECT record_id FROM records")}


def _own_head(path: Path, center: str) -> tuple[int, str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        seq, digest = conn.execute("SELECT seq, hash FROM entries WHERE origin = ? "
                                   "ORDER BY seq DESC LIMIT 1", (center,)).fetchone()
    return seq, digest.hex()


def _secrets(node: Node) -> list[bytes]:
    """The private halves of the keys, as they sit on disk (PEM bodies)."""
    out = []
    for name in ("signing.key", "tls.key"):
        lines = (node.home / name).read_bytes().splitlines()
        out += [line for line in lines if line and not line.startswith(b"-----")]
    return out


def test_backup_while_publishing(make_node, tmp_path: Path) -> None:
    node = make_node("ncric")
    node.add_user("ortiz", "sworn_le")
    before = {node.publish("--kind", "BULLETIN", "--title", f"before {i}", "--tlp", "GREEN")
              ["record_id"] for i in range(5)}
    stop = threading.Event()
    during: list[str] = []

    def publish_loop() -> None:
        while not stop.is_set():
            during.append(node.publish("--kind", "BULLETIN", "--title", "during")["record_id"])

    writer = threading.Thread(target=publish_loop)
    writer.start()
    try:
        node.wait_for(lambda: len(during) >= 1, what="the publisher to start")
        target = tmp_path / "backups" / "ncric.db"
        target.parent.mkdir()
        out = node.json("backup", str(target))
        second = node.json("backup", str(tmp_path / "backups" / "again.db"))
    finally:
        stop.set()
        writer.join()
    assert during, "the publisher never ran alongside the backup"
    # A consistent copy: opens, passes integrity_check, holds what was published before.
    assert target.stat().st_mode & 0o777 == 0o600
    assert out["sha256"] == _sha256(target) and out["size"] == target.stat().st_size
    held = _records_in(target)
    assert before <= held and len(held) == out["records"]
    assert out["own_head"] == dict(zip(("seq", "hash"), _own_head(target, "ncric"),
                                       strict=True))
    assert out["own_head"]["seq"] >= 5 and out["format"] == "sqlite" and not out["keys"]
    assert second["own_head"]["seq"] >= out["own_head"]["seq"]
    # No key material without --include-keys; no temporary files left behind.
    data = target.read_bytes()
    assert data.startswith(b"SQLite format 3\x00")
    assert not any(s in data for s in _secrets(node))
    assert sorted(p.name for p in target.parent.iterdir()) == ["again.db", "ncric.db"]
    # Never over an existing file without --force; a reader may not back up.
    refused = node.cli("backup", str(target))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert _sha256(target) == out["sha256"]
    denied = node.cli("backup", str(tmp_path / "backups" / "x.db"), user="ortiz")
    assert denied.returncode == 1 and "admin" in denied.stderr
    assert not (tmp_path / "backups" / "x.db").exists()
    forced = node.json("backup", str(target), "--force")
    assert forced["sha256"] == _sha256(target)
    audit = node.json_lines("audit")
    backups = [e for e in audit if e["action"] == "node.backup"]
    assert len(backups) == 3 and backups[-1]["actor"] == "admin"
    assert backups[-1]["detail"]["sha256"] == forced["sha256"]


def test_backup_with_keys_and_on_a_stopped_node(make_node, tmp_path: Path) -> None:
    node = make_node("nysic")
    rid = node.publish("--kind", "BULLETIN", "--title", "kept")["record_id"]
    bundle = tmp_path / "nysic.tar"
    out = node.json("backup", str(bundle), "--include-keys")
    assert out["format"] == "tar" and out["keys"] and out["sha256"] == _sha256(bundle)
    assert bundle.stat().st_mode & 0o777 == 0o600
    with tarfile.open(bundle) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"MANIFEST.json", "node.db", "node.toml", "peers.toml",
                                "signing.key", "tls.key", "tls.crt", "encryption.key"}
        assert all(m.mode == 0o600 for m in members.values())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        for name in ("signing.key", "tls.key", "tls.crt", "encryption.key", "node.toml"):
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert data == (node.home / name).read_bytes()
            assert manifest["files"][name] == hashlib.sha256(data).hexdigest()
        db = tar.extractfile("node.db").read()  # type: ignore[union-attr]
    assert manifest["own_head"]["seq"] == out["own_head"]["seq"] == 1
    copy = tmp_path / "from-tar.db"
    copy.write_bytes(db)
    assert rid in _records_in(copy)

    node.stop()
    offline = tmp_path / "offline.db"
    r = node.cli("backup", str(offline), "--json")  # no daemon: straight from the file
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sha256"] == _sha256(offline)
    assert rid in _records_in(offline) and offline.stat().st_mode & 0o777 == 0o600
    node.start()
    last = node.json_lines("audit")[-3:]
    assert [e["action"] for e in last if e["action"] == "node.backup"]
    assert any(e["actor"].startswith("offline:") for e in last)
    assert node.json("audit", "verify")["ok"]


def test_bad_backup_targets_are_refused(make_node, tmp_path: Path) -> None:
    node = make_node("ffc")
    missing = node.cli("backup", str(tmp_path / "nowhere" / "x.db"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    own = node.cli("backup", str(node.home / "node.db"), "--force")
    assert own.returncode == 2 and "own files" in own.stderr
    assert node.json("status")["center"] == "ffc"


def test_peers_edited_on_stopped_nodes_apply_at_start(make_node, tmp_path: Path) -> None:
    a, b = make_node("ncric", start=False), make_node("nysic", start=False)
    # Provision both nodes before their first start: no daemon, no credential needed.
    for node, other in ((a, b), (b, a)):
        r = run_cli("peers", "add", other.card(), "--home", str(node.home), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["center"] == other.center
    listed = run_cli("peers", "list", "--home", str(a.home), "--json")
    assert [json.loads(line)["center"] for line in listed.stdout.splitlines()] == ["nysic"]
    assert (a.home / "peers.toml").stat().st_mode & 0o777 == 0o600
    # Bad input: refused with the reason, peers.toml untouched.
    before = (a.home / "peers.toml").read_bytes()
    bad = run_cli("peers", "add", "fcnode1/garbage", "--home", str(a.home))
    assert bad.returncode == 2 and "identity card" in bad.stderr
    self_pin = run_cli("peers", "add", a.card(), "--home", str(a.home))
    assert self_pin.returncode == 2 and "own identity card" in self_pin.stderr
    gone = run_cli("peers", "remove", "ffc", "--home", str(a.home))
    assert gone.returncode == 1 and "no pinned peer 'ffc'" in gone.stderr
    assert (a.home / "peers.toml").read_bytes() == before
    assert not list(a.home.glob("*.tmp"))

    a.start()
    b.start()
    rid = a.publish("--kind", "BULLETIN", "--title", "provisioned", "--tlp", "GREEN",
                    "--audience", "members")["record_id"]
    b.wait_for(lambda: rid in b.held_record_ids(), what="replication after offline pinning")
    peers = {p["center"]: p for p in b.json_lines("peers", "list")}
    assert peers["ncric"]["state"] == "connected"
    audit = b.json_lines("audit")
    added = [e for e in audit if e["action"] == "peer.add"]
    assert added and added[0]["actor"].startswith("offline:")

    # Remove offline: after a restart the peer is gone and its calls are refused.
    b.stop()
    r = run_cli("peers", "remove", "ncric", "--home", str(b.home))
    assert r.returncode == 0 and "removed peer ncric" in r.stdout
    assert run_cli("peers", "list", "--home", str(b.home), "--json").stdout == ""
    b.start()
    assert b.json_lines("peers", "list") == []
    assert b.json("audit", "verify")["ok"]


def test_peers_add_while_running_still_goes_through_the_daemon(make_node) -> None:
    a, b = make_node("wsfc"), make_node("lacleartc", start=False)
    r = a.cli("peers", "add", b.card())
    assert r.returncode == 0 and "daemon is stopped" not in r.stdout
    anonymous = run_cli("peers", "add", b.card(), "--home", str(a.home))
    assert anonymous.returncode == 2 and "no credential" in anonymous.stderr


def test_version() -> None:
    from importlib import metadata

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fcnode {metadata.version('fcnode')}"


