"""Replication ingest: verify every envelope, then store a batch in one transaction.

The trust rule: a record's state at this node changes only through bytes its
origin signed; the peer that forwarded them can delay, never alter, withdraw or
speak for the origin. So: a recall is the origin's verified stub (or its signed
newer version), honoured from any peer; unsigned recall fields are ignored; a
placeholder is a hint that the origin's entry replaces or rewinds; content is
kept only where this node's own policy decision for itself is FULL; an erased
position keeps its signature, so a second signed entry there is a fork.

Verification (Ed25519, CPU-bound, releases the GIL) runs in a thread pool off
the event loop; chain placement (node.core.chain.classify) and storage run in the
database thread. A failure stores nothing for that entry and stops that
origin's entries for the rest of the batch (a later entry could only gap).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from node.config.home import Limits
from node.core import policy
from node.core.chain import Held, Incoming, Verdict, classify
from node.core.keyhistory import (
    AnnouncedCert,
    KeyHistory,
    Rotation,
    SealAnnouncement,
    check_cert,
    check_rotation,
    check_seal,
    check_vouched_entry,
)
from node.core.record import MAX_RECORD_BYTES, body_policy
from node.core.sealing import (
    COPY_OVERHEAD,
    HPKE_OVERHEAD,
    SealedCopy,
    check_copy,
    copy_budget,
    open_copy,
)
from node.core.signing import (
    BadSignature,
    entry_hash,
    envelope_stub,
    open_entry,
    open_stub,
    stub_mismatch,
)
from node.core.types import Decision, Requester
from node.storage import federation as fed_tx
from node.storage import keys as keys_tx
from node.storage import log as log_tx
from node.storage import notices as notices_tx
from node.storage import recovery as recovery_tx
from node.storage import sealed as sealed_tx
from node.telemetry import metrics
from node.wire import federation_pb2, records_pb2

# An origin's key history (node/core/keyhistory.py), or a plain key map (every key
# valid at every position: tests and benchmarks), or None/{}: not pinned.
KeysOf = Callable[[str], "Mapping[str, Ed25519PublicKey] | KeyHistory | None"]


@dataclass(frozen=True)
class Checked:
    item: federation_pb2.LogItem
    body: records_pb2.RecordBody | None  # None: a placeholder
    error: str = ""
    # The origin's stub of this position, verified against the origin's key and
    # checked to name this (origin, seq, hash) and agree with the body; else None.
    stub: records_pb2.EntryStub | None = None
    # A verified KEY_ROTATION (new key signs after this seq), or a verified
    # CERT_RENEWAL's certificate, or a verified SEAL_KEY_ROTATION: stored with the entry.
    rotation: Rotation | None = None
    cert: AnnouncedCert | None = None
    seal: SealAnnouncement | None = None
    # The signed stub kept with the entry: a v2 envelope's own (stub bytes, its
    # signature), else the item's separately signed stub when it verified.
    proof: records_pb2.SignedStub | None = None

    # Sealed copies of this position whose origin signature verified (stored and
    # passed on), and why each other copy the item carried was dropped.
    copies: tuple[SealedCopy, ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()  # (reason, copies)
    # This node's own policy decision for the body, taken where it was verified
    # (off the storing thread, the ingest's critical path): (the center it was
    # taken for, whether it is FULL); None: not taken (store_batch takes it).
    own_decision: tuple[str, bool] | None = None

    def entitled(self, own_center: str) -> bool:
        """``entitled(self.body, own_center)``, from own_decision when it was
        taken for this center."""
        d = self.own_decision
        if d is not None and d[0] == own_center:
            return d[1]
        return self.body is not None and entitled(self.body, own_center)

    @property
    def signed_stub(self) -> records_pb2.SignedStub | None:
        if self.proof is not None:
            return self.proof
        return self.item.stub if self.stub is not None else None


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    forks: list[str] = field(default_factory=list)
    changed: bool = False
    purged: bool = False  # content was deleted: the WAL must be checkpointed
    # Origins whose false hints were dropped and cursors moved back: every link
    # must subscribe again from its cursors to fetch those positions anew.
    rewound: set[str] = field(default_factory=set)
    # Origin -> lowest seq whose held hint was replaced or dropped: what this node
    # served there before may have been false, so its own streams serve it again.
    corrected: dict[str, int] = field(default_factory=dict)
    # Key announcements stored in this batch: the node's keyring learns them.
    rotations: list[Rotation] = field(default_factory=list)
    certs: list[AnnouncedCert] = field(default_factory=list)
    seals: list[SealAnnouncement] = field(default_factory=list)

    # Sealed copies kept, and dropped by label (metrics.copy_drop_label; never stored).
    copies_stored: int = 0
    copies_dropped: Counter[str] = field(default_factory=Counter)

    def correct(self, origin: str, seq: int) -> None:
        self.corrected[origin] = min(seq, self.corrected.get(origin, seq))

    def add(self, other: IngestResult) -> None:
        """Fold in the result of the next part of the same items (stored in order)."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected.update(other.rejected)
        self.forks.extend(other.forks)
        self.changed = self.changed or other.changed
        self.purged = self.purged or other.purged
        self.rewound |= other.rewound
        for origin, seq in other.corrected.items():
            self.correct(origin, seq)
        self.rotations.extend(other.rotations)
        self.certs.extend(other.certs)
        self.seals.extend(other.seals)
        self.copies_stored += other.copies_stored
        self.copies_dropped.update(other.copies_dropped)


