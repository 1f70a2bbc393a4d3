"""Record lifecycle at the origin: update, retract, validate, purge, review,
and the retention sweep (28 CFR 23.20(h)).

Every change is a new entry in the origin's log that refers to the record_id
and carries the next version, so it travels exactly like a publish: newest
version wins on every node, a purge leaves a signed tombstone, and a holder
that may no longer read the record is sent a content-free recall.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import sqlite3
import time
from typing import Any

from node.core import record
from node.core.record import RETENTION_MS, body_policy, body_to_dict, kind_name
from node.core.timeutil import iso, now_ms
from node.core.types import AccessDenied, Decision, ValidationError
from node.core.users import SYSTEM_USER, User
from node.services.service import NodeService, NotFound, published
from node.services.tasks import cancel_and_wait
from node.services.watches import hit_view as watch_view
from node.storage import audit as audit_tx
from node.storage import log as log_tx
from node.storage import notices as notices_tx
from node.telemetry import logs, metrics
from node.wire import records_pb2

log = logs.get("fcnode.lifecycle")


def draft_of(body: records_pb2.RecordBody) -> dict[str, Any]:
    """A record's current content in the publish JSON schema (what update edits)."""
    full = body_to_dict(body)
    return {
        "kind": full["kind"], "title": full["title"], "narrative": full["narrative"],
        "labels": full["labels"], "entities": full["entities"],
        "behaviors": full["behaviors"],
        "policy": {"tlp": full["tlp"], "audience": full["audience"],
                   "require": full["require"], "discoverability": full["discoverability"],
                   "relay": full["relay"]},
        "part23": {"justification": full["justification"],
                   "source_reliability": full["source_reliability"],
                   "content_validity": full["content_validity"],
                   "review_due": full["review_due"]},
        "expires": full["expires"], "contact": full["contact"],
    }


def unseen(record_id: str) -> str:
    """The one answer for a record that is absent or that the user may not see."""
    return f"no record {record_id!r} that you may see and change at this center"


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Changes override the current content; policy and part23 merge per field."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if key in ("policy", "part23") and isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


