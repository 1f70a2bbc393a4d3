"""Local networks of real nodes, the one place that manages daemons for the demo,
the integration tests and the benchmarks: each node is its own home and its own
`fcnode serve` process on 127.0.0.1 only.

A test drives a node through the CLI as a user would (`cli`, `ok`, `json`,
`publish`); set-up steps that only need their result (init, the identity card,
pinning a running node, adding a user) and polling run in this process (the
local API through `call`, the database file read-only through `db`), so that
no test pays a Python start-up per poll. `Network` holds the nodes of one run
and stops all their daemons together.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from node.cli.client import Client, CliError
from node.config.home import Home, load_config
from node.config.init import init_node, own_card

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # every devnet daemon listens on loopback only


def _child_env() -> dict[str, str]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    env.pop("FCNODE_HOME", None)
    env.pop("FCNODE_TOKEN", None)
    # The daemons and CLI calls import this checkout, installed or not.
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    # A test run starts hundreds of short-lived interpreters; without a bytecode
    # cache each one compiles every module again (~0.1-0.2 s of CPU each). Where
    # writing bytecode is switched off (usually to keep the source tree clean),
    # cache it outside the tree instead: in the interpreter's own prefix (the
    # virtualenv), never a shared /tmp directory where another user could plant
    # bytecode. Python checks each cached file against its source.
    if env.get("PYTHONDONTWRITEBYTECODE") and not env.get("PYTHONPYCACHEPREFIX"):
        env.pop("PYTHONDONTWRITEBYTECODE")
        env["PYTHONPYCACHEPREFIX"] = str(Path(sys.prefix) / "fcnode-pycache")
    return env


ENV = _child_env()

_PR_SET_PDEATHSIG = 1
try:  # resolved here: the forked child must not dlopen (another thread may hold its lock)
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def _die_with_parent() -> None:  # runs in the forked child, before exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class DevnetError(RuntimeError):
    pass


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def fcnode_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli.main", *args]


def run_cli(*args: str, token: str | None = None, home: Path | None = None,
            stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One `fcnode` command in its own process, as a user runs it."""
    env = dict(ENV)
    if token:
        env["FCNODE_TOKEN"] = token
    if home is not None:
        env["FCNODE_HOME"] = str(home)
    return subprocess.run(fcnode_argv(*args), env=env, capture_output=True, text=True,
                          input=stdin, timeout=timeout)