def _contradicted(conn: sqlite3.Connection, origin: str, seq: int, now_ms: int,
                  result: IngestResult, replaced_by: str | None = None) -> None:
    """The origin's signed entry (or stub) contradicts the unsigned hint held at
    ``seq``: log it against the peer that gave the hint (see MAX_REWINDS).

    ``replaced_by``: the peer whose signed item now replaces the hint at ``seq``
    itself. When that is the peer that gave the hint, it corrected its own relay
    (an honest hub that had passed on a rogue's fake and then got the origin's
    entry): not charged, or a rogue behind a hub would make every spoke refuse
    that hub's placeholders and cut the spokes off the origin. No loop follows
    from it: the position now holds the origin's signed entry, which no hint
    displaces. A rewind (the hint at seq-1 contradicted by the entry at seq) is
    always charged: the same peer could replay it forever."""
    hint = log_tx.entry_source(conn, origin, seq) or ""
    result.correct(origin, seq)
    if replaced_by is not None and hint == replaced_by:
        return
    fed_tx.reject(conn, now_ms, hint, origin, seq, CONTRADICTED, bounded=False)
    result.rejected[CONTRADICTED] += 1


def _refusal(verdict: Verdict, prior: log_tx.RecordState | None,
             body: records_pb2.RecordBody) -> str:
    """Why the content of a validly signed entry must not be kept, or ''."""
    if prior is None:
        return ""
    if prior[2] == "purged":
        if body.kind == records_pb2.PURGE and body.version == prior[1]:
            return ""  # the signed tombstone itself, after its stub: kept as evidence
        return "record was purged"  # a tombstone is final, whoever replays what
    if body.version < prior[1] or (prior[2] == "expired" and body.version <= prior[1]):
        # Newest version wins: a superseded version never comes back, however a
        # peer that is behind (or malicious) replays it. A record recalled at V by
        # the origin's stub still takes the real V (the stub does not pin it).
        return "superseded version"
    if verdict is Verdict.APPEND and prior[1] >= body.version and not (
            prior[2] == "recalled" and prior[1] == body.version):
        # A new log position carrying a version we already have.
        return "replayed older version"
    return ""


def entitled(body: records_pb2.RecordBody, own_center: str) -> bool:
    """Whether this node may keep the content: its own policy decision for itself
    (never the forwarding hop's) is FULL."""
    return bool(own_center) and policy.decide(
        body_policy(body), body.origin, own_center, Requester(own_center)) is Decision.FULL


_ENDED = {records_pb2.RETRACTION: "retracted", records_pb2.PURGE: "purged"}


def _recall(conn: sqlite3.Connection, peer: str, origin: str, seq: int,
            proof: records_pb2.EntryStub | records_pb2.RecordBody, now_ms: int,
            result: IngestResult) -> None:
    """The origin signed that ``version`` of a record exists (its stub, or the
    entry itself that this node may not keep): our older content goes, whichever
    peer brought the proof. A retraction or purge ends the record; any other
    version we may not read leaves it 'recalled' at that version, and its real
    entry is still taken if it arrives and this node may hold it."""
    record_id, version = proof.record_id, proof.version
    state = _ENDED.get(proof.kind, "recalled")
    prior = log_tx.record_state(conn, origin, record_id)
    if prior is None:
        if version > 1:  # nothing held, but an older version could be replayed to us
            log_tx.mark_unheld(conn, origin, record_id, version, seq,
                               records_pb2.Kind.Name(proof.kind), proof.expires_ms, state)
        return
    if prior[2] == "purged" or prior[1] >= version:
        return
    # Erased from search at once; the text index is compacted by the daemon (at
    # most once per index_compact_s: a compaction per purge was O(index) work
    # that any origin purging its records one by one made every node do).
    if log_tx.purge_locally(conn, origin, record_id, state, version, defer_since_ms=now_ms):
        result.purged = True
        result.changed = True
        why = {"recalled": "the origin no longer shares this record with this center",
               "retracted": "the origin retracted this record",
               "purged": "the origin purged this record"}[state]
        notices_tx.add(conn, now_ms, "recall", origin, record_id,
                       {"version": version, "via": peer, "why": why})


