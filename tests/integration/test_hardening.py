"""configs/fcnode.service asks systemd for MemoryDenyWriteExecute=,
RestrictAddressFamilies= and LockPersonality=. systemd cannot run here, so the
same kernel restrictions are applied by tests/integration/hardening.py and two
daemons must replicate, answer a federated query, back up and serve metrics
under them (gRPC's C core, cryptography and SQLite included)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from node.devnet import Node, free_port, mesh

WRAPPER = Path(__file__).with_name("hardening.py")
UNIT = Path(__file__).resolve().parents[2] / "configs" / "fcnode.service"


def run_wrapped(mode: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(WRAPPER), mode, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("mode", ["seccomp", "mdwe"])
def test_daemons_work_under_the_units_restrictions(mode: str, tmp_path: Path) -> None:
    # The restrictions are really in force in a wrapped process...
    wx = run_wrapped(mode, "import mmap; mmap.mmap(-1, 4096, prot=7)")
    assert wx.returncode != 0 and ("PermissionError" in wx.stderr), wx.stderr
    if mode == "seccomp":
        netlink = run_wrapped(mode, "import socket; socket.socket(16, socket.SOCK_RAW)")
        assert "Address family not supported" in netlink.stderr, netlink.stderr
    # ...and the daemon does everything it does under them.
    wrapper = [sys.executable, str(WRAPPER), mode]  # the daemon runs under the wrapper
    a, b = Node(tmp_path, "ncric"), Node(tmp_path, "nysic")
    port = free_port()
    a.edit_config('# listen = "127.0.0.1:9464"', f'listen = "127.0.0.1:{port}"')
    try:
        a.start(prefix=wrapper)
        b.start(prefix=wrapper)
        if mode == "seccomp":  # the daemon itself runs filtered (the wrapper exec'd it)
            assert "Seccomp:\t2" in Path(f"/proc/{a.proc.pid}/status").read_text()  # type: ignore[union-attr]
        mesh(a, b)
        rid = a.publish("--kind", "BULLETIN", "--title", "w^x", "--tlp", "GREEN", "--audience",
                        "members", "--entity", "plate=WX123")["record_id"]
        b.wait_for(lambda: rid in b.held_record_ids(), what="replication")
        answers = b.json_lines("query", "--entity", "plate=WX123")
        assert any(r.get("record_id") == rid for r in answers)
        assert answers[-1]["summary"]["ncric"]["status"] == "answered"
        assert a.json("backup", str(tmp_path / "ncric.db"))["own_head"]["seq"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            assert b"fcnode_entries_published_total 1.0" in page.read()
    finally:
        a.stop()
        b.stop()
    for node in (a, b):
        assert "Traceback" not in node.log_tail(20000)


def test_unit_asks_for_the_hardening_that_was_tried() -> None:
    text = UNIT.read_text()
    settings = {line.split("=", 1)[0] for line in text.splitlines()
                if line and not line.startswith(("#", "["))}
    assert {"MemoryDenyWriteExecute", "RestrictAddressFamilies", "LockPersonality",
            "SystemCallArchitectures", "ProtectKernelTunables", "ReadWritePaths"} <= settings
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in text
    assert (UNIT.parent / "fcnode.service.d" / "override.conf.example").exists()
