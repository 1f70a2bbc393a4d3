"""The audit chain, pure: hashing entries and verifying a sequence of them.

Each entry commits to the previous entry's hash; the head (newest seq and hash)
is signed with the node's key, so an edited, deleted or truncated entry is found
and named by ``verify_chain``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts_ms: int
    actor: str
    action: str
    detail: str  # canonical JSON
    prev: bytes
    hash: bytes


def canonical(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev: bytes, seq: int, ts_ms: int, actor: str, action: str, detail: str) -> bytes:
    h = hashlib.sha256(prev)
    h.update(struct.pack(">QQ", seq, ts_ms))
    for part in (actor, action, detail):
        data = part.encode()
        h.update(struct.pack(">I", len(data)))
        h.update(data)
    return h.digest()


def head_message(seq: int, digest: bytes) -> bytes:
    return struct.pack(">Q", seq) + digest


def verify_chain(entries: Iterable[AuditEntry], head_seq: int, head_hash: bytes) -> list[str]:
    """Problems found, each naming the entry; empty when the chain is intact."""
    problems: list[str] = []
    prev, expected_seq = GENESIS, 1
    for e in entries:
        if e.seq != expected_seq:
            problems.append(f"entries {expected_seq}..{e.seq - 1} are missing (deleted)")
        if e.prev != prev:
            problems.append(f"entry {e.seq}: does not link to the entry before it")
        if entry_hash(e.prev, e.seq, e.ts_ms, e.actor, e.action, e.detail) != e.hash:
            problems.append(f"entry {e.seq} ({e.action} by {e.actor}): content was edited")
        prev, expected_seq = e.hash, e.seq + 1
    last = expected_seq - 1
    if last < head_seq:
        problems.append(f"entries {last + 1}..{head_seq} are missing (the log was truncated)")
    elif last > head_seq:
        problems.append(f"entries {head_seq + 1}..{last} are not covered by the signed head")
    elif last and prev != head_hash:
        problems.append(f"entry {last}: does not match the signed head")
    return problems