# Sealed copies looked at per item, at most (the origin makes one per named center;
# [limits] max_sealed_copies bounds what is stored): more is a hostile hop's flood.
MAX_COPIES = 32
# A copy holds one envelope: a record at the size limit, its signature, key id and
# stub, and the HPKE overhead.
MAX_COPY_BYTES = MAX_RECORD_BYTES + 4096 + HPKE_OVERHEAD
COPY_DROPPED = "sealed copy dropped"
# Copies failing their check that one call (half a batch) verifies, at most: an
# honest peer passes on only copies it verified, so failures are a hostile peer's,
# and past this its remaining copies in the call are dropped unverified (junk must
# not buy it max_copies signature checks for every item of every batch).
MAX_BAD_COPIES = 64
DEFAULT_COPY_BUDGET = copy_budget(Limits().max_message_bytes)


def check_items(items: Sequence[federation_pb2.LogItem], keys_of: KeysOf,
                seal_private: Sequence[X25519PrivateKey] | None = None,
                max_copies: int = MAX_COPIES,
                max_copy_bytes: int = DEFAULT_COPY_BUDGET,
                own_center: str = "") -> list[Checked]:
    """Verify signatures and self-consistency; pure CPU work. An envelope must be
    signed by the key its origin used at that position (old keys stay valid for
    what they signed before a rotation, never after); a rotation verified here
    applies to the rest of the batch.

    Sealed copies (node/core/sealing.py): each must carry the origin's signature by its
    key valid at that position, else it is dropped (counted in Checked.dropped,
    never stored); at most ``max_copies`` per item are looked at, each distinct
    ciphertext once, and at most ``max_copy_bytes`` of them are kept (what this
    node would pass on: sealing.copy_budget). A placeholder
    whose copy opens with one of ``seal_private`` (this node's X25519 keys) is checked as
    if its envelope had come in clear: the same verification below, then the same
    placement and policy decision in store_batch. One that opens but does not
    verify (hash, signature, position) stays a placeholder.

    ``own_center``: this node; its own policy decision for each verified body is
    taken here too (Checked.own_decision), a pure function of the signed bytes,
    so the storing thread need not."""
    out = []
    histories: dict[str, KeyHistory | None] = {}
    plain: dict[str, Mapping[str, Ed25519PublicKey]] = {}
    bad = [MAX_BAD_COPIES]  # failed copy checks left for this call

    def check(item: federation_pb2.LogItem, history: KeyHistory | None,
              keys: Mapping[str, Ed25519PublicKey]) -> Checked:
        body = None
        rotation = None
        cert = None
        seal = None
        stub = None  # the entry's own v2 stub, verified with the envelope
        env = item.envelope if item.HasField("envelope") else None
        if env is not None:
            try:
                body, stub = open_entry(env, keys)
            except BadSignature as exc:
                return Checked(item, None, f"bad signature: {exc}")
            if body.origin != item.origin or body.seq != item.seq:
                return Checked(item, None, "signed origin/seq differ from the log position")
            # (A v2 stub's hash was checked against the payload in open_entry.)
            if (stub.hash if stub is not None else entry_hash(env.payload)) != item.hash:
                return Checked(item, None, "entry hash does not match the payload")
            signer_id = env.key_id
            if history is not None:
                why = history.signs(signer_id, body.seq)
                if why and _pinned_rotation(body, signer_id, history):
                    return Checked(item, body)  # the rotation to the re-pinned key
                if why:
                    return Checked(item, None, f"{WRONG_KEY}: {why}")
            kind = body.kind
            if kind == records_pb2.KEY_ROTATION:
                signer = (history.span_of(signer_id).key  # type: ignore[union-attr]
                          if history is not None else b"")
                why = check_rotation(body, signer) if history is not None else ""
                if why:
                    return Checked(item, None, why)
                if history is not None:
                    try:
                        histories[item.origin] = history.rotate(body.seq, body.new_key)
                        plain[item.origin] = histories[item.origin].public_keys()  # type: ignore[union-attr]
                    except ValueError as exc:
                        return Checked(item, None, f"key rotation: {exc}")
                    rotation = Rotation(body.origin, body.seq, signer, body.new_key)
            elif kind == records_pb2.CERT_RENEWAL:
                announced = check_cert(body)
                if isinstance(announced, str):
                    return Checked(item, None, announced)
                cert = announced
            elif kind == records_pb2.SEAL_KEY_ROTATION:
                # The origin's signature (checked above) is the only authority; a
                # key nothing can be sealed to is refused with the entry (logged as
                # a rejection like any bad entry), never half-taken.
                sealed_to = check_seal(body)
                if isinstance(sealed_to, str):
                    return Checked(item, None, sealed_to)
                seal = sealed_to
        proof = envelope_stub(env) if stub is not None else None  # type: ignore[arg-type]
        if item.HasField("stub") and item.stub != proof:
            # A separately signed stub (a recall, a pointer-possible v1 copy): one
            # more verification. A v2 entry's own stub sent again costs nothing.
            try:
                stub = open_stub(item.stub, keys)
            except BadSignature as exc:
                return Checked(item, None, f"bad stub: {exc}")
            wrong = stub_mismatch(stub, item.origin, item.seq, item.hash, body)
            if not wrong and history is not None:
                wrong = history.stub_signs(item.stub.key_id, item.seq)
            if wrong:
                return Checked(item, None, f"bad stub: {wrong}")
        decision = ((own_center, entitled(body, own_center))
                    if own_center and body is not None else None)
        return Checked(item, body, stub=stub, rotation=rotation, cert=cert, seal=seal,
                       proof=proof, own_decision=decision)

    for item in items:
        if item.origin not in histories:
            found = keys_of(item.origin)
            histories[item.origin] = found if isinstance(found, KeyHistory) else None
            plain[item.origin] = (found.public_keys() if isinstance(found, KeyHistory)
                                  else found if isinstance(found, Mapping) else {})
        history = histories[item.origin]
        keys = plain[item.origin]
        if not keys:
            out.append(Checked(item, None, "unknown origin (no pinned key)"))
            continue
        copies, dropped = (_checked_copies(item, history, keys, max_copies, bad,
                                           max_copy_bytes) if item.sealed else ((), ()))
        checked = None
        if copies and seal_private is not None and not item.HasField("envelope"):
            opened = _opened(item, copies, seal_private)
            if opened is not None:
                checked = check(opened, history, keys)
                if checked.error:  # the origin sealed something that is not its entry
                    dropped = (*dropped, (f"{COPY_DROPPED}: opened, but {checked.error}", 1))
                    checked = None
        if checked is None:
            checked = check(item, history, keys)
        if copies or dropped:
            checked = dataclasses.replace(checked, copies=copies, dropped=dropped)
        out.append(checked)
    return out