class Lifecycle:
    def __init__(self, node: NodeService) -> None:
        self.node = node
        self._sweeper: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None

    def _current(self, conn: sqlite3.Connection, user: User, record_id: str,
                 states: tuple[str, ...] = ("active",), blind_ok: bool = False
                 ) -> tuple[records_pb2.RecordBody, int]:
        """The origin's newest content version of a record, and its current version.

        "Absent" and "not yours to see" get one answer, as ``get`` gives: a user
        must not learn from a refused change that a record exists, whose it is or
        what state it is in. ``blind_ok``: an admin or the record's author may end
        a record without reading it (retention, or a record found unreliable),
        never change its content."""
        node = self.node
        requester = node.requester(user)
        state = log_tx.record_state(conn, node.center, record_id)
        found = log_tx.latest_content(conn, node.center, record_id) if state else None
        if state is None or found is None:
            # Another center's copy the user may read anyway: say why, it reveals
            # nothing more. Otherwise, the one answer for "no such record".
            if any(node.decide(e.body(), requester) is Decision.FULL
                   for e, _ in log_tx.current(conn, record_id)):
                raise AccessDenied(f"record {record_id} belongs to another center: only its "
                                   "origin can change it")
            raise NotFound(unseen(record_id))
        body = found[0].body()
        blind = blind_ok and (user.admin or user.name == body.author)
        if not blind and node.decide(body, requester) is not Decision.FULL:
            raise NotFound(unseen(record_id))
        if state[2] not in states:
            raise ValidationError(f"record {record_id} is {state[2]}; it cannot change")
        return body, state[1]

    async def update(self, user: User, record_id: str, changes: dict[str, Any],
                     reason: str = "", action: str = "record.update") -> dict[str, Any]:
        node = self.node
        now = now_ms()
        groups = node.groups()

        def build(conn: sqlite3.Connection, seq: int, prev: bytes) -> records_pb2.RecordBody:
            body, version = self._current(conn, user, record_id)
            draft = record.parse_draft(merge(draft_of(body), changes))
            # Centers already in the audience stay valid even if since unpinned.
            known = node.known_centers() | set(body.policy.audience)
            audience = record.expand_audience(draft.audience, groups, known)
            # The author is the first version's, whoever edits: authorship decides
            # who may change the policy and end the record blind.
            new = record.build_body(
                draft, origin=node.center, seq=seq, prev=prev, record_id=record_id,
                version=version + 1, created_ms=now, audience=audience, author=body.author,
                contact=draft.contact or body.contact)
            # Judged on the result, not on the request: any change to the signed
            # policy, however it was asked for (flags, --file), needs the author.
            if new.policy != body.policy and not (user.admin or user.name == body.author):
                raise AccessDenied("only the record's author or an admin may change its "
                                   "access policy")
            new.editor = user.name
            new.reason = reason
            return new

        bodies = await self._append(user, record_id, action, now, build,
                                    {"reason": reason} if reason else None)
        node.changes.bump()
        return published(bodies[0])

    async def _append(self, user: User, record_id: str, action: str, now: int,
                      build: NodeService.Builder, detail: dict[str, Any] | None,
                      defer_erasure: bool = False) -> list[records_pb2.RecordBody]:
        """Append one change; a refusal for access is audited, as get audits a view
        that showed nothing (an analyst probing record ids leaves a trace)."""
        node = self.node
        await node.may_append_own()
        try:
            return await node.db.run(lambda conn: node.append_own(
                conn, [build], user.name, action, now, detail, defer_erasure=defer_erasure))
        except (NotFound, AccessDenied):
            await node.db.run(lambda conn: audit_tx.append(
                conn, node.sign_audit, now, user.name, action,
                {"record_id": record_id, "refused": True}))
            raise

    async def validate(self, user: User, record_id: str, reason: str) -> dict[str, Any]:
        """28 CFR 23.20(h): a reviewed record is kept another retention period."""
        if not reason.strip():
            raise ValidationError("validate needs --reason (what the review found)")
        now = now_ms()
        expires = iso(now + RETENTION_MS - 60_000)
        return await self.update(user, record_id, {"expires": expires,
                                                   "part23": {"review_due": expires}},
                                 reason=reason.strip(), action="record.validate")

    async def end(self, user: User, record_id: str, reason: str, kind: int,
                  system: bool = False) -> dict[str, Any]:
        """Retract or purge: a content-free entry with the record's last policy.
        ``system``: the retention sweep, which purges whatever the state."""
        if not reason.strip():
            raise ValidationError("a reason is required (--reason TEXT)")
        node = self.node
        now = now_ms()
        action = "record.purge" if kind == records_pb2.PURGE else "record.retract"

        def build(conn: sqlite3.Connection, seq: int, prev: bytes) -> records_pb2.RecordBody:
            if system:
                state = log_tx.record_state(conn, node.center, record_id)
                found = log_tx.latest_content(conn, node.center, record_id)
                if state is None or found is None or state[2] == "purged":
                    raise NotFound(record_id)
                body, version = found[0].body(), state[1]
            else:
                # A retracted record can still be purged.
                body, version = self._current(conn, user, record_id, ("active", "retracted"),
                                              blind_ok=True)
            return records_pb2.RecordBody(
                origin=node.center, seq=seq, prev=prev, record_id=record_id,
                version=version + 1, created_ms=now, expires_ms=body.expires_ms, kind=kind,
                policy=body.policy, author=body.author, editor=user.name,
                contact=body.contact, reason=reason.strip())

        # The retention sweep's purges compact the text index once per sweep, not
        # once per record (a rewrite of the whole index each), and checkpoint then.
        bodies = await self._append(user, record_id, action, now, build,
                                    {"reason": reason.strip()}, defer_erasure=system)
        if kind == records_pb2.PURGE and not system:
            await node.db.checkpoint()
        node.changes.bump()
        return published(bodies[0])

    async def review(self, user: User, within_ms: int) -> list[dict[str, Any]]:
        node = self.node
        before = now_ms() + within_ms
        entries = await node.db.read(lambda c: log_tx.review_due(c, node.center, before))
        out = []
        for e in entries:
            b = e.body()
            if node.decide(b, node.requester(user)) is not Decision.FULL:
                continue
            out.append({"record_id": b.record_id, "kind": kind_name(b), "title": b.title,
                        "version": b.version, "tlp": body_policy(b).tlp.label,
                        "review_due": iso(b.part23.review_due_ms), "expires": iso(b.expires_ms),
                        "overdue": b.part23.review_due_ms <= now_ms()})
        return out

    async def notices(self, user: User, since_ms: int, limit: int) -> list[dict[str, Any]]:
        """Notices about records: an admin sees them all; an analyst only those on
        records they may read in full now (a notice names people and searches)."""
        node = self.node
        requester = node.requester(user)

        def tx(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            out = []
            def readable(record_id: str, origin: str) -> bool:
                return user.admin or any(
                    e.origin == origin and node.decide(e.body(), requester) is Decision.FULL
                    for e, _ in log_tx.current(conn, record_id))

            for ts, kind, origin, record_id, detail in notices_tx.listing(conn, since_ms, limit):
                fields = json.loads(detail)
                if kind == "watch":
                    # A watch's hits are its owner's, judged again now (their
                    # current attributes): the record, a pointer, or nothing.
                    if fields.get("owner") != user.name:
                        continue
                    shown = watch_view(node, conn, user, fields.get("hit", 0))
                    if shown is None:
                        continue
                    out.append({"time": iso(ts), "kind": kind, "origin": origin,
                                "record_id": record_id, "watch_id": fields.get("watch_id"),
                                "access": shown["access"], "version": fields.get("version")})
                    continue
                if kind == "deconfliction" and "records" in fields:
                    # One notice per query, naming every matched record: an analyst
                    # sees it naming only the records they may read in full.
                    fields["records"] = [r for r in fields["records"] if readable(r, origin)]
                    if not fields["records"]:
                        continue
                    if not user.admin:
                        fields.pop("matched", None)  # counts records they may not read
                    record_id = fields["records"][0]
                elif not readable(record_id, origin):
                    continue
                out.append({"time": iso(ts), "kind": kind, "origin": origin,
                            "record_id": record_id, **fields})
            return out

        return await node.db.read(tx)

    # -- retention sweep ----------------------------------------------------------
    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="retention-sweep")
        self._compactor = asyncio.create_task(self._compact_forever(), name="index-compaction")

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        await cancel_and_wait(self._compactor)

    async def finish(self) -> None:
        """On the way out (after replication stopped, before the database closes),
        whatever erasure is pending: purged text must not wait in the file for the
        next start (the row survives a crash: compacted then, at once if due)."""
        try:
            await self.compact_index(force=True)
        except Exception:
            log.exception("text index compaction at shutdown failed")

    # -- erasure from the text index ---------------------------------------------
    # A purge that arrives from a peer deletes the record from the text index at
    # once (search never finds it again); the terms leave the index's segments,
    # and so the database file, at the next FTS5 'optimize', which rewrites the
    # whole index. One per purge let any origin purging its records one by one
    # make every node in the network rewrite its index again and again; here it
    # runs at most once per [limits] index_compact_s, counted from the oldest
    # purge not compacted yet. This node's own purges (its administrator's
    # request) compact at once.
    async def _compact_forever(self) -> None:
        while True:
            wait = self.node.config.limits.index_compact_s
            try:
                left = await self.compact_index()
                if left is not None:
                    wait = min(wait, left)
            except Exception:  # it retries next round
                log.exception("text index compaction failed")
            await asyncio.sleep(max(wait, 0.05))

    async def compact_index(self, force: bool = False) -> float | None:
        """Compact the text index if purges are pending and the oldest has waited
        index_compact_s (``force``: at once). Seconds until it is due when some
        are pending but not yet; None otherwise."""
        node = self.node
        pending = await node.db.read(log_tx.erasure_pending)
        if pending is None:
            return None
        since_ms, purges = pending
        left = since_ms / 1000 + node.config.limits.index_compact_s - time.time()
        if left > 0 and not force:
            return left
        started = time.monotonic()
        await node.db.run(log_tx.compact_index)
        await node.db.checkpoint()  # the index's old pages leave the WAL too
        took = time.monotonic() - started
        metrics.INDEX_COMPACTIONS.inc()
        metrics.INDEX_COMPACTION_SECONDS.observe(took)
        log.info("text index compacted", extra={
            "purges": purges, "waited_s": round(now_ms() / 1000 - since_ms / 1000, 1),
            "took_s": round(took, 3)})
        return None

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the sweep must not die; it retries next round
                log.exception("retention sweep failed")
            await asyncio.sleep(self.node.config.limits.retention_sweep_s)

    async def sweep(self) -> int:
        """Purge what has expired: this center's own records with a signed purge
        that travels; copies of other centers' records locally (their origin's
        purge follows when it can reach us)."""
        node = self.node
        now = now_ms()
        keep = node.config.limits.max_notices
        await node.db.run(lambda c: [notices_tx.prune(c, k, keep) for k in notices_tx.kinds(c)])
        due = await node.db.read(lambda c: log_tx.expired(c, now))
        system = User(SYSTEM_USER, frozenset(), True)
        own_blocked = bool(await node.db.read(node.own_log_refusal))
        own = 0
        for origin, record_id in due:
            if origin == node.center and own_blocked:
                continue  # recovering its own log: the purge is signed once it may append
            if origin == node.center:
                with contextlib.suppress(NotFound, ValidationError):
                    await self.end(system, record_id, "retention period ended (28 CFR 23.20(h))",
                                   records_pb2.PURGE, system=True)
                    own += 1
            else:
                await node.db.run(lambda c, o=origin, r=record_id: (
                    log_tx.purge_locally(c, o, r, "expired", defer_since_ms=now),
                    notices_tx.add(c, now, "purge", o, r, {"reason": "expired at this holder"})))
        if own:
            # This center's own purges leave the index file now (once for all of
            # them); copies of others' records wait for index_compact_s like any
            # purge that a peer's record causes.
            await self.compact_index(force=True)
        if due:
            await node.db.checkpoint()
            log.info("retention sweep purged records", extra={"count": len(due)})
        return len(due)


