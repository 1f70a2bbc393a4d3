"""The node's own operations, composed from the pure core and storage.

Everything the local API offers goes through here: authentication, publishing,
reading under the access policy, users and audit. The gRPC servicer is a thin
adapter over it; federation uses its keyring and change notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.config import keys
from node.config.home import Home, NodeConfig
from node.config.peers import Peer, all_groups
from node.core import policy, record
from node.core.audit import AuditEntry, head_message, verify_chain
from node.core.keyhistory import (
    AnnouncedCert,
    KeyHistory,
    Rotation,
    SealAnnouncement,
    SealKeyInUse,
    announcement,
    build_history,
    check_cert,
    check_seal,
    entry_statement,
    rotation_statement,
    seal_key_in_use,
)
from node.core.query import SearchParams, discovered
from node.core.record import Draft, body_policy, body_to_dict, kind_name
from node.core.recovery import HELD_CHOICE, Held, OwnLogRecovery, held_refusal
from node.core.routing import route
from node.core.sealing import SealedCopy, seal_copy
from node.core.signing import (
    AUDIT_DOMAIN,
    BadSignature,
    envelope_stub,
    key_id,
    open_record,
    open_stub,
    raw_public,
    seal_payload,
    seal_stub,
    sign,
    stub_of,
    verify,
)
from node.core.timeutil import iso, now_ms
from node.core.types import (
    MEMBERS,
    AccessDenied,
    Decision,
    Dissemination,
    FcnodeError,
    Policy,
    Requester,
    ValidationError,
)
from node.core.users import (
    SYSTEM_USER,
    User,
    check_user_name,
    new_token,
    split_token,
    token_matches,
)
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import keys as keys_tx
from node.storage import log as log_tx
from node.storage import recovery as recovery_tx
from node.storage import sealed as sealed_tx
from node.storage import users as users_tx
from node.storage import watches as watch_tx
from node.storage.db import Database
from node.telemetry import logs, metrics
from node.wire import records_pb2

log = logs.get("fcnode.node")

# Seal-key announcements of one center kept in memory (NodeService.learn_seals).
MAX_SEAL_ANNOUNCEMENTS = 256

T = TypeVar("T")


class NotFound(FcnodeError):
    pass


class OwnLogBlocked(FcnodeError):
    """This node may not append to its own log now (recovering it, or forked)."""


class ChangeFeed:
    """Wakes replication streams when the log changes, without lost wake-ups:
    a reader notes the generation before reading and waits only if it is still
    current."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seen: int, timeout: float) -> None:
        if self.generation != seen:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


@dataclass(frozen=True)
class Visible:
    """One record as a reader may see it: the decision and what it allows."""

    decision: Decision
    body: records_pb2.RecordBody
    entry: log_tx.StoredEntry

    def summary(self) -> dict[str, Any]:
        b = self.body
        if self.decision is Decision.FULL:
            return {"record_id": b.record_id, "origin": b.origin, "kind": kind_name(b),
                    "title": b.title, "version": b.version, "seq": b.seq,
                    "tlp": body_policy(b).tlp.label, "created": iso(b.created_ms),
                    "access": "FULL"}
        return {"record_id": b.record_id, "origin": b.origin, "kind": kind_name(b),
                "access": "POINTER", "contact": b.contact}