def _checked_copies(item: federation_pb2.LogItem, history: KeyHistory | None,
                    keys: Mapping[str, Ed25519PublicKey], max_copies: int, bad: list[int],
                    budget: int = DEFAULT_COPY_BUDGET
                    ) -> tuple[tuple[SealedCopy, ...], tuple[tuple[str, int], ...]]:
    """(the copies the origin signed for this position, (why, how many) of the
    others, dropped). Checked without opening: any hop can tell a copy came from
    the origin, so none stores or passes on a stranger's bytes. ``bad``: failed
    checks left (MAX_BAD_COPIES), shared by the items of one call."""
    if not item.sealed:
        return (), ()
    if item.range_first:
        return (), ((f"{COPY_DROPPED}: copies on a range placeholder", len(item.sealed)),)
    dropped: Counter[str] = Counter()
    if len(item.sealed) > max_copies:
        dropped[f"{COPY_DROPPED}: more than {max_copies} copies for one position"] = (
            len(item.sealed) - max_copies)
    good: dict[bytes, SealedCopy] = {}
    spent = 0
    for c in item.sealed[:max_copies]:
        if c.sealed in good:
            continue  # the same copy again: checked once, kept once
        size = len(c.sealed) + COPY_OVERHEAD
        if spent + size > budget:  # more than this node would pass on: not checked
            dropped[f"{COPY_DROPPED}: copies larger than {budget} bytes for one position"] += 1
            continue
        if bad[0] <= 0:
            dropped[f"{COPY_DROPPED}: more than {MAX_BAD_COPIES} bad copies in one batch"] += 1
            continue
        why = history.signs(c.key_id, item.seq) if history is not None else ""
        why = why or check_copy(c, keys, item.origin, item.seq, item.hash, MAX_COPY_BYTES)
        if why:
            dropped[f"{COPY_DROPPED}: {why}"] += 1
            bad[0] -= 1
            continue
        spent += size
        good[c.sealed] = SealedCopy(c.sealed, c.signature, c.key_id)
    return tuple(good.values()), tuple(dropped.items())


