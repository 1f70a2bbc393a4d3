"""The node's own operations, composed from the pure core and storage.

Everything the local API offers goes through here: authentication, publishing,
reading under the access policy, users and audit. The gRPC servicer is a thin
adapter over it; federation uses its keyring and change notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from node import metrics, policy, record
from node.audit import AuditEntry, head_message, verify_chain
from node.home import Home, NodeConfig
from node.peers import Peer, all_groups
from node.query import SearchParams, discovered
from node.record import Draft, body_policy, body_to_dict, kind_name
from node.routing import route
from node.signing import (
    AUDIT_DOMAIN,
    RECORD_DOMAIN,
    BadSignature,
    entry_hash,
    key_id,
    open_record,
    raw_public,
    seal_stub,
    sign,
    stub_of,
    verify,
)
from node.storage import audit as audit_tx
from node.storage import log as log_tx
from node.storage import users as users_tx
from node.storage import watches as watch_tx
from node.storage.db import Database
from node.timeutil import iso, now_ms
from node.types import AccessDenied, Decision, FcnodeError, Requester, ValidationError
from node.users import (
    SYSTEM_USER,
    User,
    check_user_name,
    new_token,
    split_token,
    token_matches,
)
from node.wire import records_pb2


class NotFound(FcnodeError):
    pass


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
        self._own_keys = {key_id(signing_key.public_key()): signing_key.public_key()}
        self.own_key_id = key_id(signing_key.public_key())
        self.own_public_key = raw_public(signing_key.public_key())
        self.peers = peers
        self.started = time.monotonic()
        self.changes = ChangeFeed()
        # Called after a user is removed or their attributes change (network
        # watches re-send the attributes their standing queries carry).
        self.users_changed: list[Callable[[], None]] = []
        self._signer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sign")

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
        keys = {}
        for center, peer in peers.items():
            pub = peer.card.public_key()
            keys[center] = {key_id(pub): pub}
        self._peers, self._peer_keys = peers, keys
        self._signers = {kid: c for c, ks in keys.items() for kid in ks}

    def keys_of(self, origin: str) -> dict[str, Ed25519PublicKey]:
        if origin == self.center:
            return self._own_keys
        return self._peer_keys.get(origin, {})

    def signer_of(self, signing_key_id: str) -> str | None:
        """The pinned center (or this one) whose signing key has this id."""
        if signing_key_id in self._own_keys:
            return self.center
        return self._signers.get(signing_key_id)

    def groups(self) -> dict[str, tuple[str, ...]]:
        return all_groups(self.config.groups, self.peers.values())

    def sign_audit(self, message: bytes) -> bytes:
        return sign(self.key, AUDIT_DOMAIN, message)

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

    def append_own(self, conn: sqlite3.Connection, builders: list[Builder], actor: str,
                   action: str, now: int, detail: dict[str, Any] | None = None,
                   new_records: bool = False,
                   per_entry: list[dict[str, Any]] | None = None) -> list[records_pb2.RecordBody]:
        """Sign and append entries to this center's log, inside the caller's
        transaction: each builder gets (conn, seq, prev) and returns the body.
        ``new_records``: every entry is the first version of a new record;
        ``per_entry``: audit detail for each entry (e.g. the routing rules applied)."""
        seq, prev = log_tx.head(conn, self.center)
        bodies, payloads = [], []
        for build in builders:
            seq += 1
            body = build(conn, seq, prev)
            payload = body.SerializeToString(deterministic=True)
            prev = log_tx.entry_hash(payload)  # the chain links payloads, not signatures
            bodies.append(body)
            payloads.append(payload)
        signed = self._sign_all(payloads, bodies)
        sealed = [(env, b) for (env, _), b in zip(signed, bodies, strict=True)]
        stubs = [st for _, st in signed]
        if new_records:
            log_tx.insert_new_records(conn, sealed, "local", now, stubs)
        else:
            log_tx.insert_entries(conn, sealed, "local", now, stubs)
            log_tx.apply_entries(conn, bodies)
        audit_tx.append_many(conn, self.sign_audit, now, [
            (actor, action, {"record_id": b.record_id, "seq": b.seq, "version": b.version,
                             "kind": kind_name(b), "tlp": body_policy(b).tlp.label,
                             "audience": sorted(b.policy.audience), **(detail or {}),
                             **(per_entry[i] if per_entry else {})})
            for i, (_, b) in enumerate(sealed)])
        metrics.ENTRIES_PUBLISHED.inc(len(sealed))
        return [b for _, b in sealed]

    Signed = tuple[records_pb2.Envelope, records_pb2.SignedStub]

    def _sign_all(self, payloads: list[bytes],
                  bodies: list[records_pb2.RecordBody]) -> list[Signed]:
        """Each entry gets two signatures: the envelope, and its content-free stub
        (what proves a recall downstream and what a POINTER carries). The stub costs
        a second Ed25519 signature per publish, about 40 µs a record (sign runs at
        ~25,000/s): publishing does twice the signing work it did without stubs.
        Ed25519 signing releases the GIL: large batches sign on two threads."""
        def seal(chunk: list[tuple[bytes, records_pb2.RecordBody]]) -> list[NodeService.Signed]:
            return [(records_pb2.Envelope(payload=p, signature=sign(self.key, RECORD_DOMAIN, p),
                                          key_id=self.own_key_id),
                     seal_stub(self.key, stub_of(b, entry_hash(p)), self.own_key_id))
                    for p, b in chunk]

        pairs = list(zip(payloads, bodies, strict=True))
        if len(pairs) < 32:
            return seal(pairs)
        half = (len(pairs) + 1) // 2
        first = self._signer.submit(seal, pairs[:half])
        rest = seal(pairs[half:])
        return first.result() + rest

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

    async def publish(self, user: User, drafts: list[Draft]) -> list[dict[str, Any]]:
        """Validate, sign and append every draft in one transaction: all or none."""
        if not drafts:
            raise ValidationError("nothing to publish")
        groups = self.groups()
        known = self.known_centers()
        # Routing rules widen the audience before anything is signed (node/routing.py).
        routed = [route(self.config.routing, d) for d in drafts]
        drafts = [d for d, _ in routed]
        audiences = [record.expand_audience(d.audience, groups, known) for d in drafts]
        per_entry = [{"routing": list(names)} if names else {} for _, names in routed]
        now = now_ms()

        def builder(draft: Draft, audience: frozenset[str]) -> NodeService.Builder:
            return lambda conn, seq, prev: record.build_body(
                draft, origin=self.center, seq=seq, prev=prev,
                record_id=record.new_record_id(), version=1, created_ms=now,
                audience=audience, author=user.name, contact=self.config.contact)

        builders = [builder(d, a) for d, a in zip(drafts, audiences, strict=True)]
        bodies = await self.db.run(lambda conn: self.append_own(
            conn, builders, user.name, "record.publish", now, new_records=True,
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
        discovery rule (node.query: a POINTER only from an entity-key match)."""
        found: list[Visible] = []

        def accept(entry: log_tx.StoredEntry, content_match: bool) -> bool:
            body = entry.body()
            decision = discovered(self.decide(body, requester), params, content_match)
            if decision >= Decision.POINTER:
                found.append(Visible(decision, body, entry))
                return True
            return False

        log_tx.search(conn, params, now, accept)
        return found

    async def search(self, user: User, params: SearchParams) -> list[dict[str, Any]]:
        requester = self.requester(user)
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> list[Visible]:
            found = self.visible(conn, params, requester, now)
            audit_tx.append(conn, self.sign_audit, now, user.name, "search", {
                "text": params.text, "entities": list(params.entity_keys),
                "kinds": list(params.kinds), "labels": list(params.labels),
                "origins": list(params.origins), "since": iso(params.since_ms),
                "behaviors": list(params.behaviors),
                "results": [[v.body.origin, v.body.record_id, v.body.version,
                             v.decision.name] for v in found]})
            return found

        return [v.summary() for v in await self.db.run(tx)]

    async def get(self, user: User, record_id: str) -> dict[str, Any]:
        requester = self.requester(user)
        now = now_ms()

        def tx(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            shown = []
            for entry, state in log_tx.current(conn, record_id):
                body = entry.body()
                decision = self.decide(body, requester)
                if decision < Decision.POINTER:
                    continue
                view = self._view(conn, entry, body, decision, state)
                shown.append(view)
                audit_tx.append(conn, self.sign_audit, now, user.name, "record.view",
                                {"record_id": record_id, "origin": body.origin,
                                 "version": body.version, "access": decision.name})
            if not shown:
                # Same answer for "absent" and "not yours to see": no existence leak.
                audit_tx.append(conn, self.sign_audit, now, user.name, "record.view",
                                {"record_id": record_id, "access": "NONE"})
            return shown

        shown = await self.db.run(tx)
        if not shown:
            raise NotFound(f"no record {record_id!r} that you may see")
        return shown[0]

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
            out["chain"] = "linked" if linked else "BROKEN"
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
        return verify_audit(conn, self.key.public_key())

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
            return {"records": log_tx.counts(conn), "heads": log_tx.heads(conn)}

        data = await self.db.read(tx)
        return {**out, "storage": str(self.db.path), "home": str(self.home.root), **data}


def published(b: records_pb2.RecordBody) -> dict[str, Any]:
    return {"record_id": b.record_id, "origin": b.origin, "seq": b.seq, "version": b.version,
            "kind": kind_name(b)}


def verify_audit(conn: sqlite3.Connection, public: Ed25519PublicKey) -> dict[str, Any]:
    entries: list[AuditEntry] = list(audit_tx.entries(conn))
    head_seq, head_hash, signature = audit_tx.head(conn)
    problems = verify_chain(entries, head_seq, head_hash)
    try:
        if head_seq:
            verify(public, AUDIT_DOMAIN, head_message(head_seq, head_hash), signature)
    except BadSignature:
        problems.append("the signed head does not verify (audit_head was edited)")
    return {"entries": len(entries), "head": head_seq, "ok": not problems,
            "problems": problems}


