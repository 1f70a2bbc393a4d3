"""Shared pieces of the benchmarks: output, percentiles, the Ed25519 rate of
this machine, synthetic records. The daemons are node.devnet's (the one home
of daemon management, shared with the demo and the tests): a Cluster is a
devnet Network in a temporary directory.

Nothing here asserts a timing: the benchmarks print figures, targets and
ratios. Every daemon a benchmark starts is registered in a Cluster and stopped
(SIGTERM, then SIGKILL after a grace period) when the Cluster closes, also on
an error or Ctrl-C; each daemon also gets SIGTERM from the kernel if the
benchmark process itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node import devnet
    from node.cli.client import Client
    from node.config.home import Home
    from node.devnet import HOST, Node, wait_until
except ImportError as exc:  # pragma: no cover - run with the project's virtualenv
    sys.exit(f"cannot import fcnode ({exc}); run with the project's virtualenv, e.g. "
             f".venv/bin/python {sys.argv[0]}")

__all__ = ["HOST", "Client", "Home", "Node", "wait_until"]  # used by the benchmarks


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


# -- daemons: node.devnet, with what a benchmark run adds --------------------------------
class Cluster(devnet.Network):
    """A devnet Network in a new /tmp directory (removed unless keep): daemons log
    at warning, get SIGTERM from the kernel if the benchmark process dies
    (PR_SET_PDEATHSIG), and a SIGTERM to the benchmark stops them on the way out."""

    def __init__(self, keep: bool = False) -> None:
        super().__init__(keep=keep, prefix="fcb-", log_level="warning", die_with_parent=True)
        self._old_term = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_exit)

    def init(self, centers: Sequence[str],  # type: ignore[override]
             name: Callable[[str], str] | None = None) -> list[Node]:
        return super().init(centers, name or (lambda c: f"Bench {c}"))

    def close(self) -> None:
        try:
            super().close()
        finally:
            signal.signal(signal.SIGTERM, self._old_term)
            if self.keep:
                print(f"   (kept {self.root})", flush=True)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


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

    def entity(self, i: int, k: int) -> str:
        """One entity of record i, as a search filter: phone, plate or person by k."""
        return (f"phone={self.phone(i)}", f"plate={self.plate(i)}",
                f"person={self.person(i)}")[k % 3]

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