def wait_until(predicate: Callable[[], object], timeout: float,
               interval: float = 0.05) -> bool:
    """Poll until predicate() is true (True) or timeout seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_for(predicate: Callable[[], object], timeout: float = 20, what: str = "",
             interval: float = 0.1) -> None:
    """wait_until, raising DevnetError naming what did not happen."""
    if not wait_until(predicate, timeout, interval):
        raise DevnetError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def wait_settled(snapshot: Callable[[], object], quiet: float = 1.5, timeout: float = 30,
                 interval: float = 0.25) -> bool:
    """Wait until snapshot() has not changed for `quiet` seconds (replication
    settled); False if it still changed after timeout seconds."""
    last: object = None
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            return True
        time.sleep(interval)
    return False


class Node:
    """One center: its home under root, its daemon, its users' credentials."""

    def __init__(self, root: Path, center: str, name: str | None = None, *,
                 port: int | None = None, init: bool = True,
                 log_level: str | None = None, die_with_parent: bool = False) -> None:
        self.center = center
        self.name = name or f"{center.upper()} fusion center"
        self.home = root / center
        self.port = port or free_port()
        self.listen = f"{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{center}.log"
        self.log_level = log_level
        self.die_with_parent = die_with_parent  # PR_SET_PDEATHSIG (benchmarks)
        self.token = ""
        self.tokens: dict[str, str] = {}
        self._clients: dict[str, Client] = {}
        if init:
            self.init()

    def init(self) -> Node:
        """`fcnode init` (its own function, in this process: key generation is
        what it costs, not a Python start-up)."""
        try:
            result = init_node(self.home, self.center, self.name, self.listen)
        except Exception as exc:
            raise DevnetError(f"fcnode init {self.center}: {exc}") from exc
        self.token = result.admin_token
        self.tokens["admin"] = self.token
        return self

    # -- process -------------------------------------------------------------
    def start(self, wait: bool = True, *, prefix: Sequence[str] = (),
              timeout: float = 20) -> Node:
        """Start `fcnode serve`; prefix: a wrapper command the daemon runs under."""
        self.close_clients()  # channels to a previous daemon (killed by hand) go
        argv = fcnode_argv("serve", "--home", str(self.home))
        if self.log_level:
            argv += ["--log-level", self.log_level]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*prefix, *argv], env=ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent if self.die_with_parent else None)
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DevnetError(f"{self.center}: no daemon started")
        return self.proc.pid

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the local API answers (or the daemon exits: its log says why)."""
        deadline = time.monotonic() + timeout
        sock = Home(self.home).socket
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise DevnetError(f"{self.center} daemon exited with {self.proc.returncode}: "
                                  f"{self.log_tail()}")
            if sock.exists():
                try:
                    self.call("Status", timeout=5)
                    return
                except CliError:
                    self.close_clients()
            if time.monotonic() > deadline:
                raise DevnetError(f"{self.center} daemon not ready: {self.log_tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DevnetError(f"daemon {self.center} died (exit {self.proc.returncode}): "
                              f"{self.log_tail(500)}")

    def send_signal(self, sig: int) -> None:
        """Send sig to the daemon (SIGHUP: reload node.toml and peers.toml)."""
        if self.proc is None:
            raise DevnetError(f"{self.center}: no daemon started")
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Stop the daemon (SIGKILL after timeout); its exit code."""
        self.close_clients()
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
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def edit_config(self, old: str, new: str) -> None:
        """Change node.toml by text (the daemon reads it at start and on SIGHUP)."""
        path = self.home / "node.toml"
        text = path.read_text()
        if old not in text:
            raise DevnetError(f"{self.center}: {old!r} is not in {path}")
        path.write_text(text.replace(old, new))

    # -- CLI: what a user types ------------------------------------------------
    def cli(self, *args: str, user: str = "admin", stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--home", str(self.home), token=self.tokens[user], stdin=stdin)

    def cli_popen(self, *args: str, user: str = "admin", **popen: Any
                  ) -> subprocess.Popen[Any]:
        """A CLI command left running (to kill it mid-flight, or to read a stream)."""
        return subprocess.Popen(fcnode_argv(*args, "--home", str(self.home)),
                                env={**ENV, "FCNODE_TOKEN": self.tokens[user]}, **popen)

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

    def publish(self, *args: str, user: str = "admin") -> dict[str, Any]:
        """`fcnode publish ARGS --json`."""
        return self.json("publish", *args, user=user)

    # -- local API: the same daemon calls, without a process per call ------------
    def client(self, user: str = "admin") -> Client:
        if user not in self._clients:
            self._clients[user] = Client(Home(self.home), self.tokens[user], timeout=120.0)
        return self._clients[user]

    def call(self, method: str, request: Any = None, *, user: str = "admin",
             timeout: float | None = None) -> Any:
        return self.client(user).call(method, request, timeout)

    def stream(self, method: str, request: Any = None, *, user: str = "admin",
               timeout: float | None = None) -> list[Any]:
        return list(self.client(user).stream(method, request, timeout))

    def close_clients(self) -> None:
        for c in self._clients.values():
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()

    def status(self) -> dict[str, Any]:
        return self.call("Status")

    def active(self, origin: str) -> int:
        """Active records of origin this node holds, by its own status."""
        return int(self.status()["records"].get(origin, {}).get("active", 0))

    def search(self, filters: dict[str, Any], user: str = "admin") -> list[Any]:
        return self.stream("Search", {"filters": filters}, user=user)

    def publish_drafts(self, drafts: list[dict[str, Any]], user: str = "admin"
                       ) -> list[dict[str, Any]]:
        """Publish record drafts (the record file's fields) in one call."""
        return self.call("Publish", {"records": drafts}, user=user)

    def add_user(self, name: str, *attrs: str, admin: bool = False) -> str:
        """Add a user; its token is kept for `user=name`."""
        r = self.call("AddUser", {"name": name, "attributes": list(attrs), "admin": admin})
        self.tokens[name] = r["token"]
        return self.tokens[name]

    def card(self) -> str:
        """This node's identity card, as `fcnode identity` prints it (from the home,
        so a rotated key shows at once)."""
        home = Home(self.home)
        cfg = load_config(home)
        return own_card(home, cfg.center, cfg.name, cfg.listen).line()

    def pin(self, other: Node, *flags: str, connect: bool = True, introducer: bool = False,
            groups: Iterable[str] = ()) -> None:
        """`fcnode peers add OTHER_CARD`: through the running daemon, or by the
        CLI's offline edit of peers.toml when this node's daemon is stopped.
        flags: the CLI's spelling (--no-connect, --introducer, --groups A,B) of
        the keywords, as tests written before the keywords pass them."""
        groups = list(groups)
        rest = list(flags)
        while rest:
            flag = rest.pop(0)
            if flag == "--no-connect":
                connect = False
            elif flag == "--introducer":
                introducer = True
            elif flag == "--groups" and rest:
                groups += rest.pop(0).split(",")
            else:
                raise DevnetError(f"pin: unknown flag {flag!r}")
        if self.running:
            self.call("AddPeer", {"card": other.card(), "groups": list(groups),
                                  "connect": connect, "introducer": introducer})
            return
        args = ["peers", "add", other.card()]
        if not connect:
            args.append("--no-connect")
        if introducer:
            args.append("--introducer")
        if groups:
            args += ["--groups", ",".join(groups)]
        self.ok(*args)

    # -- process figures (benchmarks) ---------------------------------------------
    def proc_status(self) -> dict[str, int]:
        """VmRSS / VmHWM in kB from /proc/PID/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon so far (all threads)."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    # -- database (tests assert on the file itself, not only on the CLI) ---------
    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'node.db'}?mode=ro", uri=True, timeout=10)

    def _one(self, sql: str, *params: object) -> Any:
        with contextlib.closing(self.db()) as conn:
            return conn.execute(sql, params).fetchone()

    def held_record_ids(self) -> set[str]:
        """Records whose content (some version) this node's database holds."""
        with contextlib.closing(self.db()) as conn:
            return {r[0] for r in conn.execute(
                "SELECT record_id FROM entries WHERE payload IS NOT NULL "
                "AND kind NOT IN ('RETRACTION', 'PURGE')")}

    def holds(self, record_id: str) -> bool:
        return record_id in self.held_record_ids()

    def head(self, origin: str) -> int:
        """The highest seq of origin's log this node holds (content or not); 0: none."""
        return self._one("SELECT coalesce(max(seq), 0) FROM entries WHERE origin = ?",
                         origin)[0]

    def record_state(self, record_id: str) -> tuple[int, str] | None:
        """(version, state) of a record in this node's records table."""
        return self._one("SELECT version, state FROM records WHERE record_id = ?", record_id)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 20,
                 what: str = "") -> None:
        wait_for(predicate, timeout, f"{self.center}: {what or predicate}")

    def wait_held(self, record_id: str, timeout: float = 30) -> None:
        self.wait_for(lambda: self.holds(record_id), timeout, f"{record_id} held")

    def wait_head(self, origin: str, seq: int, timeout: float = 20) -> None:
        self.wait_for(lambda: self.head(origin) >= seq, timeout, f"{origin} head {seq}")