class NodeService:
    def __init__(self, home: Home, config: NodeConfig, signing_key: Ed25519PrivateKey,
                 db: Database, peers: dict[str, Peer]) -> None:
        self.home = home
        self.config = config
        self.key = signing_key
        self.db = db
        self.own_key_id = key_id(signing_key.public_key())
        self.own_public_key = raw_public(signing_key.public_key())
        # Rotations learned from origins' logs (and this center's own), by origin:
        # they extend what peers.toml pins (node/core/keyhistory.py). Loaded at start.
        self._rotations: dict[str, list[Rotation]] = {}
        self._own_history = KeyHistory.pinned(self.own_public_key)
        self._own_keys = self._own_history.public_keys()
        self._certs: dict[str, dict[str, AnnouncedCert]] = {}
        self._cert_announced_ms: dict[str, int] = {}
        # Seal keys origins announced in their logs (this center's own too), by
        # origin and seq: they win over a card's (keyhistory.seal_key_in_use).
        self._seals: dict[str, dict[int, SealAnnouncement]] = {}
        # seal_key_for is asked for every sealed answer part, copy and hit, and an
        # origin may announce at every entry of its log (a hostile center: 200,000
        # announcements took 68 ms of CPU to sort at each call, bench/bench_seal_keys.py):
        # the answer is kept per center until an announcement, its card or its
        # distrust changes (the generation counts announcement changes).
        self._seal_use: dict[str, tuple[tuple[int, bytes, int], SealKeyInUse]] = {}
        self._seal_generation = 0
        self._seals_trimmed: set[str] = set()  # centers whose oldest were let go
        self._id_secret = ("", b"")  # (key id, secret) for new_record_id
        # Origins quarantined for a fork: two entries signed at one position mean its
        # key may be stolen, and the thief's branch may have announced a seal key of
        # its own. Nothing is sealed to such a center until the stolen-key runbook
        # (peers update --distrust-after) clears it. Loaded at start, kept by ingest.
        self.forked: set[str] = set()
        # This center's private seal keys, current first, then retired ones (they
        # open what was sealed to them before a rotation). One list, changed in
        # place by rotate_seal: the replication links, the query fan-out and the
        # watch client hold it (federation/runtime.py).
        self.seal_privates: list[X25519PrivateKey] = keys.seal_keys(home.encryption_key)
        self.peers = peers
        self.started = time.monotonic()
        self.changes = ChangeFeed()
        self._rotating = asyncio.Lock()
        self.recovery = OwnLogRecovery(started=time.monotonic())
        # Called after a user is removed or their attributes change (network
        # watches re-send the attributes their standing queries carry).
        self.users_changed: list[Callable[[], None]] = []
        # Called after an administrator adopted held own entries: the replication
        # links ask their peers for the own log again (those entries were refused).
        self.own_log_adopted: list[Callable[[], None]] = []
        # Two: a large publish signs on both while the database thread writes the
        # record, text and entity index rows (sqlite releases the GIL too).
        self._signer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sign")

    # -- identity and keys ------------------------------------------------
    @property
    def center(self) -> str:
        return self.config.center

    @property
    def peers(self) -> dict[str, Peer]:
        return self._peers

    @peers.setter
    def peers(self, peers: dict[str, Peer]) -> None:
        """Pin a new set; the public keys are decoded once here, not per envelope."""
        histories = {
            center: build_history(peer.card.signing_key, self._rotations.get(center, ()),
                                  peer.distrusts)
            for center, peer in peers.items()
            # An introduced key in conflict verifies nothing until an admin decides.
            if peer.trusted}
        keys = {center: h.public_keys() for center, h in histories.items()}
        self._peers, self._peer_keys, self._histories = peers, keys, histories
        self._seal_use = {}  # (a center no longer pinned leaves no entry behind)
        self._signers = {kid: c for c, ks in keys.items() for kid in ks}

    def keys_of(self, origin: str) -> dict[str, Ed25519PublicKey]:
        """Every key the origin ever signed with (old ones kept forever); whether a
        key may sign a given position is ``history_of(origin).signs``."""
        if origin == self.center:
            return self._own_keys
        return self._peer_keys.get(origin, {})

    def current_keys_of(self, origin: str) -> dict[str, Ed25519PublicKey]:
        """Only the origin's current key: what signs queries now."""
        history = self.history_of(origin)
        if history is None:
            return {}
        cur = history.current
        return {cur.key_id: Ed25519PublicKey.from_public_bytes(cur.key)}

    def history_of(self, origin: str) -> KeyHistory | None:
        if origin == self.center:
            return self._own_history
        return self._histories.get(origin)

    def _key_owner(self, signer_key_id: str, what: str) -> tuple[str, KeyHistory]:
        """The center that key belongs to and its key history, or BadSignature."""
        origin = self.signer_of(signer_key_id)
        history = self.history_of(origin) if origin else None
        if origin is None or history is None:
            raise BadSignature(f"{what} by a key not pinned for any center")
        return origin, history

    def verified_record(self, env: records_pb2.Envelope) -> records_pb2.RecordBody:
        """An envelope that did not come through ingest (a query answer, a watch hit),
        verified against the key its origin used at that position: an old key is
        valid for what it signed before a rotation, never after (a thief with a
        retired key cannot forge new records). Raises BadSignature."""
        origin, history = self._key_owner(env.key_id, "signed")
        body = open_record(env, self.keys_of(origin))
        why = history.signs(env.key_id, body.seq)
        if why or body.origin != origin:
            raise BadSignature(why or "signed by another center's key")
        return body

    def verified_stub(self, signed: records_pb2.SignedStub) -> records_pb2.EntryStub:
        """A stub verified the same way (a later key may sign stubs of earlier
        positions; a retired key nothing beyond its last seq). Raises BadSignature."""
        origin, history = self._key_owner(signed.key_id, "stub signed")
        stub = open_stub(signed, self.keys_of(origin))
        why = history.stub_signs(signed.key_id, stub.seq)
        if why or stub.origin != origin:
            raise BadSignature(why or "stub signed by another center's key")
        return stub

    def learn_rotations(self, rotations: Iterable[Rotation]) -> bool:
        """Verified rotations (from ingest or from the database at start): rebuild the
        key histories. True if anything changed."""
        changed = False
        for r in rotations:
            known = self._rotations.setdefault(r.origin, [])
            if all(k.seq != r.seq for k in known):
                known.append(r)
                changed = True
        if changed:
            own = sorted(self._rotations.get(self.center, ()), key=lambda r: r.seq)
            if own:
                self._own_history = build_history(own[0].old, own)
                self._own_keys = self._own_history.public_keys()
            self.peers = self._peers
        return changed

    def seal_key_of(self, center: str) -> bytes:
        """What copies, answers and hits for ``center`` are sealed to (b"": nothing
        is sealed to it): seal_key_in_use."""
        return self.seal_key_for(center).key

    def seal_key_for(self, center: str) -> SealKeyInUse:
        """The center's seal key and where it came from: its card's key as far as
        this node believes it (Peer.seal_key), or the newest SEAL_KEY_ROTATION
        of its log (signed by the center: believed from any peer, through hubs),
        which a card offering a key that announcement replaced never overrides.
        Only announcements after the latest `peers update --distrust-after` count
        (the re-pinned card is the root again, as for certificates). A center
        whose keys this node does not trust (an introduced card in conflict) gets
        nothing sealed to it."""
        peer = self.peers.get(center)
        if peer is None or not peer.trusted:
            return SealKeyInUse(b"", "card")
        if center in self.forked:
            return SealKeyInUse(b"", "forked")
        tag = (self._seal_generation, peer.seal_key, peer.distrust_after or 0)
        known = self._seal_use.get(center)
        if known is not None and known[0] == tag:
            return known[1]
        use = seal_key_in_use(peer.seal_key, self._seals.get(center, {}).values(),
                              peer.distrust_after or 0, center not in self._seals_trimmed)
        self._seal_use[center] = (tag, use)
        return use

    def announced_seal_keys(self) -> dict[str, dict[bytes, int]]:
        """Per center, every seal key its log announced or replaced (after its
        latest distrust), with how recent it is (the seq it was announced at, or
        the one before the seq that replaced it): introductions take a card
        carrying either as the center's own, not as a second key, and never
        follow an introducer back to an older one (node/services/introductions.py)."""
        out: dict[str, dict[bytes, int]] = {}
        for center, anns in self._seals.items():
            peer = self.peers.get(center)
            after = peer.distrust_after or 0 if peer is not None else 0
            rank: dict[bytes, int] = {}
            for a in anns.values():
                if a.seq <= after:
                    continue
                rank[a.new] = max(rank.get(a.new, 0), a.seq)
                if a.old:
                    rank[a.old] = max(rank.get(a.old, 0), a.seq - 1)
            out[center] = rank
        return out

    def learn_seals(self, seals: Iterable[SealAnnouncement]) -> bool:
        """Verified seal-key announcements (from ingest, or the database at start).
        True if anything is new. Only the newest MAX_SEAL_ANNOUNCEMENTS of a center
        are kept in memory (all stay in the database): a center that announced a key
        at every entry of its log made every node hold ~260 bytes per entry for good
        (red team, session 17: 52 MB per 200,000). An honest center rotates a few
        times in its life; once a center's oldest are let go, its card's key never
        wins over its log (seal_key_for: ``complete`` False)."""
        changed = False
        for a in seals:
            known = self._seals.setdefault(a.origin, {})
            if a.seq not in known:
                known[a.seq] = a
                changed = True
        for origin, known in self._seals.items():
            if len(known) > MAX_SEAL_ANNOUNCEMENTS:
                self._seals[origin] = {q: known[q] for q in sorted(known)[
                    -MAX_SEAL_ANNOUNCEMENTS:]}
                self._seals_trimmed.add(origin)
        if changed:
            self._seal_generation += 1
        return changed

    def distrusted_key_ids(self, center: str) -> list[tuple[int, set[str]]]:
        """For each ``peers update --distrust-after`` of the center (oldest first): its
        seq and every key learned from the key it replaced, but keys pinned since."""
        peer = self.peers.get(center)
        if peer is None:
            return []
        rotations = self._rotations.get(center, ())
        out = []
        for i, d in enumerate(peer.distrusts):
            later = {key_id(x.key) for x in peer.distrusts[i + 1:]} | {
                key_id(peer.card.signing_key)}
            ids = {s.key_id for s in build_history(d.key, rotations).spans} - later
            out.append((d.after, ids))
        return out

    async def apply_distrust(self, center: str) -> int:
        """Move held entries a distrusted key signed after its seq out of the log,
        for review (idempotent; at start and at peers update)."""
        moved = 0
        for after, ids in self.distrusted_key_ids(center):
            if ids:
                moved += await self.db.run(
                    lambda c, after=after, ids=ids: keys_tx.distrust_held(
                        c, center, after, ids, now_ms()))
        if moved:  # seal keys and certificates announced there are gone with them,
            #        and so is the quarantine (keys_tx.distrust_held)
            self.forked.discard(center)
            self._seals.pop(center, None)
            self._seals_trimmed.discard(center)
            self._seal_generation += 1
            self.learn_seals(a for a in await self.db.read(keys_tx.seals) if a.origin == center)
            self._certs.pop(center, None)
            self.learn_certs(AnnouncedCert(o, f, der, na, seq) for o, f, der, na, seq, _
                             in await self.db.read(keys_tx.certs) if o == center)
        return moved

    def learn_certs(self, certs: Iterable[AnnouncedCert]) -> bool:
        """Certificates origins announced (verified with their signing keys): pinned
        beside the card's until they expire. True if anything is new."""
        changed = False
        for a in certs:
            known = self._certs.setdefault(a.origin, {})
            if a.fingerprint not in known:
                known[a.fingerprint] = a
                changed = True
        return changed

    def announced_certs(self, origin: str | None = None) -> dict[str, list[AnnouncedCert]]:
        """Unexpired announced certificates per origin (peers only), oldest first."""
        now = now_ms()

        def after(o: str) -> int:
            # After peers update the card's certificate is what the administrator
            # pinned: only certificates announced after the distrusted seq count.
            peer = self.peers.get(o)
            return peer.distrust_after or 0 if peer is not None else 0

        # A center quarantined for a fork: its key may be stolen, and a certificate
        # the thief's branch announced would let it connect as the center; only the
        # card's certificate counts until the runbook's distrust ends the quarantine.
        return {o: sorted((a for a in certs.values()
                           if a.not_after_ms > now and a.seq > after(o)), key=lambda a: a.seq)
                for o, certs in self._certs.items()
                if o != self.center and o not in self.forked
                and (origin is None or o == origin)}

    def own_announced(self) -> list[AnnouncedCert]:
        return sorted(self._certs.get(self.center, {}).values(), key=lambda a: a.seq)

    async def announce_cert(self, user: str, der: bytes) -> AnnouncedCert:
        """A CERT_RENEWAL entry in this center's own log carrying ``der``, signed with
        the current signing key: peers pin the certificate when they verify it."""
        now = now_ms()

        def build(conn: sqlite3.Connection, seq: int, prev: bytes) -> records_pb2.RecordBody:
            body = announcement(self.center, seq, prev, self.new_record_id(seq), now,
                                user, self.config.contact)
            body.kind = records_pb2.CERT_RENEWAL
            body.new_tls_cert = der
            return body

        def tx(conn: sqlite3.Connection) -> AnnouncedCert:
            body = self.append_own(conn, [build], user, "key.renew_tls", now)[0]
            announced = check_cert(body)
            if isinstance(announced, str):
                raise ValidationError(announced)
            keys_tx.add_cert(conn, self.center, announced.fingerprint, der,
                             announced.not_after_ms, body.seq, now)
            return announced

        announced = await self.db.run(tx)
        self.learn_certs([announced])
        self._cert_announced_ms[announced.fingerprint] = now
        self.changes.bump()
        return announced

    def announced_at(self, fingerprint: str) -> int | None:
        return self._cert_announced_ms.get(fingerprint)

    async def load_key_history(self) -> None:
        self.learn_rotations(await self.db.read(keys_tx.rotations))
        rows = await self.db.read(keys_tx.certs)
        self.learn_certs(AnnouncedCert(o, f, der, na, seq) for o, f, der, na, seq, _ in rows)
        self._cert_announced_ms.update({f: learned for o, f, _, _, _, learned in rows
                                        if o == self.center})
        self.learn_seals(await self.db.read(keys_tx.seals))
        self.forked = set(await self.db.read(fed_tx.quarantined))
        self._finish_seal_swap()
        self.seal_privates[:] = keys.seal_keys(self.home.encryption_key)
        own = self._seals.get(self.center, {})
        if own and own[max(own)].new != self.own_seal_public():
            # (A home rebuilt from a plain backup, or a key bundle of a release
            # before session 17: neither holds encryption.key.)
            log.warning("encryption.key is not the seal key this center's log announced "
                        "last: peers seal to that one and this node cannot open it; run "
                        "fcnode keys rotate --seal", extra={"announced_seq": max(own)})
        for center in self.peers:
            await self.apply_distrust(center)  # a peers update made while stopped
        nxt = self._next_key_path()
        if nxt.exists():
            pending = keys.load_signing_key(nxt)
            if raw_public(pending.public_key()) == self._own_history.current.key:
                # The rotation committed but the key swap did not: finish it.
                own = sorted(self._rotations[self.center], key=lambda r: r.seq)[-1]
                self._install_key(pending, own.seq, own.old)
            else:
                nxt.unlink()  # the rotation never committed: the old key stays
        if self._own_history.current.key != self.own_public_key:
            raise FcnodeError(
                "signing.key is not the key this center's log names as current (a key "
                "rotation was interrupted or the key file was replaced): restore the "
                "key that the last KEY_ROTATION entry announced")

    def signer_of(self, signing_key_id: str) -> str | None:
        """The pinned center (or this one) whose signing key has this id."""
        if signing_key_id in self._own_keys:
            return self.center
        return self._signers.get(signing_key_id)

    def groups(self) -> dict[str, tuple[str, ...]]:
        return all_groups(self.config.groups, self.peers.values())

    def sign_audit(self, message: bytes) -> bytes:
        return sign(self.key, AUDIT_DOMAIN, message)

    def new_record_id(self, seq: int) -> str:
        """The id of a record this center creates at own-log position ``seq``: its
        cluster keyed by a secret derived from the signing key (a new one after a
        rotation, which only starts a new cluster), so ids made one after another
        share a prefix nobody else can map to positions or times."""
        if self._id_secret[0] != self.own_key_id:
            self._id_secret = (self.own_key_id, hmac.new(
                self.key.private_bytes_raw(), b"fcnode/record-id-secret/v1",
                hashlib.sha256).digest())
        return record.new_record_id(record.id_cluster(self._id_secret[1], seq))

    # -- key rotation -----------------------------------------------------
    def _next_key_path(self) -> Path:
        return self.home.signing_key.with_name(self.home.signing_key.name + ".next")

    async def rotate_signing(self, user: User, stolen: bool = False) -> dict[str, Any]:
        """A new Ed25519 key, announced in a KEY_ROTATION entry signed by the old key
        (the envelope) and the new one (new_key_signature). Crash-safe order: the
        new key file is written (signing.key.next) before the entry commits, and
        swapped in after; load_key_history finishes an interrupted swap at start.
        ``stolen``: the administrator declares entries the current key signed beyond
        this node's head not its own (`keys rotate --signing --stolen`): the one
        append allowed while the own log is held, which it ends (audited), so the
        rotation takes the next position and peers can distrust the old key after
        the one before it (README, "A stolen key: the runbook")."""
        self.require_admin(user, "rotating keys")
        return await _uncancelled(self._rotate_signing(user, stolen))

    async def _rotate_signing(self, user: User, stolen: bool) -> dict[str, Any]:
        async with self._rotating:
            new = Ed25519PrivateKey.generate()
            new_raw = raw_public(new.public_key())
            old_raw = self.own_public_key
            nxt = self._next_key_path()
            nxt.unlink(missing_ok=True)
            keys.write_private(nxt, keys.signing_key_pem(new))
            now = now_ms()

            def build(conn: sqlite3.Connection, seq: int, prev: bytes) -> records_pb2.RecordBody:
                body = announcement(self.center, seq, prev, self.new_record_id(seq), now,
                                    user.name, self.config.contact)
                body.kind = records_pb2.KEY_ROTATION
                body.new_key = new_raw
                body.new_key_signature = new.sign(
                    rotation_statement(self.center, seq, old_raw, new_raw))
                # Over the whole entry too: what a re-pinned peer requires at the
                # vouched position (federation/ingest.py _pinned_rotation).
                body.new_key_entry_signature = new.sign(entry_statement(body, old_raw))
                return body

            def tx(conn: sqlite3.Connection) -> tuple[records_pb2.RecordBody, Held | None]:
                body = self.append_own(conn, [build], user.name, "key.rotate_signing", now,
                                       {"old_key_id": key_id(old_raw),
                                        "new_key_id": key_id(new_raw), "stolen": stolen},
                                       stolen=stolen)[0]
                keys_tx.add_rotation(conn, Rotation(self.center, body.seq, old_raw, new_raw),
                                     now)
                was = recovery_tx.held(conn) if stolen else None
                if was is not None:
                    recovery_tx.release(conn)
                    audit_tx.append(conn, self.sign_audit, now, user.name, "recovery.reject",
                                    {**was.detail(), "rotation_seq": body.seq})
                return body, was

            try:
                body, released = await self.db.run(tx)
            except Exception:  # rolled back (never on a cancel: the entry may commit)
                nxt.unlink(missing_ok=True)
                raise
            self._install_key(new, body.seq, old_raw)
            if released is not None:
                self.recovery.release()
                log.warning("own log no longer held: the administrator declared the signing "
                            "key stolen and rotated it; peers must distrust the old key after "
                            "the seq before the rotation", extra={
                                "user": user.name, "rotation_seq": body.seq,
                                "distrust_after": body.seq - 1})
        self.changes.bump()
        return {"rotated": "signing", "seq": body.seq, "old_key_id": key_id(old_raw),
                "new_key_id": key_id(new_raw)}

    def _install_key(self, new: Ed25519PrivateKey, seq: int, old_raw: bytes) -> None:
        """Swap the key file (the old one kept as signing.key.retired-SEQ) and the
        in-memory key: from here on everything is signed with the new key."""
        path = self.home.signing_key
        retired = path.with_name(f"{path.name}.retired-{seq}")
        if path.exists() and not retired.exists():
            os.link(path, retired)  # keep the old private key only as an admin's copy
        os.replace(self._next_key_path(), path)
        self.key = new
        self.own_key_id = key_id(new.public_key())
        self.own_public_key = raw_public(new.public_key())
        self.learn_rotations([Rotation(self.center, seq, old_raw, self.own_public_key)])

    def own_seal_public(self) -> bytes:
        return keys.encryption_key(self.home.encryption_key).public_key().public_bytes_raw()

    async def rotate_seal(self, user: User, retire: bool = False) -> dict[str, Any]:
        """A new X25519 seal key, announced in a SEAL_KEY_ROTATION entry of this
        center's own log (signed by its signing key, ordered by the log: every
        node that replicates the log seals to the new key from then on, with no
        action at peers). Crash-safe order, as for the signing key: the new key
        file (encryption.key.next) is written before the entry commits and
        swapped in after; load_key_history finishes an interrupted swap. The
        replaced private key stays as encryption.key.retired-SEQ so what was
        sealed to it before still opens; ``retire``: every earlier private seal
        key is deleted instead (after a leak, once nothing sealed to them is
        still wanted: README, "Rotating the seal key")."""
        self.require_admin(user, "rotating keys")
        return await _uncancelled(self._rotate_seal(user, retire))

    async def _rotate_seal(self, user: User, retire: bool) -> dict[str, Any]:
        async with self._rotating:
            self._finish_seal_swap()
            new = X25519PrivateKey.generate()
            new_raw = new.public_key().public_bytes_raw()
            old_raw = self.own_seal_public()
            nxt = keys.next_seal_path(self.home.encryption_key)
            nxt.unlink(missing_ok=True)
            keys.write_private(nxt, keys.x25519_pem(new))
            now = now_ms()

            def build(conn: sqlite3.Connection, seq: int, prev: bytes) -> records_pb2.RecordBody:
                body = announcement(self.center, seq, prev, self.new_record_id(seq), now,
                                    user.name, self.config.contact)
                body.kind = records_pb2.SEAL_KEY_ROTATION
                body.new_seal_key = new_raw
                body.old_seal_key = old_raw
                return body

            def tx(conn: sqlite3.Connection) -> SealAnnouncement:
                body = self.append_own(conn, [build], user.name, "key.rotate_seal", now,
                                       {"retire": retire})[0]
                announced = check_seal(body)
                if isinstance(announced, str):
                    raise ValidationError(announced)
                keys_tx.add_seal(conn, announced, now)
                return announced

            try:
                announced = await self.db.run(tx)
            except Exception:  # rolled back (never on a cancel: the entry may commit)
                nxt.unlink(missing_ok=True)
                raise
            self.learn_seals([announced])
            keys.finish_seal_swap(self.home.encryption_key, (announced.seq, announced.new))
            retired = 0
            if retire:
                for path in keys.retired_seal_paths(self.home.encryption_key):
                    path.unlink()
                    retired += 1
            self.seal_privates[:] = keys.seal_keys(self.home.encryption_key)
            log.warning("seal key rotated", extra={
                "user": user.name, "seq": announced.seq, "retired_keys": retired})
        self.changes.bump()
        return {"rotated": "seal", "seq": announced.seq, "old_key_id": key_id(old_raw),
                "new_key_id": key_id(new_raw), "retired": retired}

    def _finish_seal_swap(self) -> None:
        own = self._seals.get(self.center, {})
        newest = own[max(own)] if own else None
        if keys.finish_seal_swap(self.home.encryption_key,
                                 (newest.seq, newest.new) if newest else None):
            log.warning("finished installing the rotated seal key (interrupted before)")

    # -- users ------------------------------------------------------------
    async def authenticate(self, token: str | None) -> User:
        if not token:
            raise AccessDenied("no credential: set FCNODE_TOKEN or use --token-file")
        try:
            name, secret = split_token(token)
        except ValidationError:
            raise AccessDenied("credential is malformed") from None
        row = await self.db.read(lambda c: users_tx.find(c, name))
        # Compare even for an unknown user, so timing does not tell names apart.
        stored = row.token_hash if row else b"\x00" * 32
        if not token_matches(secret, stored) or row is None:
            raise AccessDenied("credential is not valid (unknown user or wrong token)")
        return User(row.name, frozenset(row.attributes), row.admin)

    async def current_user(self, name: str) -> User:
        """A user as they are now (attributes change; removed users are refused)."""
        row = await self.db.read(lambda c: users_tx.find(c, name))
        if row is None:
            raise AccessDenied(f"user {name!r} no longer exists")
        return User(row.name, frozenset(row.attributes), row.admin)

    def requester(self, user: User) -> Requester:
        return Requester(self.center, user.name, user.attributes)

    @staticmethod
    def require_admin(user: User, what: str) -> None:
        if not user.admin:
            raise AccessDenied(f"{what} needs the admin role; {user.name!r} is not an admin")

    async def add_user(self, actor: User, name: str, attributes: Iterable[str],
                       admin: bool) -> dict[str, Any]:
        self.require_admin(actor, "adding users")
        check_user_name(name)
        if name == SYSTEM_USER:
            raise ValidationError(f"user name {name!r} is reserved for the node itself "
                                  "(its retention sweep edits records under it)")
        attrs = sorted({record.check_attribute(a) for a in attributes})
        if any(a.startswith(policy.USER_ATTR_PREFIX) for a in attrs):
            raise ValidationError("user:… attributes are derived from the user's name; "
                                  "do not assign them")
        token, digest = new_token(name)
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> None:
            if users_tx.find(conn, name):
                raise ValidationError(f"user {name!r} already exists")
            removed = users_tx.was_removed(conn, name)
            if removed is not None:
                # A new person under an old name would read what was shared
                # with user:CENTER/NAME and be taken for its records' author.
                raise ValidationError(f"user name {name!r} was removed on {iso(removed)} and is "
                                      "never issued again; choose another name")
            users_tx.insert(conn, users_tx.UserRow(name, digest, tuple(attrs), admin, now))
            audit_tx.append(conn, self.sign_audit, now, actor.name, "user.add",
                            {"user": name, "attributes": attrs, "admin": admin})

        await self.db.run(tx)
        return {"user": name, "token": token, "attributes": attrs, "admin": admin}

    async def remove_user(self, actor: User, name: str) -> dict[str, Any]:
        self.require_admin(actor, "removing users")
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> None:
            row = users_tx.find(conn, name)
            if row is None:
                raise NotFound(f"no user {name!r}")
            if row.admin and users_tx.admin_count(conn) == 1:
                raise ValidationError(f"{name!r} is the last admin; add another admin first")
            users_tx.delete(conn, name, now)
            watch_tx.remove_owner(conn, name)  # a removed user's watches end with them
            audit_tx.append(conn, self.sign_audit, now, actor.name, "user.remove",
                            {"user": name})

        await self.db.run(tx)
        for callback in self.users_changed:
            callback()
        return {"removed": name}

    async def set_attributes(self, actor: User, name: str,
                             attributes: Iterable[str]) -> dict[str, Any]:
        """Replace a user's attributes (admin): every later decision, including
        each watch hit and its display, uses the new set."""
        self.require_admin(actor, "changing users")
        attrs = sorted({record.check_attribute(a) for a in attributes})
        if any(a.startswith(policy.USER_ATTR_PREFIX) for a in attrs):
            raise ValidationError("user:… attributes are derived from the user's name; "
                                  "do not assign them")
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> None:
            if not users_tx.set_attributes(conn, name, attrs):
                raise NotFound(f"no user {name!r}")
            audit_tx.append(conn, self.sign_audit, now, actor.name, "user.attributes",
                            {"user": name, "attributes": attrs})

        await self.db.run(tx)
        for callback in self.users_changed:
            callback()
        return {"user": name, "attributes": attrs}

    async def list_users(self, actor: User) -> list[dict[str, Any]]:
        self.require_admin(actor, "listing users")
        rows = await self.db.read(users_tx.all_users)
        return [{"user": r.name, "attributes": list(r.attributes), "admin": r.admin,
                 "created": iso(r.created_ms)} for r in rows]

    # -- publishing -------------------------------------------------------
    def known_centers(self) -> set[str]:
        return {self.center, *self.peers}

    Builder = Callable[[sqlite3.Connection, int, bytes], records_pb2.RecordBody]

    # -- own-log recovery (node.core.recovery) ------------------------------------
    def own_log_refusal(self, conn: sqlite3.Connection, stolen: bool = False) -> str:
        """Why appending to this center's log would be wrong now, or ''.
        ``stolen``: the stolen-key rotation (allowed while held)."""
        quarantined = fed_tx.quarantined(conn).get(self.center)
        if quarantined is not None:
            return (f"this center's own log has forked ({quarantined[0]}): a peer holds a "
                    "different entry signed by this node. Nothing more is signed; see "
                    "fcnode status and the README (Operating a node / Restore)")
        head = log_tx.head(conn, self.center)[0]
        top = log_tx.held(conn, self.center, head) if head else None
        if top is not None and not top.signed:
            return (f"recovering own log: the entry at seq {head} is known only by its hash "
                    "from a peer; waiting for a peer to send it signed (or: fcnode recovery "
                    "finish, which drops such unsigned positions)")
        if not stolen and self.recovery.held is None:
            # Ingest commits the held marker in its own transaction and the link
            # sets the state above only after it returns: a write queued behind it
            # on the database thread must not sign over the entries it refused.
            held = recovery_tx.held(conn)
            if held is not None:
                return held_refusal(held)
        return self.recovery.refusal(head, time.monotonic(), stolen)

    async def may_append_own(self) -> None:
        """Before a publish or change: wait (bounded) for the peers' heads of the
        own log that every start asks for, then refuse while recovering."""
        # Polled, not signalled: peers can be pinned meanwhile, and the wait is
        # bounded by settle_s after the start whatever happens.
        while not self.recovery.settled(time.monotonic()):
            await asyncio.sleep(0.05)
        refusal = await self.db.read(self.own_log_refusal)
        if refusal:
            raise OwnLogBlocked(refusal)

    async def load_recovery(self) -> None:
        found, held = await self.db.read(lambda c: (recovery_tx.marker(c), recovery_tx.held(c)))
        if found is not None:
            self.recovery.begin(found[0])
        elif held is not None:
            self.recovery.hold(held)

    async def adopt_own_log(self, user: User) -> dict[str, Any]:
        """The administrator decides that the held own entries are this node's own
        (an old copy of node.db): recovery proceeds as after a restore. Admin only,
        audited; refused when nothing is held (no peer can make this choice)."""
        self.require_admin(user, "adopting held own-log entries")
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> tuple[dict[str, Any], str]:
            was = recovery_tx.held(conn)
            if was is None:
                raise ValidationError("own log is not held: nothing to adopt (fcnode status "
                                      "shows a held own log)")
            reason = f"adopted by {user.name}: {was.describe()}"
            recovery_tx.release(conn)
            recovery_tx.finish(conn)
            recovery_tx.begin(conn, reason, now)
            # What the administrator reviewed is what is adopted at that position.
            recovery_tx.adopt(conn, was)
            head = log_tx.head(conn, self.center)[0]
            detail = {**was.detail(), "own_head_seq": head}
            audit_tx.append(conn, self.sign_audit, now, user.name, "recovery.adopt", detail)
            return detail, reason

        detail, reason = await self.db.run(tx)
        self.recovery.adopt(reason)
        for callback in self.own_log_adopted:
            callback()
        head = detail["own_head_seq"]
        return {"own_head_seq": head, "was_recovering": False, "unsigned_dropped": 0,
                "reason": reason, "peers_reported_ahead": self.recovery.behind(head),
                "adopted": held_view(detail)}

    async def finish_recovery(self, user: User) -> dict[str, Any]:
        """The admin ends the wait: no peer holds newer entries of this log."""
        self.require_admin(user, "ending own-log recovery")
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            held = recovery_tx.held(conn)
            if held is not None:
                # Ending the wait would sign the next position over entries a peer
                # holds signed by this key: the administrator decides what they are.
                raise OwnLogBlocked(f"own log held, not recovering: {held.describe()}. "
                                    f"Decide first: {HELD_CHOICE}")
            head = log_tx.head(conn, self.center)[0]
            was = recovery_tx.marker(conn)
            recovery_tx.finish(conn)
            # Never sign on top of a peer's unsigned hint: positions beyond the
            # last one this node's signature backs are fetched again later.
            last = log_tx.last_signed_before(conn, self.center, head + 1)
            dropped = log_tx.drop_hints(conn, self.center, last)
            head = log_tx.head(conn, self.center)[0]
            detail = {"own_head_seq": head, "was_recovering": was is not None,
                      "unsigned_dropped": dropped,
                      "reason": was[0] if was else "",
                      "peers_reported_ahead": self.recovery.behind(head)}
            audit_tx.append(conn, self.sign_audit, now, user.name, "recovery.finish", detail)
            return detail

        detail = await self.db.run(tx)
        self.recovery.end()
        self.recovery.settle_s = 0.0  # the admin decided: no more waiting at start
        return detail

    def append_own(self, conn: sqlite3.Connection, builders: list[Builder], actor: str,
                   action: str, now: int, detail: dict[str, Any] | None = None,
                   new_records: bool = False,
                   per_entry: list[dict[str, Any]] | None = None,
                   stolen: bool = False,
                   defer_erasure: bool = False) -> list[records_pb2.RecordBody]:
        """Sign and append entries to this center's log, inside the caller's
        transaction: each builder gets (conn, seq, prev) and returns the body.
        ``new_records``: every entry is the first version of a new record;
        ``per_entry``: audit detail for each entry (e.g. the routing rules applied);
        ``stolen``: the stolen-key rotation, the one append allowed while held;
        ``defer_erasure``: a purge's text index compaction is left to the caller
        (the retention sweep compacts once for all the records it purged)."""
        refusal = self.own_log_refusal(conn, stolen)
        if refusal:  # checked again in the write transaction: no race with ingest
            raise OwnLogBlocked(refusal)
        seq, prev = log_tx.head(conn, self.center)
        bodies, payloads = [], []
        for build in builders:
            seq += 1
            body = build(conn, seq, prev)
            payload = body.SerializeToString(deterministic=True)
            prev = log_tx.entry_hash(payload)  # the chain links payloads, not signatures
            bodies.append(body)
            payloads.append(payload)
        # Signing (Ed25519, releases the GIL) runs on the signer threads while
        # this thread writes what does not need the signatures: the record, text
        # and entity index rows of new records, and the audit entries.
        policies = [body_policy(b) for b in bodies]  # once each: copies and audit use it
        recipients = [self.copy_recipients(b, pol) for b, pol in zip(bodies, policies,
                                                                     strict=True)]
        if not new_records:
            recipients = [to + self.recall_recipients(conn, b, to)
                          for b, to in zip(bodies, recipients, strict=True)]
        signing = self._sign_all(payloads, bodies, recipients)
        if new_records:
            log_tx.index_new_records(conn, bodies)
        audit_tx.append_many(conn, self.sign_audit, now, [
            (actor, action, {"record_id": b.record_id, "seq": b.seq, "version": b.version,
                             "kind": kind_name(b), "tlp": policies[i].tlp.label,
                             "audience": sorted(b.policy.audience), **(detail or {}),
                             **(per_entry[i] if per_entry else {})})
            for i, b in enumerate(bodies)])
        signed = [one for part in signing for one in part.result()]
        sealed = [(env, b) for (env, _, _), b in zip(signed, bodies, strict=True)]
        stubs = [st for _, st, _ in signed]
        log_tx.insert_entries(conn, sealed, "local", now, stubs)
        copies = [(b, p, center, c, recall) for (_, _, cs), b, p in zip(
            signed, bodies, payloads, strict=True) for center, c, recall in cs]
        if copies:
            # Stored with the entries (one transaction: no stream serves the entry
            # without them), and each logged as a dissemination to its recipient
            # (28 CFR 23.20(f)): made for that center, whichever hubs carry it.
            sealed_tx.add_own(conn, self.center, [
                (b.seq, log_tx.entry_hash(p), c) for b, p, _, c, _ in copies], now)
            fed_tx.log_disseminations(conn, [
                Dissemination(center, None, self.center, b.record_id, b.version, b.seq,
                              "sealed", "RECALL" if recall else "FULL")
                for b, _, center, _, recall in copies], now)
        if not new_records:
            log_tx.apply_entries(conn, bodies, defer_since_ms=now if defer_erasure else 0)
        metrics.ENTRIES_PUBLISHED.inc(len(sealed))
        return [b for _, b in sealed]

    # (envelope, its stub, its sealed copies: (recipient, copy, a recall?)).
    Signed = tuple[records_pb2.Envelope, records_pb2.SignedStub,
                   list[tuple[str, SealedCopy, bool]]]
    # (center, its X25519 key, a recall: only the entry's signed stub is sealed).
    Recipient = tuple[str, bytes, bool]

    def recall_recipients(self, conn: sqlite3.Connection, body: records_pb2.RecordBody,
                          copies: list[Recipient]) -> list[Recipient]:
        """Centers an earlier version of this record was sealed to that get no copy
        of this one (the audience narrowed, or the record may no longer be
        relayed): sealed to them instead is the entry's signed stub alone (v2: the
        entry's own signature), a recall their older copy yields to. The hubs in
        between hold no content and could not recall it: only this reaches them."""
        if body.version <= 1:
            return []
        have = {c for c, _, _ in copies} | {self.center}
        out = []
        for center in sorted(fed_tx.sealed_to(conn, self.center, body.record_id) - have):
            seal_to = self.seal_key_of(center)
            if seal_to:
                out.append((center, seal_to, True))
        return out[:max(0, self.config.limits.max_sealed_copies - len(copies))]

    def copy_recipients(self, body: records_pb2.RecordBody,
                        pol: Policy | None = None) -> list[Recipient]:
        """(center, X25519 key) of each center this entry is sealed to: the centers
        its audience names (never 'members': every hub may carry that in clear),
        but this one, whose card (pinned or introduced, trusted) has a seal key and
        for which this node's own decision is FULL. At most max_sealed_copies.

        None for a record that may not be relayed (AMBER+STRICT, RED, relay off):
        copies rest in the databases of every hub on the way, for years, and X25519
        is not post-quantum; the origin asked that no other node handle it, so its
        named centers behind hubs read it by query (answers sealed and held in
        memory only on the way), as before."""
        pol = body_policy(body) if pol is None else pol  # (the caller's, if it has it)
        if MEMBERS in pol.audience or not policy.relayable(pol):
            return []
        out = []
        for center in sorted(pol.audience):
            # b"" for an unknown or untrusted card, and for an introduced card
            # whose seal key its center did not sign.
            seal_to = self.seal_key_of(center)
            if center == self.center or not seal_to:
                continue
            if policy.for_replication(pol, self.center, self.center,
                                      center) is Decision.FULL:
                out.append((center, seal_to, False))
        return out[:self.config.limits.max_sealed_copies]

    def _sign_all(self, payloads: list[bytes], bodies: list[records_pb2.RecordBody],
                  recipients: list[list[Recipient]]) -> list[Future[list[Signed]]]:
        """One signature per entry (format v2): over the entry's stub, which holds
        the payload's hash, so the same signature is the content-free stub that
        proves a recall downstream and that a POINTER carries. Signed on the
        signer threads (Ed25519 releases the GIL), a large batch in two halves:
        the futures, in order. Each entry's sealed copies are made there too (HPKE
        of the envelope's bytes, signed by the same key: node/core/sealing.py)."""
        def seal(chunk: list[tuple[bytes, records_pb2.RecordBody,
                                   list[NodeService.Recipient]]]
                 ) -> list[NodeService.Signed]:
            out = []
            for p, b, to in chunk:
                env = seal_payload(self.key, b, p, self.own_key_id)
                raw = env.SerializeToString() if to else b""
                # A recall's plaintext: the envelope without its payload, i.e. the
                # entry's signed stub (same signature), no content.
                stub_only = records_pb2.Envelope(
                    stub=env.stub, signature=env.signature, key_id=env.key_id
                ).SerializeToString() if any(r for _, _, r in to) else b""
                digest = log_tx.entry_hash(p)
                out.append((env, envelope_stub(env), [
                    (center, seal_copy(self.key, key, b.origin, b.seq, digest,
                                       stub_only if recall else raw), recall)
                    for center, key, recall in to]))
            return out  # type: ignore[return-value]

        pairs = list(zip(payloads, bodies, recipients, strict=True))
        if len(pairs) < 32:  # a few: here, no thread hop
            done: Future[list[NodeService.Signed]] = Future()
            done.set_result(seal(pairs))
            return [done]
        half = (len(pairs) + 1) // 2
        return [self._signer.submit(seal, pairs[:half]), self._signer.submit(seal, pairs[half:])]

    async def sign_missing_stubs(self, batch: int = 2000) -> int:
        """Give this center's entries appended before stubs existed their stub
        (content-free, signed with the current key), so that a POINTER to them can
        be verified by the requester: without one, no pointer is answered at all.
        Runs at start; a no-op once done."""
        done, after = 0, 0
        while True:
            entries = await self.db.read(
                lambda c, a=after: log_tx.own_without_stub(c, self.center, a, batch))
            if not entries:
                return done
            stubs = await asyncio.to_thread(lambda es=entries: [
                (e.seq, seal_stub(self.key, stub_of(e.body(), e.hash), self.own_key_id))
                for e in es])
            await self.db.run(lambda c, st=stubs: [log_tx.set_stub(c, self.center, seq, s)
                                                    for seq, s in st])
            done, after = done + len(entries), entries[-1].seq

    async def publish(self, user: User, drafts: list[Draft],
                      detail: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Validate, sign and append every draft in one transaction: all or none.
        ``detail`` goes into each record's audit entry (e.g. which import)."""
        if not drafts:
            raise ValidationError("nothing to publish")
        await self.may_append_own()
        groups = self.groups()
        known = self.known_centers()
        # Routing rules widen the audience before anything is signed (node/core/routing.py).
        routed = [route(self.config.routing, d) for d in drafts]
        drafts = [d for d, _ in routed]
        audiences = [record.expand_audience(d.audience, groups, known) for d in drafts]
        per_entry = [{"routing": list(names)} if names else {} for _, names in routed]
        now = now_ms()

        def builder(draft: Draft, audience: frozenset[str]) -> NodeService.Builder:
            return lambda conn, seq, prev: record.build_body(
                draft, origin=self.center, seq=seq, prev=prev,
                record_id=self.new_record_id(seq), version=1, created_ms=now,
                audience=audience, author=user.name, contact=self.config.contact)

        builders = [builder(d, a) for d, a in zip(drafts, audiences, strict=True)]
        bodies = await self.db.run(lambda conn: self.append_own(
            conn, builders, user.name, "record.publish", now, detail, new_records=True,
            per_entry=per_entry))
        self.changes.bump()
        return [{**published(b), **extra, **({"audience": sorted(b.policy.audience)} if extra
                                               else {})}
                for b, extra in zip(bodies, per_entry, strict=True)]

    # -- reading ----------------------------------------------------------
    def decide(self, body: records_pb2.RecordBody, requester: Requester) -> Decision:
        return policy.decide(body_policy(body), body.origin, self.center, requester)

    def visible(self, conn: sqlite3.Connection, params: SearchParams, requester: Requester,
                now: int) -> list[Visible]:
        """What ``requester`` may see of the records matching ``params`` (FULL or
        POINTER), judged record by record by the policy function and the
        discovery rule (node.query: a POINTER only from an entity-key match).

        Readable records and POINTERs each get the limit, and the POINTERs come
        after, in (origin, record id) order: in one newest-first list cut at one
        limit, where a pointer fell among records whose times the asker knows, or
        whether the limit kept it, would date a record it may not read."""
        full: list[Visible] = []
        pointers: list[Visible] = []
        for entry, content_match in log_tx.matches(conn, params, now):
            body = entry.body()
            decision = discovered(self.decide(body, requester), params, content_match)
            if decision is Decision.FULL and len(full) < params.limit:
                full.append(Visible(decision, body, entry))
            elif decision is Decision.POINTER and len(pointers) < params.limit:
                pointers.append(Visible(decision, body, entry))
            if len(full) >= params.limit and (len(pointers) >= params.limit
                                              or not params.entity_keys):
                break
        pointers.sort(key=lambda v: (v.body.origin, v.body.record_id))
        return full + pointers

    async def search(self, user: User, params: SearchParams) -> list[dict[str, Any]]:
        requester = self.requester(user)
        now = now_ms()
        # The search runs on a reader (it never waits behind ingest); its audit
        # entry is one short write after, committed before the caller sees a
        # result (28 CFR 23.20(f)): urgent, so a catch-up's write transaction
        # lets it in after its current part instead of at its end.
        found = await self.db.read(lambda conn: self.visible(conn, params, requester, now))
        await self.db.run(lambda conn: audit_tx.append(
            conn, self.sign_audit, now, user.name, "search", {
                "text": params.text, "entities": list(params.entity_keys),
                "kinds": list(params.kinds), "labels": list(params.labels),
                "origins": list(params.origins), "since": iso(params.since_ms),
                "behaviors": list(params.behaviors),
                "results": [[v.body.origin, v.body.record_id, v.body.version,
                             v.decision.name] for v in found]}), urgent=True)
        return [v.summary() for v in found]

    async def get(self, user: User, record_id: str) -> dict[str, Any]:
        requester = self.requester(user)
        now = now_ms()

        def read(conn: sqlite3.Connection) -> list[tuple[dict[str, Any], dict[str, Any]]]:
            shown = []
            for entry, state in log_tx.current(conn, record_id):
                body = entry.body()
                decision = self.decide(body, requester)
                if decision < Decision.POINTER:
                    continue
                view = self._view(conn, entry, body, decision, state)
                shown.append((view, {"record_id": record_id, "origin": body.origin,
                                     "version": body.version, "access": decision.name}))
            return shown

        # Read on a reader, then the audit entries in one short write, committed
        # before the view is returned (as search).
        shown = await self.db.read(read)
        # Same audit for "absent" and "not yours to see": no existence leak.
        details = [d for _, d in shown] or [{"record_id": record_id, "access": "NONE"}]
        await self.db.run(lambda conn: [audit_tx.append(
            conn, self.sign_audit, now, user.name, "record.view", d) for d in details],
            urgent=True)
        if not shown:
            raise NotFound(f"no record {record_id!r} that you may see")
        return shown[0][0]

    def _view(self, conn: sqlite3.Connection, entry: log_tx.StoredEntry,
              body: records_pb2.RecordBody, decision: Decision, state: str) -> dict[str, Any]:
        verification = self.verify_entry(conn, entry)
        if decision is Decision.FULL:
            out = body_to_dict(body)
            out.update(access="FULL", state=state, verification=verification)
            return out
        out = Visible(decision, body, entry).summary()
        out.update(state=state, verification=verification)
        return out

    def verify_entry(self, conn: sqlite3.Connection, entry: log_tx.StoredEntry) -> dict[str, Any]:
        """Re-verify a stored entry: signature by its origin's key, and chain link."""
        out: dict[str, Any] = {"signer": entry.origin, "key_id": entry.key_id,
                               "chain_seq": entry.seq}
        try:
            body = open_record(entry.envelope(), self.keys_of(entry.origin))  # type: ignore[arg-type]
            if body.origin != entry.origin or body.seq != entry.seq:
                raise BadSignature("signed origin/seq differ from where it is stored")
            if log_tx.entry_hash(entry.payload or b"") != entry.hash:
                raise BadSignature("stored hash does not match the payload")
            before = log_tx.held(conn, entry.origin, entry.seq - 1) if entry.seq > 1 else None
            linked = (entry.seq == 1 and not body.prev) or (
                before is not None and before.hash == body.prev)
            inside = before is not None and not before.hash  # in a range of hints
            linked = linked or inside
            out["chain"] = ("linked to a range of hints (seq-1 not held by hash)" if inside
                            else "linked" if linked else "BROKEN")
            out["valid"] = linked
        except BadSignature as exc:
            out.update(valid=False, error=str(exc))
        return out

    # -- audit ------------------------------------------------------------
    async def audit_entries(self, user: User, since_ms: int, limit: int) -> list[dict[str, Any]]:
        self.require_admin(user, "reading the audit log")
        rows = await self.db.read(lambda c: list(audit_tx.entries(c, since_ms, limit)))
        return [{"seq": e.seq, "time": iso(e.ts_ms), "actor": e.actor, "action": e.action,
                 "detail": json.loads(e.detail)} for e in rows]

    async def audit_verify(self, user: User) -> dict[str, Any]:
        self.require_admin(user, "verifying the audit log")
        return await self.db.read(self._audit_verify)

    def _audit_verify(self, conn: sqlite3.Connection) -> dict[str, Any]:
        # The head is re-signed at every append with the key current then: right
        # after a rotation it is still the old key's (kept in the own history).
        return verify_audit(conn, self.key.public_key(), list(self._own_keys.values()))

    # -- status -----------------------------------------------------------
    async def status(self, user: User) -> dict[str, Any]:
        """Record counts per origin and state, heads and paths are metadata about
        what this center holds (need-to-know): admins only. Anyone else sees
        which node this is and how long it has run."""
        out: dict[str, Any] = {"center": self.center, "name": self.config.name,
                               "uptime_s": round(time.monotonic() - self.started, 1)}
        if not user.admin:
            return out

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            head = log_tx.head(conn, self.center)[0]
            own: dict[str, Any] = {"head": head, "recovering": self.recovery.active,
                                   "behind": self.recovery.behind(head),
                                   "reason": self.recovery.reason,
                                   "blocked": self.own_log_refusal(conn)}
            held = recovery_tx.held(conn)
            if held is not None:
                own["held"] = held_view(held.detail())
            out = {"records": log_tx.counts(conn), "heads": log_tx.heads(conn),
                   "own_log": own}
            pending = log_tx.erasure_pending(conn)
            if pending is not None:
                since, purges = pending
                out["index_erasure"] = {
                    "purges": purges, "since": iso(since),
                    "due": iso(since + int(self.config.limits.index_compact_s * 1000))}
            return out

        data = await self.db.read(tx)
        return {**out, "storage": str(self.db.path), "home": str(self.home.root), **data}


async def _uncancelled(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled (a CLI call that
    times out, a client that goes away): a key rotation's entry is committed by
    the database thread whatever happens to the caller, and the key file swap
    after it must not be skipped, or peers would seal or verify with a key this
    node no longer holds. (At a shutdown that cancels the task itself, the new
    key file stays and the next start finishes or drops the swap.)"""
    return await asyncio.shield(asyncio.ensure_future(work))


def held_view(detail: dict[str, Any]) -> dict[str, Any]:
    return {"peer": detail["peer"], "seq": detail["seq"], "own_head": detail["own_head"],
            "entry_hash": detail["entry_hash"], "since": iso(detail["since_ms"])}


def published(b: records_pb2.RecordBody) -> dict[str, Any]:
    return {"record_id": b.record_id, "origin": b.origin, "seq": b.seq, "version": b.version,
            "kind": kind_name(b)}


def verify_audit(conn: sqlite3.Connection, public: Ed25519PublicKey,
                 earlier: Iterable[Ed25519PublicKey] = ()) -> dict[str, Any]:
    """``earlier``: this center's retired signing keys (the head may be the last
    one's signature, right after a key rotation)."""
    entries: list[AuditEntry] = list(audit_tx.entries(conn))
    head_seq, head_hash, signature = audit_tx.head(conn)
    problems = verify_chain(entries, head_seq, head_hash)
    if head_seq:
        for key in (public, *earlier):
            try:
                verify(key, AUDIT_DOMAIN, head_message(head_seq, head_hash), signature)
                break
            except BadSignature:
                continue
        else:
            problems.append("the signed head does not verify (audit_head was edited)")
    return {"entries": len(entries), "head": head_seq, "ok": not problems,
            "problems": problems}


