"""Local networks of real nodes, for the demo, the integration tests and the
benchmarks: each node is its own home and its own `fcnode serve` process,
driven through the CLI as a user would, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
ENV.pop("FCNODE_HOME", None)
ENV.pop("FCNODE_TOKEN", None)


class DevnetError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, token: str | None = None, home: Path | None = None,
            stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(ENV)
    if token:
        env["FCNODE_TOKEN"] = token
    if home is not None:
        env["FCNODE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "node.cli.main", *args], env=env,
                          capture_output=True, text=True, input=stdin, timeout=timeout)


class Node:
    def __init__(self, root: Path, center: str, name: str | None = None) -> None:
        self.center = center
        self.home = root / center
        self.port = free_port()
        self.listen = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = root / f"{center}.log"
        r = run_cli("init", "--home", str(self.home), "--center", center, "--name",
                    name or f"{center.upper()} fusion center", "--listen", self.listen, "--json")
        if r.returncode != 0:
            raise DevnetError(f"fcnode init {center}: {r.stderr.strip()}")
        self.token: str = json.loads(r.stdout)["admin_token"]
        self.tokens: dict[str, str] = {"admin": self.token}

    # -- process -------------------------------------------------------------
    def start(self, wait: bool = True) -> Node:
        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "serve", "--home", str(self.home)],
            env=ENV, stdout=log, stderr=log, text=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DevnetError(f"{self.center} daemon exited: {self.log_tail()}")
            if self.cli("status", "--json").returncode == 0:
                return
            time.sleep(0.1)
        raise DevnetError(f"{self.center} daemon not ready: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text()[-n:] if self.log_path.exists() else ""

    def edit_config(self, old: str, new: str) -> None:
        """Change node.toml by text (the daemon reads it at start and on SIGHUP)."""
        path = self.home / "node.toml"
        text = path.read_text()
        if old not in text:
            raise DevnetError(f"{self.center}: {old!r} is not in {path}")
        path.write_text(text.replace(old, new))

    # -- CLI -------------------------------------------------------------------
    def cli(self, *args: str, user: str = "admin", stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--home", str(self.home), token=self.tokens[user], stdin=stdin)

    def ok(self, *args: str, user: str = "admin", stdin: str | None = None) -> str:
        r = self.cli(*args, user=user, stdin=stdin)
        if r.returncode != 0:
            raise DevnetError(f"{self.center}: fcnode {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def json(self, *args: str, user: str = "admin") -> Any:
        return json.loads(self.ok(*args, "--json", user=user))

    def json_lines(self, *args: str, user: str = "admin") -> list[Any]:
        return [json.loads(line) for line in self.ok(*args, "--json", user=user).splitlines()
                if line.strip()]

    def add_user(self, name: str, *attrs: str, admin: bool = False) -> str:
        args = ["users", "add", name, *[a for attr in attrs for a in ("--attr", attr)]]
        if admin:
            args.append("--admin")
        self.tokens[name] = self.json(*args)["token"]
        return self.tokens[name]

    def publish(self, *args: str, user: str = "admin") -> dict[str, Any]:
        return self.json("publish", *args, user=user)

    def card(self) -> str:
        return self.ok("identity").strip()

    def pin(self, other: Node, *extra: str) -> None:
        self.ok("peers", "add", other.card(), *extra)

    # -- database (tests assert on the file itself, not only on the CLI) ---------
    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'node.db'}?mode=ro", uri=True)

    def held_record_ids(self) -> set[str]:
        """Records whose content (some version) this node's database holds."""
        with contextlib.closing(self.db()) as conn:
            return {r[0] for r in conn.execute(
                "SELECT record_id FROM entries WHERE payload IS NOT NULL "
                "AND kind NOT IN ('RETRACTION', 'PURGE')")}

    def wait_for(self, predicate: Any, timeout: float = 20, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise DevnetError(f"{self.center}: timed out waiting for {what or predicate}")


def star(hub: Node, spokes: list[Node]) -> None:
    """Spokes dial only the hub; they pin each other's keys without dialling, so
    what the hub relays from one spoke verifies at the others."""
    for s in spokes:
        hub.pin(s)
        s.pin(hub)
        for other in spokes:
            if other is not s:
                s.pin(other, "--no-connect")


def mesh(*nodes: Node) -> None:
    """Pin every node at every other (both directions)."""
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.pin(b)
