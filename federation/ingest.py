"""Replication ingest: verify every envelope, then store a batch in one transaction.

Verification (Ed25519, CPU-bound, releases the GIL) runs in a thread pool off
the event loop; chain placement (node.chain.classify) and storage run in the
database thread. A failure stores nothing for that entry and stops that
origin's entries for the rest of the batch (a later entry could only gap).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.chain import Held, Incoming, Verdict, classify
from node.signing import BadSignature, entry_hash, open_record, open_stub, stub_mismatch
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.storage import notices as notices_tx
from node.wire import federation_pb2, records_pb2

KeysOf = Callable[[str], Mapping[str, Ed25519PublicKey]]


@dataclass(frozen=True)
class Checked:
    item: federation_pb2.LogItem
    body: records_pb2.RecordBody | None  # None: a placeholder
    error: str = ""
    # The origin's stub of this position, verified against the origin's key and
    # checked to name this (origin, seq, hash) and agree with the body; else None.
    stub: records_pb2.EntryStub | None = None

    @property
    def signed_stub(self) -> records_pb2.SignedStub | None:
        return self.item.stub if self.stub is not None else None


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    forks: list[str] = field(default_factory=list)
    changed: bool = False
    purged: bool = False  # content was deleted: the WAL must be checkpointed


def _refusal(verdict: Verdict, prior: tuple[int, int, str] | None,
             body: records_pb2.RecordBody) -> str:
    """Why a validly signed entry must not be stored, or ''."""
    if prior is None:
        return ""
    if prior[2] == "purged":
        return "record was purged"  # a tombstone is final, whoever replays what
    if body.version < prior[1] or (prior[2] in ("recalled", "expired") and (
            body.version <= prior[1])):
        # Newest version wins: a superseded or recalled version never comes back,
        # however a peer that is behind (or malicious) replays it.
        return "superseded version"
    if verdict is Verdict.APPEND and prior[1] >= body.version:
        # A new log position carrying a version we already have.
        return "replayed older version"
    return ""


def _recall(conn: sqlite3.Connection, peer: str, item: federation_pb2.LogItem, now_ms: int,
            result: IngestResult) -> None:
    """A content-free notice that our copy must go (a narrowed audience, or a
    retraction or purge we may not read). Honoured only from the origin or from
    the peer that gave us the record, so no third node can delete our copies."""
    source = log_tx.record_source(conn, item.origin, item.recall_record_id)
    if peer != item.origin and peer != source:
        fed_tx.reject(conn, now_ms, peer, item.origin, item.seq, "recall from a non-source")
        result.rejected["recall from a non-source"] += 1
        return
    if log_tx.purge_locally(conn, item.origin, item.recall_record_id, "recalled",
                            item.recall_version):
        result.purged = True
        notices_tx.add(conn, now_ms, "recall", item.origin, item.recall_record_id,
                       {"version": item.recall_version, "via": peer,
                        "why": "the origin no longer shares this record with this center"})


def check_items(items: Sequence[federation_pb2.LogItem], keys_of: KeysOf) -> list[Checked]:
    """Verify signatures and self-consistency; pure CPU work."""
    out = []
    for item in items:
        keys = keys_of(item.origin)
        if not keys:
            out.append(Checked(item, None, "unknown origin (no pinned key)"))
            continue
        body = None
        if item.HasField("envelope"):
            try:
                body = open_record(item.envelope, keys)
            except BadSignature as exc:
                out.append(Checked(item, None, f"bad signature: {exc}"))
                continue
            if body.origin != item.origin or body.seq != item.seq:
                out.append(Checked(item, None, "signed origin/seq differ from the log position"))
                continue
            if entry_hash(item.envelope.payload) != item.hash:
                out.append(Checked(item, None, "entry hash does not match the payload"))
                continue
        stub = None
        if item.HasField("stub"):
            try:
                stub = open_stub(item.stub, keys)
            except BadSignature as exc:
                out.append(Checked(item, None, f"bad stub: {exc}"))
                continue
            wrong = stub_mismatch(stub, item.origin, item.seq, item.hash, body)
            if wrong:
                out.append(Checked(item, None, f"bad stub: {wrong}"))
                continue
        out.append(Checked(item, body, stub=stub))
    return out


def store_batch(conn: sqlite3.Connection, peer: str, checked: Sequence[Checked],
                now_ms: int, own_center: str = "") -> IngestResult:
    """Place and store verified items, in order, in the caller's transaction."""
    result = IngestResult()
    quarantined = fed_tx.quarantined(conn)
    stopped: set[str] = set()
    # Per origin: the head (seq, what is held there). Items almost always extend
    # the chain by one, so the common case needs no lookup at all.
    tips: dict[str, tuple[int, Held | None]] = {}
    cursors: dict[str, int] = {}
    # First versions of records not held yet (catch-up is mostly these) are
    # stored in bulk; anything else flushes them first, so order is kept.
    states = _prefetch_states(conn, checked)
    fresh: list[tuple[records_pb2.Envelope, records_pb2.RecordBody]] = []
    fresh_stubs: list[records_pb2.SignedStub | None] = []
    fresh_ids: set[tuple[str, str]] = set()

    def flush() -> None:
        log_tx.insert_new_records(conn, fresh, peer, now_ms, fresh_stubs)
        for key in fresh_ids:
            states.pop(key, None)  # stale now: look it up again if touched
        fresh.clear()
        fresh_stubs.clear()
        fresh_ids.clear()

    def reject(c: Checked, reason: str) -> None:
        fed_tx.reject(conn, now_ms, peer, c.item.origin, c.item.seq, reason)
        result.rejected[reason.split(":")[0]] += 1
        stopped.add(c.item.origin)

    for c in checked:
        origin, seq = c.item.origin, c.item.seq
        if origin in stopped:
            continue
        if origin == own_center:
            reject(c, "entries of this node's own log come only from itself")
            continue
        if origin in quarantined:
            reject(c, "origin quarantined")
            continue
        if c.error:
            reject(c, c.error)
            continue
        if origin not in tips:
            top = log_tx.head(conn, origin)[0]
            tips[origin] = (top, log_tx.held(conn, origin, top) if top else None)
        head, tip = tips[origin]
        if seq == head + 1:
            at_seq, before = None, tip
        else:
            flush()
            at_seq = log_tx.held(conn, origin, seq)
            before = log_tx.held(conn, origin, seq - 1) if seq > 1 else None
        outcome = classify(Incoming(seq, c.item.hash, c.body is not None,
                                    c.body.prev if c.body else b""), head, at_seq, before)
        if outcome.verdict is Verdict.REJECT:
            reject(c, outcome.reason)
            continue
        if outcome.verdict is Verdict.FORK:
            held = log_tx.entry(conn, origin, seq)
            fed_tx.record_fork(conn, origin, seq,
                               (held.payload, held.signature) if held else None,
                               (c.item.envelope.payload, c.item.envelope.signature),
                               peer, now_ms, outcome.reason)
            result.forks.append(f"{origin}: {outcome.reason}")
            stopped.add(origin)
            continue
        body = c.body
        key = (origin, body.record_id) if body is not None else ("", "")
        if (outcome.verdict is Verdict.APPEND and body is not None
                and body.kind in log_tx.CONTENT and key in states and states[key] is None
                and key not in fresh_ids):
            fresh.append((c.item.envelope, body))
            fresh_stubs.append(c.signed_stub)
            fresh_ids.add(key)
            result.stored += 1
            stored_signed = True
        else:
            flush()
            stored_signed = _store(conn, peer, c, outcome.verdict, now_ms, result)
            states.pop(key, None)  # the record may exist now
        if outcome.verdict is Verdict.APPEND or (outcome.verdict is Verdict.REPLACE
                                                 and seq == head):
            tips[origin] = (seq, Held(c.item.hash, stored_signed))
        result.changed = result.changed or outcome.verdict is not Verdict.DUPLICATE
        cursors[origin] = seq
    flush()
    for origin, seq in cursors.items():
        fed_tx.set_cursor(conn, peer, origin, seq)
    return result