def _opened(item: federation_pb2.LogItem, copies: Sequence[SealedCopy],
            privates: Sequence[X25519PrivateKey]) -> federation_pb2.LogItem | None:
    """The item with the envelope (or, for a sealed recall, the signed stub) from
    the copy sealed to this node, if any."""
    for c in copies:
        raw = open_copy(c, privates, item.origin, item.seq, item.hash)
        if raw is None:
            continue
        env = records_pb2.Envelope()
        try:
            env.ParseFromString(raw)
        except DecodeError:
            return None
        opened = federation_pb2.LogItem()
        opened.CopyFrom(item)
        if not env.payload and env.stub:
            # A recall sealed to this center (a later version it may not read):
            # the entry's signed stub, checked like any recall stub.
            opened.stub.CopyFrom(records_pb2.SignedStub(stub=env.stub, signature=env.signature,
                                                        key_id=env.key_id))
        else:
            opened.envelope.CopyFrom(env)
        return opened
    return None


def _pinned_rotation(body: records_pb2.RecordBody, signer_key_id: str,
                     history: KeyHistory) -> bool:
    """After ``peers update --distrust-after SEQ`` the new key is valid from SEQ+1,
    and the center's own rotation to it sits at SEQ+1, signed (the envelope) by the
    old key. It is taken when the new key, pinned out of band, vouches for it: it
    names that key, at that position, and the new key's signature verifies."""
    cur = history.current
    span = history.span_of(signer_key_id)
    # The old key may be the thief's: the new key must have signed this very entry
    # (new_key_entry_signature), not only the key statement, which is public once the
    # center published its rotation and which a thief would wrap in an entry of its own
    # at this position (a fork: the center quarantined again after the runbook).
    return (body.kind == records_pb2.KEY_ROTATION and span is not None
            and body.new_key == cur.key and body.seq == cur.from_seq
            and check_rotation(body, span.key) == ""
            and check_vouched_entry(body, span.key))


# The reason for an entry signed by a key of its origin that was not valid at its
# position (retired by a rotation, or distrusted by the administrator).
WRONG_KEY = "signed by a key not valid at this position"


# A peer whose placeholders for an origin the origin's entries contradicted this
# many times within the window sends no more placeholders for that origin until
# the window has passed (its signed entries are still taken): every rewind needs
# a new false hint, so a hostile hop cannot make a node loop.
MAX_REWINDS = 4
REWIND_WINDOW_MS = 3_600_000
CONTRADICTED = "placeholder contradicted by the origin's entry"
LIAR = "placeholders refused: this peer's were contradicted by the origin"


OWN_LOG = "entries of this node's own log come only from itself"
NOT_ADOPTED = "not the own entry the administrator adopted at this position"


