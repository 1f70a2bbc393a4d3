"""Shared pieces of the benchmarks: real `fcnode serve` daemons in a temporary
directory, a local-API client per node, synthetic records, and measurements.

Nothing here asserts a timing: the benchmarks print figures, targets and
ratios. Every daemon a benchmark starts is registered in a Cluster and stopped
(SIGTERM, then SIGKILL after a grace period) when the Cluster closes, also on
an error or Ctrl-C; each daemon also gets SIGTERM from the kernel if the
benchmark process itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node.cli.client import Client, CliError
    from node.config.home import Home
except ImportError as exc:  # pragma: no cover - run with the project's virtualenv
    sys.exit(f"cannot import fcnode ({exc}); run with the project's virtualenv, e.g. "
             f".venv/bin/python {sys.argv[0]}")

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


# -- output -----------------------------------------------------------------------
def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as the description."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def save_json(path: str | None, out: dict[str, Any]) -> None:
    """--json FILE: the figures as JSON, beside what was printed."""
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=2)


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark; Ctrl-C exits 130 (its daemons were stopped on the way out)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def info(text: str) -> None:
    print(f"   {text}", flush=True)


def figure(name: str, value: str, target: str = "", verdict: str = "",
           note: str = "") -> None:
    line = f"   {name:<44} {value:>16}"
    if target:
        line += f"   target {target}"
    if note:
        line += f"   {note}"
    if verdict:
        line += f"   [{verdict}]"
    print(line, flush=True)


def machine_note() -> None:
    """Load average and cores: figures are only comparable on an otherwise idle machine."""
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"   machine: {os.cpu_count()} cores, load average {' '.join(load)} "
          "(other work on the machine lowers every figure)", flush=True)


def verdict(ok: bool) -> str:
    return "meets target" if ok else "BELOW TARGET"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of an unsorted sequence."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- Ed25519 on one core ------------------------------------------------------------
@dataclass(frozen=True)
class CryptoRates:
    sign_per_s: float
    verify_per_s: float
    verify_2threads_per_s: float


def ed25519_rates(seconds: float = 1.0, payload_size: int = 600) -> CryptoRates:
    """Sign and verify rate of cryptography's Ed25519, single thread, on a
    payload the size of a typical record body (domain prefix included, as the
    node signs it); plus verify with two threads (cryptography releases the GIL).
    ``seconds`` is the time spent on each of the three figures."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    rng = random.Random(7)
    message = b"fcnode/record/v1\x00" + bytes(rng.getrandbits(8) for _ in range(payload_size))
    signature = key.sign(message)

    def loop(op: Callable[[], object], budget: float) -> float:
        n, start = 0, time.perf_counter()
        deadline = start + budget
        while True:
            for _ in range(200):
                op()
            n += 200
            now = time.perf_counter()
            if now >= deadline:
                return n / (now - start)

    def two_threads(budget: float) -> float:
        counts = [0, 0]

        def worker(i: int, deadline: float) -> None:
            while time.perf_counter() < deadline:
                for _ in range(200):
                    public.verify(signature, message)
                counts[i] += 200

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i, start + budget)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start)

    # Best of three rounds: a physical limit, so a round slowed by other work on
    # the machine should not lower it.
    loop(lambda: key.sign(message), 0.1)  # warm up
    part = seconds / 3
    sign_rate = max(loop(lambda: key.sign(message), part) for _ in range(3))
    verify_rate = max(loop(lambda: public.verify(signature, message), part) for _ in range(3))
    two = max(two_threads(part) for _ in range(3))
    return CryptoRates(sign_rate, verify_rate, two)


# -- daemons --------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _child_setup() -> None:  # runs in the forked child, before exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def fcnode_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli.main", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.pop("FCNODE_HOME", None)
    env.pop("FCNODE_TOKEN", None)
    return env


@dataclass
class Node:
    center: str
    home: Path
    port: int
    token: str = ""
    card: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _client: Client | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(Home(self.home), self.token, timeout=120.0)
        return self._client

    def call(self, method: str, request: dict[str, Any] | None = None) -> Any:
        return self.client.call(method, request)

    def search(self, request: dict[str, Any]) -> list[Any]:
        return list(self.client.stream("Search", {"filters": request}))

    def status(self) -> dict[str, Any]:
        return self.call("Status")

    def active(self, origin: str) -> int:
        return int(self.status()["records"].get(origin, {}).get("active", 0))

    def pin(self, other: Node) -> None:
        self.call("AddPeer", {"card": other.card})

    def publish(self, drafts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.call("Publish", {"records": drafts})

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
        """User + system CPU time of the daemon so far (all threads), and of its
        child processes (the verification workers of a catch-up: running ones,
        and those it has reaped)."""
        ticks = os.sysconf("SC_CLK_TCK")
        stats = _proc_stats()
        own = stats.get(self.pid)
        if own is None:
            return 0.0
        total = own[1] + own[2]  # utime + stime, and its reaped children's
        todo = [self.pid]
        while todo:
            parent = todo.pop()
            for pid, (ppid, used, reaped) in stats.items():
                if ppid == parent:
                    total += used + reaped
                    todo.append(pid)
        return total / ticks

    def close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


def _proc_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, utime + stime, cutime + cstime) in clock ticks, every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = int(fields[11]) + int(fields[12])
        reaped = int(fields[13]) + int(fields[14])
        out[int(entry)] = (int(fields[1]), used, reaped)
    return out