def _prefetch_states(conn: sqlite3.Connection, checked: Sequence[Checked]
                     ) -> dict[tuple[str, str], log_tx.RecordState | None]:
    """(origin, record id) -> state, or None where this node holds no such record."""
    wanted: dict[str, set[str]] = {}
    for c in checked:
        if c.body is not None:
            wanted.setdefault(c.item.origin, set()).add(c.body.record_id)
    out: dict[tuple[str, str], log_tx.RecordState | None] = {}
    for origin, ids in wanted.items():
        found = log_tx.record_states(conn, origin, ids)
        out.update({(origin, rid): found.get(rid) for rid in ids})
    return out


def _store(conn: sqlite3.Connection, peer: str, c: Checked, verdict: Verdict, now_ms: int,
           result: IngestResult) -> bool:
    """Store one placed item; True if its signed envelope is now held."""
    origin, seq = c.item.origin, c.item.seq
    stub = c.signed_stub
    if verdict is Verdict.DUPLICATE:
        if stub is not None:
            log_tx.set_stub(conn, origin, seq, stub)
        result.duplicates += 1
        return True
    if c.body is None:
        log_tx.insert_placeholder(conn, origin, seq, c.item.hash, peer, now_ms,
                                  c.item.recall_record_id or None,
                                  c.item.recall_version or None, stub)
        result.stored += 1
        if c.item.recall_record_id:
            _recall(conn, peer, c.item, now_ms, result)
        return False
    prior = log_tx.record_state(conn, origin, c.body.record_id)
    refusal = _refusal(verdict, prior, c.body)
    if refusal:
        # Never stored; the chain keeps only this entry's hash and goes on.
        if verdict is Verdict.APPEND:
            log_tx.insert_placeholder(conn, origin, seq, c.item.hash, peer, now_ms,
                                      stub=stub)
        if refusal != "superseded version":  # a peer that is behind: not an attack
            fed_tx.reject(conn, now_ms, peer, origin, seq, refusal)
            result.rejected[refusal] += 1
        return False
    if verdict is Verdict.UPGRADE:
        log_tx.upgrade_placeholder(conn, c.item.envelope, c.body, peer, now_ms)
        if stub is not None:
            log_tx.set_stub(conn, origin, seq, stub)
    elif verdict is Verdict.REPLACE:
        log_tx.replace_placeholder(conn, c.item.envelope, c.body, c.item.hash, peer, now_ms,
                                   stub)
    else:
        log_tx.insert_entries(conn, [(c.item.envelope, c.body)], peer, now_ms, [stub])
    result.stored += 1
    # An upgrade may fill in a version older than the current one: kept in the
    # log, not applied ('stale').
    if log_tx.apply_entries(conn, [c.body], [prior])[0] == "applied":
        result.purged = result.purged or c.body.kind == records_pb2.PURGE
        if prior is not None and prior[2] != "recalled":
            notices_tx.lifecycle_notice(conn, now_ms, c.body, prior[1])
    return True