def store_batch(conn: sqlite3.Connection, peer: str, checked: Sequence[Checked],
                now_ms: int, own_center: str, recover_own: bool = False,
                max_copies: int = MAX_COPIES, stopped: set[str] | None = None
                ) -> IngestResult:
    """Place and store verified items, in order, in the caller's transaction.
    ``own_center``: this node; content is kept only where its own policy
    decision for itself is FULL, whichever peer forwarded the entry.
    ``recover_own``: this node is recovering its own log (node.core.recovery): entries
    of its own origin are taken, signed by this node's own keys (envelope or stub,
    verified by check_items) and chain-linked, never over what is held: a
    different signed entry at a held position is a fork. A position a peer holds
    erased and without a stub comes as its hash only: a hint, as for any origin
    (the next signed entry's link proves it or rewinds it), and the node never
    signs on top of a hint (NodeService.own_log_refusal).
    ``max_copies``: sealed copies kept per position ([limits] max_sealed_copies);
    the verified copies of an item are kept once the item is placed.
    ``stopped``: origins whose rest of the batch is skipped (a reject, a rewind, a
    fork); pass one set to every part of a batch stored in parts, so that the
    parts do what one call would."""
    result = IngestResult()
    quarantined = fed_tx.quarantined(conn)
    adopted = recovery_tx.adopted(conn) if recover_own else None
    stopped = set() if stopped is None else stopped
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

    hints_ok: dict[str, bool] = {}

    def may_hint(origin: str) -> bool:
        if origin not in hints_ok:
            hints_ok[origin] = fed_tx.rejections_since(
                conn, peer, origin, CONTRADICTED, now_ms - REWIND_WINDOW_MS) < MAX_REWINDS
        return hints_ok[origin]

    logged_drops: set[tuple[str, str]] = set()
    for c in checked:
        origin, seq = c.item.origin, c.item.seq
        for reason, n in c.dropped:
            # Counted for every copy, by a fixed label; logged against the peer once
            # per origin and label in a batch (at its first position, with that
            # position's reason): a row per item (or per reason, which may quote the
            # peer's key id or seq) would let junk copies on tiny placeholders write
            # a row per 60 bytes. The item itself is judged on its own (a hop may
            # drop copies anyway).
            label = metrics.copy_drop_label(reason)
            result.copies_dropped[label] += n
            if (origin, label) not in logged_drops:
                logged_drops.add((origin, label))
                fed_tx.reject(conn, now_ms, peer, origin, seq, reason)
        if origin in stopped:
            continue
        if origin == own_center and not recover_own:
            mine = log_tx.held(conn, origin, seq)
            if mine is not None and mine.hash == c.item.hash:
                result.duplicates += 1  # our own entry, echoed by a peer: nothing to do
                continue
            reject(c, OWN_LOG)
            continue
        if (origin == own_center and adopted is not None and seq == adopted[0]
                and c.item.hash != adopted[1]):
            # Signed by this node's key too: the key signed two entries here. Only
            # the one the administrator reviewed and adopted is taken back.
            reject(c, NOT_ADOPTED)
            continue
        if origin in quarantined:
            reject(c, "origin quarantined")
            continue
        if c.error:
            if c.error.startswith(WRONG_KEY) and c.item.HasField("envelope"):
                # Possibly signed with a stolen key: kept (bounded) for the
                # administrator's review, never in the log.
                keys_tx.add_distrusted(conn, origin, seq, c.item.hash, c.item.envelope.payload,
                                       c.item.envelope.signature, c.item.envelope.key_id,
                                       peer, now_ms)
            reject(c, c.error)
            continue
        if c.body is None and c.stub is None and origin != peer and not may_hint(origin):
            reject(c, LIAR)
            continue
        if origin not in tips:
            top = log_tx.head(conn, origin)[0]
            tips[origin] = (top, log_tx.held(conn, origin, top) if top else None)
        head, tip = tips[origin]
        first = c.item.range_first  # a range placeholder for first..seq; 0: one position
        if seq == head + 1 or (first and first <= head + 1 < seq):
            at_seq, before = None, tip
        else:
            flush()
            at_seq = log_tx.held(conn, origin, seq)
            before = log_tx.held(conn, origin, seq - 1) if seq > 1 else None
        signed = c.body is not None or c.stub is not None
        prev = c.body.prev if c.body is not None else (None if signed else b"")
        outcome = classify(Incoming(seq, c.item.hash, signed, prev, first), head, at_seq,
                           before)
        if outcome.verdict is Verdict.REJECT:
            reject(c, outcome.reason)
            continue
        if outcome.verdict is Verdict.REWIND:
            flush()
            _rewind(conn, c, now_ms, result)
            stopped.add(origin)
            tips.pop(origin, None)
            cursors.pop(origin, None)
            continue
        if outcome.verdict is Verdict.FORK:
            flush()
            held = log_tx.entry(conn, origin, seq)
            # Evidence is the signed bytes with their signature: a v1 entry's payload;
            # a v2 entry's whole serialized Envelope (payload and the stub its
            # signature covers: verifiable, and the content is there to read); a
            # stub alone where no entry is held or came.
            env = c.item.envelope if c.body else None
            other = ((env.payload if not env.stub else env.SerializeToString(), env.signature)
                     if env is not None else (c.item.stub.stub, c.item.stub.signature))
            held_pair = None
            if held is not None:
                held_env = held.envelope()
                st = held.signed_stub()
                held_pair = ((held_env.payload if not held_env.stub
                              else held_env.SerializeToString(), held.signature)
                             if held_env is not None else
                             (st.stub, st.signature) if st is not None else
                             (None, held.signature))
            fed_tx.record_fork(conn, origin, seq, held_pair, other, peer, now_ms,
                               outcome.reason)
            result.forks.append(f"{origin}: {outcome.reason}")
            stopped.add(origin)
            continue
        if signed and at_seq is not None and not at_seq.signed and outcome.verdict in (
                Verdict.UPGRADE, Verdict.REPLACE):
            # The origin's item lands inside (or at the end of) a range of hints:
            # the position becomes a hint row of its own, handled as before.
            log_tx.isolate_hint(conn, origin, seq, c.item.hash, prev)
            if not at_seq.hash:
                # A position inside a range: what this node served there was no hash
                # at all, and its peers' cursors are past it; its streams serve it
                # again, or a rogue's long range at a hub would hide the origin's
                # next entries from every spoke behind it.
                result.correct(origin, seq)
        body = c.body
        key = ((origin, body.record_id) if body is not None else
               (origin, c.stub.record_id) if c.stub is not None else ("", ""))
        if (outcome.verdict is Verdict.APPEND and body is not None
                and body.kind in log_tx.CONTENT and key in states and states[key] is None
                and key not in fresh_ids and c.entitled(own_center)):
            fresh.append((c.item.envelope, body))
            fresh_stubs.append(c.signed_stub)
            fresh_ids.add(key)
            result.stored += 1
            now_held = Held(c.item.hash, True, True)
        elif outcome.verdict is Verdict.APPEND and not signed:
            # Unsigned hints at the head: one row for the run (log_tx.append_hint).
            flush()
            # A hint for a hole below the head (left by a rewind) is that one position;
            # head + 1 > seq there would make append_hint pull the head's hint row down
            # into the hole (the head lost, a range row ending below its first seq).
            lo = seq if seq <= head else max(first or seq, head + 1)
            # A position with sealed copies is a row of its own (never inside a
            # range, whose inner hashes are not kept): the copies go out with it.
            log_tx.append_hint(conn, origin, lo, seq, c.item.hash, peer, now_ms,
                               alone=bool(c.copies))
            result.stored += 1
            now_held = Held(c.item.hash, False, False)
        else:
            flush()
            _store(conn, peer, c, outcome.verdict, now_ms, result, own_center)
            if c.rotation is not None:
                keys_tx.add_rotation(conn, c.rotation, now_ms)
                result.rotations.append(c.rotation)
            if c.cert is not None:
                a = c.cert
                keys_tx.add_cert(conn, a.origin, a.fingerprint, a.der, a.not_after_ms, a.seq,
                                 now_ms)
                result.certs.append(a)
            if c.seal is not None:
                keys_tx.add_seal(conn, c.seal, now_ms)
                result.seals.append(c.seal)
            states.pop(key, None)  # the record may exist now
            now_held = log_tx.held(conn, origin, seq)
        if seq > head:
            tips[origin] = (seq, now_held)
        elif seq == head:
            tips[origin] = (head, now_held)
        result.changed = result.changed or outcome.verdict is not Verdict.DUPLICATE
        if c.copies:
            flush()  # the position must be in the table to keep copies with it
            _keep_copies(conn, c, outcome.verdict, now_ms, result, max_copies)
        cursors[origin] = seq
    flush()
    for origin, seq in cursors.items():
        fed_tx.set_cursor(conn, peer, origin, seq)
    return result