class Cluster:
    """Nodes in one temporary directory; stops every daemon it started on close."""

    def __init__(self, keep: bool = False) -> None:
        # A short prefix in /tmp keeps the Unix socket path well under 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="fcb-"))
        self.keep = keep
        self.nodes: list[Node] = []
        self._old_term = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_exit)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- create ------------------------------------------------------------
    def init(self, centers: Sequence[str], parallel: int = 4) -> list[Node]:
        """`fcnode init` and `fcnode identity` for each center (a few at a time)."""
        ports = free_ports(len(centers))
        nodes = [Node(c, self.root / c, p) for c, p in zip(centers, ports, strict=True)]
        for i in range(0, len(nodes), parallel):
            group = nodes[i:i + parallel]
            procs = [subprocess.Popen(
                fcnode_argv("init", "--home", str(n.home), "--center", n.center,
                            "--name", f"Bench {n.center}", "--listen", f"{HOST}:{n.port}",
                            "--json"),
                cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for n in group]
            for n, p in zip(group, procs, strict=True):
                out, err = p.communicate(timeout=120)
                if p.returncode != 0:
                    raise RuntimeError(f"fcnode init {n.center} failed: {err.decode().strip()}")
                n.token = json.loads(out)["admin_token"]
            procs = [subprocess.Popen(fcnode_argv("identity", "--home", str(n.home), "--json"),
                                      cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for n in group]
            for n, p in zip(group, procs, strict=True):
                out, err = p.communicate(timeout=120)
                if p.returncode != 0:
                    raise RuntimeError(f"fcnode identity {n.center} failed: "
                                       f"{err.decode().strip()}")
                n.card = json.loads(out)["card"]
        self.nodes.extend(nodes)
        return nodes

    def start(self, nodes: Sequence[Node], timeout: float = 60.0) -> None:
        """Start `fcnode serve` for each node and wait until its local API answers."""
        for n in nodes:
            n.log_path = self.root / f"{n.center}.log"
            log = open(n.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                n.proc = subprocess.Popen(
                    fcnode_argv("serve", "--home", str(n.home), "--log-level", "warning"),
                    cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    preexec_fn=_child_setup)
            finally:
                log.close()
        deadline = time.monotonic() + timeout
        for n in nodes:
            self._wait_ready(n, deadline)

    def _wait_ready(self, n: Node, deadline: float) -> None:
        sock = Home(n.home).socket
        while True:
            assert n.proc is not None
            if n.proc.poll() is not None:
                raise RuntimeError(f"fcnode serve {n.center} exited with {n.proc.returncode}: "
                                   f"{self.log_tail(n)}")
            if sock.exists():
                try:
                    n.status()
                    return
                except CliError:
                    n.close_client()
            if time.monotonic() > deadline:
                raise RuntimeError(f"fcnode serve {n.center} did not answer in time: "
                                   f"{self.log_tail(n)}")
            time.sleep(0.05)

    def log_tail(self, n: Node, lines: int = 5) -> str:
        if n.log_path is None or not n.log_path.exists():
            return "(no log)"
        return " | ".join(n.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise RuntimeError(f"daemon {n.center} died (exit {n.proc.returncode}): "
                                   f"{self.log_tail(n)}")

    # -- stop --------------------------------------------------------------
    def stop(self, nodes: Sequence[Node] | None = None, grace: float = 15.0) -> None:
        targets = [n for n in (nodes if nodes is not None else self.nodes) if n.proc]
        for n in targets:
            n.close_client()
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    n.proc.terminate()
        deadline = time.monotonic() + grace
        for n in targets:
            assert n.proc is not None
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    n.proc.kill()
                n.proc.wait(timeout=10)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            signal.signal(signal.SIGTERM, self._old_term)
            if self.keep:
                print(f"   (kept {self.root})", flush=True)
            else:
                import shutil

                shutil.rmtree(self.root, ignore_errors=True)

    def total_rss_mb(self) -> float:
        return sum(n.proc_status().get("VmRSS", 0) for n in self.nodes if n.proc) / 1024


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# -- synthetic records -----------------------------------------------------------------
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
COMMON = ("suspicious", "vehicle", "purchase", "observed", "report", "subject", "transaction",
          "package", "surveillance", "warehouse", "shipment", "contact", "meeting", "document",
          "photograph", "drone", "inquiry", "storage", "rental", "truck", "cash", "wire",
          "pharmacy", "fuel", "chemical", "firearm", "ammunition", "tower", "bridge", "port")
CITIES = ("oakland", "fresno", "sacramento", "reno", "albany", "buffalo", "newark", "trenton",
          "camden", "yonkers", "austin", "tulsa", "omaha", "boise", "tacoma", "spokane",
          "eugene", "tucson", "mesa", "denver", "aurora", "lincoln", "wichita", "topeka")
FIRST = ("james", "maria", "robert", "linda", "michael", "sarah", "david", "karen", "joseph",
         "nancy", "daniel", "lisa", "paul", "betty", "mark", "helen", "steven", "sandra",
         "kevin", "donna", "brian", "carol", "george", "ruth", "edward", "sharon", "ronald",
         "laura", "anthony", "cynthia", "jason", "amy", "jeffrey", "angela", "ryan", "anna",
         "jacob", "emma", "gary", "olivia")
LAST = ("smith", "johnson", "williams", "brown", "jones", "garcia", "miller", "davis",
        "rodriguez", "martinez", "hernandez", "lopez", "gonzalez", "wilson", "anderson",
        "thomas", "taylor", "moore", "jackson", "martin", "lee", "perez", "thompson", "white",
        "harris", "sanchez", "clark", "ramirez", "lewis", "robinson", "walker", "young",
        "allen", "king", "wright", "scott", "torres", "nguyen", "hill", "flores")


def pseudo_word(n: int) -> str:
    """A distinct pronounceable word for every n >= 0 (not an English word)."""
    syll = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70 syllables
    parts = []
    n += 70 * 70  # at least three syllables
    while n:
        n, r = divmod(n, len(syll))
        parts.append(syll[r])
    return "".join(parts) + "x"


class Corpus:
    """Deterministic records: record i has a rare title word, a phone, a plate and
    a person shared with only a few other records, so that the queries made from
    a record match a handful of records."""

    def __init__(self, total: int, seed: int = 1) -> None:
        self.total = max(total, 1)
        self.rare = max(1, self.total // 4)    # ~4 records per rare word
        self.phones = max(1, self.total // 3)  # ~3 records per phone
        self.plates = max(1, self.total // 2)  # ~2 records per plate
        self.people = max(1, self.total // 4)  # ~4 records per person (name + DOB)
        self.seed = seed

    def rare_word(self, i: int) -> str:
        return pseudo_word(i % self.rare)

    def city(self, i: int) -> str:
        # A function of the rare word's group: "RARE CITY" matches that group.
        return CITIES[((i % self.rare) * 7 + 3) % len(CITIES)]

    def phone(self, i: int) -> str:
        h = i % self.phones
        d = 2_000_000_000 + (h * 7_654_321 + 12_345) % 7_999_999_999
        s = str(d)
        return f"({s[:3]}) {s[3:6]}-{s[6:]}"

    def plate(self, i: int) -> str:
        h = (i % self.plates) * 2_654_435_761 % 36**7
        chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        out = ""
        for _ in range(7):
            h, r = divmod(h, 36)
            out += chars[r]
        return f"CA:{out}"

    def person(self, i: int) -> str:
        h = i % self.people
        first = FIRST[h % len(FIRST)]
        last = LAST[(h // len(FIRST)) % len(LAST)]
        dob = dt.date(1950, 1, 1) + dt.timedelta(days=(h * 37) % 20_000)
        return f"{last.title()}, {first.title()};{dob.isoformat()}"

    def draft(self, i: int, audience: Sequence[str] = ("members",),
              title_extra: str = "") -> dict[str, Any]:
        rng = random.Random(self.seed * 1_000_003 + i)
        common = rng.sample(COMMON, 2)
        title = f"{common[0].title()} {common[1]} {self.rare_word(i)} {self.city(i)}"
        if title_extra:
            title += f" {title_extra}"
        words = [rng.choice(COMMON) for _ in range(40)]
        words[rng.randrange(40)] = self.city(i)
        return {
            "kind": "BOLO" if i % 2 else "BULLETIN",
            "title": title,
            "narrative": " ".join(words) + ".",
            "labels": ["bench", f"region-{i % 10}"],
            "entities": [f"phone={self.phone(i)}", f"plate={self.plate(i)}",
                         f"person={self.person(i)}"],
            "policy": {"tlp": "GREEN", "audience": list(audience), "require": [],
                       "discoverability": "pointer"},
            "part23": {"source_reliability": "B", "content_validity": "2"},
        }

    def drafts(self, start: int, count: int, **kw: Any) -> list[dict[str, Any]]:
        return [self.draft(i, **kw) for i in range(start, start + count)]


def batches(start: int, total: int, size: int) -> Iterator[tuple[int, int]]:
    """(first index, count) chunks covering [start, start + total)."""
    i = start
    while i < start + total:
        n = min(size, start + total - i)
        yield i, n
        i += n