class Network:
    """The nodes of one run under one directory; every daemon started through it
    is stopped (SIGTERM to all at once, SIGKILL after a grace period) on close.

    root None: a new directory under /tmp (a short path keeps Unix sockets under
    107 bytes), removed on close unless keep."""

    def __init__(self, root: Path | None = None, *, keep: bool = False,
                 prefix: str = "fcnode-", log_level: str | None = None,
                 die_with_parent: bool = False) -> None:
        self.owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix=prefix)) if root is None else root
        self.keep = keep
        self.log_level = log_level
        self.die_with_parent = die_with_parent
        self.nodes: list[Node] = []

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node(self, center: str, name: str | None = None, *, start: bool = True) -> Node:
        """A new node (and its daemon, unless start=False)."""
        node = Node(self.root, center, name, log_level=self.log_level,
                    die_with_parent=self.die_with_parent)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def init(self, centers: Sequence[str],
             name: Callable[[str], str] | None = None) -> list[Node]:
        """`fcnode init` for each center, on distinct free ports; not started."""
        ports = free_ports(len(centers))
        nodes = [Node(self.root, c, name(c) if name else None, port=p,
                      log_level=self.log_level, die_with_parent=self.die_with_parent)
                 for c, p in zip(centers, ports, strict=True)]
        self.nodes.extend(nodes)
        return nodes

    def start(self, nodes: Sequence[Node] | None = None, timeout: float = 60.0) -> None:
        """Start the daemons all at once, then wait until each local API answers."""
        targets = list(self.nodes if nodes is None else nodes)
        for n in targets:
            n.start(wait=False)
        deadline = time.monotonic() + timeout
        for n in targets:
            n.wait_ready(max(0.1, deadline - time.monotonic()))

    def check_alive(self) -> None:
        for n in self.nodes:
            n.check_alive()

    def stop(self, nodes: Sequence[Node] | None = None, grace: float = 15.0) -> None:
        """SIGTERM to every daemon at once, then wait (SIGKILL after grace)."""
        targets = [n for n in (self.nodes if nodes is None else nodes) if n.proc is not None]
        procs = []
        for n in targets:
            n.close_clients()
            proc, n.proc = n.proc, None
            assert proc is not None
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            procs.append(proc)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.owns_root and not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def total_rss_mb(self) -> float:
        return sum(n.proc_status().get("VmRSS", 0) for n in self.nodes if n.proc) / 1024


def star(hub: Node, spokes: list[Node]) -> None:
    """Spokes dial only the hub; they pin each other's keys without dialling, so
    what the hub relays from one spoke verifies at the others."""
    for s in spokes:
        hub.pin(s)
        s.pin(hub)
        for other in spokes:
            if other is not s:
                s.pin(other, connect=False)


def mesh(*nodes: Node) -> None:
    """Pin every node at every other (both directions)."""
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.pin(b)