def _keep_copies(conn: sqlite3.Connection, c: Checked, verdict: Verdict, now_ms: int,
                 result: IngestResult, limit: int) -> None:
    """Keep an item's verified sealed copies with its position, whatever this node
    holds there (the content, evidence, or a placeholder): they are passed on to
    every peer. Only for the hash held here, and as a row of its own (a position
    inside a range of hints is cut out of it). New copies at a position already
    held and served go out again: the node's own streams serve it once more."""
    origin, seq, digest = c.item.origin, c.item.seq, c.item.hash
    held = log_tx.held(conn, origin, seq)
    if held is None or (held.hash and held.hash != digest):
        return  # signed for a hash that is not the one held (a hint lost to it)
    if sealed_tx.erased_here(conn, origin, seq):
        # A version this node erased (superseded, recalled, purged, expired): its
        # copies went with it, and a hop replaying them must not bring them back.
        result.copies_dropped["erased"] += len(c.copies)
        return
    cut = not held.signed and log_tx.in_range(conn, origin, seq)
    if cut:
        log_tx.isolate_hint(conn, origin, seq, digest, b"")
    added, refused = sealed_tx.add(conn, origin, seq, digest, c.copies, now_ms, limit)
    if refused:
        result.copies_dropped["too_many"] += refused
    if added:
        result.copies_stored += added
        result.changed = True
        if verdict is Verdict.DUPLICATE or cut:
            result.correct(origin, seq)


def _rewind(conn: sqlite3.Connection, c: Checked, now_ms: int, result: IngestResult) -> None:
    """The origin's entry contradicts an unsigned placeholder we hold: that hint
    was false. Drop the unsigned placeholders back to the last origin-signed
    position, move every peer's cursor for the origin back there, and let the
    links fetch again. The hint's source is charged with it (see MAX_REWINDS)."""
    origin, seq = c.item.origin, c.item.seq
    _contradicted(conn, origin, seq - 1, now_ms, result)
    back = log_tx.last_signed_before(conn, origin, seq)
    log_tx.drop_hints(conn, origin, back)
    fed_tx.rewind_cursors(conn, origin, back)
    result.rewound.add(origin)
    result.correct(origin, back + 1)


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
           result: IngestResult, own_center: str) -> None:
    """Store one placed item."""
    origin, seq = c.item.origin, c.item.seq
    stub = c.signed_stub
    if verdict is Verdict.DUPLICATE:
        if stub is not None:
            log_tx.set_stub(conn, origin, seq, stub)
        result.duplicates += 1
        return
    if c.body is None:
        # A placeholder. Its unsigned recall fields (deprecated) are ignored: only
        # the origin's stub names the record and version, and proves a recall.
        if verdict is Verdict.UPGRADE:
            log_tx.set_stub(conn, origin, seq, stub)  # type: ignore[arg-type]
        else:
            if verdict is Verdict.REPLACE:
                if c.stub is None and log_tx.entry_source(conn, origin, seq) == origin:
                    # A hint the origin itself gave (over its own authenticated
                    # link) is not displaced by another peer's.
                    fed_tx.reject(conn, now_ms, peer, origin, seq,
                                  "placeholder contradicts the origin's own")
                    result.rejected["placeholder contradicts the origin's own"] += 1
                    return
                if c.stub is None and not c.copies and sealed_tx.vouch_held(conn, origin,
                                                                            seq):
                    # Nor one the origin signed sealed copies for: the copies go out
                    # only with that hash, and the centers they were sealed to may be
                    # behind this node (a hostile peer's hint would cut them off
                    # until the origin's next entry in clear rewinds it).
                    why = "placeholder contradicts the origin's signed copies"
                    fed_tx.reject(conn, now_ms, peer, origin, seq, why)
                    result.rejected[why] += 1
                    return
                if c.stub is None:
                    # Hint against hint: the newer hash, in place (a range keeps its
                    # span: a hint never adds a row below the head).
                    log_tx.replace_hint(conn, origin, seq, c.item.hash, peer, now_ms)
                    result.correct(origin, seq)
                    result.stored += 1
                    return
                if c.stub is not None:
                    _contradicted(conn, origin, seq, now_ms, result, peer)
                log_tx.drop_hints(conn, origin, seq - 1, upto=seq)
                result.correct(origin, seq)
            log_tx.insert_placeholder(
                conn, origin, seq, c.item.hash, peer, now_ms,
                c.stub.record_id if c.stub else None, c.stub.version if c.stub else None,
                stub)
        result.stored += 1
        if c.stub is not None:
            _recall(conn, peer, origin, seq, c.stub, now_ms, result)
        return
    body = c.body
    prior = log_tx.record_state(conn, origin, body.record_id)
    refusal = _refusal(verdict, prior, body)
    if refusal or not c.entitled(own_center):
        # Content never kept; the position keeps the hash and the origin's
        # signature as evidence, and the chain goes on.
        if verdict is Verdict.REPLACE:
            _contradicted(conn, origin, seq, now_ms, result, peer)
        log_tx.insert_evidence(conn, c.item.envelope, body, peer, now_ms, stub)
        if refusal:
            if refusal != "superseded version":  # a peer that is behind: not an attack
                fed_tx.reject(conn, now_ms, peer, origin, seq, refusal)
                result.rejected[refusal] += 1
        else:
            # The origin signed this newer version: whatever older content we
            # hold of the record goes, even though we may not keep this one.
            _recall(conn, peer, origin, seq, body, now_ms, result)
        return
    if verdict is Verdict.UPGRADE:
        log_tx.upgrade_placeholder(conn, c.item.envelope, c.body, peer, now_ms)
        if stub is not None:
            log_tx.set_stub(conn, origin, seq, stub)
    elif verdict is Verdict.REPLACE:
        _contradicted(conn, origin, seq, now_ms, result, peer)
        log_tx.replace_placeholder(conn, c.item.envelope, c.body, c.item.hash, peer, now_ms,
                                   stub)
    else:
        log_tx.insert_entries(conn, [(c.item.envelope, c.body)], peer, now_ms, [stub])
    result.stored += 1
    # An upgrade may fill in a version older than the current one: kept in the
    # log, not applied ('stale').
    if log_tx.apply_entries(conn, [c.body], [prior], defer_since_ms=now_ms)[0] == "applied":
        result.purged = result.purged or c.body.kind == records_pb2.PURGE
        if prior is not None and prior[2] != "recalled":
            notices_tx.lifecycle_notice(conn, now_ms, c.body, prior[1])
