"""STIX 2.1 export and import (issue 13): the service side. Conversion is pure
(node/stix); here are the access decision, the transaction, the audit and the
dissemination log.

Export releases only what the caller may read in FULL, judged record by record
by the same policy function and discovery rule as `search` (a POINTER-level
record is never exported: a STIX consumer cannot honour "whom to call"), and
writes one dissemination row per record (channel `export`) and one audit entry
in the same transaction as the read.

Import converts a bundle into drafts, validates every one exactly like a
publish, and publishes them all through NodeService.publish: one transaction,
all or none. A dry run does every check and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from node.core import record
from node.core.query import SearchParams, discovered
from node.core.stix import export, imports
from node.core.stix.common import MAX_BUNDLE_BYTES
from node.core.timeutil import iso, now_ms
from node.core.types import Decision, Dissemination, Tlp, ValidationError
from node.core.users import User
from node.services.service import NodeService
from node.storage import audit as audit_tx
from node.storage import federation as fed_tx
from node.storage import log as log_tx
from node.wire import records_pb2

MAX_EXPORT_BYTES = 15 * 2**20  # what one local API reply may carry (16 MiB)


async def export_stix(node: NodeService, user: User, params: SearchParams) -> dict[str, Any]:
    requester = node.requester(user)
    now = now_ms()
    names = {c: p.card.name for c, p in node.peers.items()}
    names[node.center] = node.config.name

    def read(conn: sqlite3.Connection) -> list[tuple[records_pb2.RecordBody, int]]:
        found: list[tuple[records_pb2.RecordBody, int]] = []

        def accept(entry: log_tx.StoredEntry, content_match: bool) -> bool:
            body = entry.body()
            if discovered(node.decide(body, requester), params, content_match) \
                    is not Decision.FULL:
                return False  # never a POINTER-level record, and it takes no slot
            found.append((body, entry.seq))
            return True

        log_tx.search(conn, params, now, accept)
        return found

    found = await node.db.read(read)
    bodies = [b for b, _ in found]
    # Building a thousand reports takes seconds (bench/bench_stix.py): on a worker
    # thread, with no database connection held meanwhile.
    bundle = await asyncio.to_thread(export.bundle, bodies, names)
    size = len(json.dumps(bundle))
    if size > MAX_EXPORT_BYTES:
        raise ValidationError(
            f"the export would be {size / 2**20:.1f} MiB, more than "
            f"{MAX_EXPORT_BYTES // 2**20} MiB: narrow the filters or lower --limit")

    def log(conn: sqlite3.Connection) -> None:
        fed_tx.log_disseminations(conn, [
            Dissemination(node.center, user.name, b.origin, b.record_id, b.version, seq,
                          "export", "FULL") for b, seq in found], now)
        audit_tx.append(conn, node.sign_audit, now, user.name, "record.export", {
            "format": "stix2.1", "bundle": bundle["id"], "text": params.text,
            "entities": list(params.entity_keys), "kinds": list(params.kinds),
            "labels": list(params.labels), "origins": list(params.origins),
            "since": iso(params.since_ms),
            "records": [[b.origin, b.record_id, b.version] for b in bodies]})

    # The release is on record before the bundle leaves the daemon.
    await node.db.run(log)
    return {"bundle": bundle, "records": len(bodies)}


def _default_tlp(text: str | None) -> Tlp:
    return Tlp.parse(text) if text else Tlp.AMBER


async def import_stix(node: NodeService, user: User, raw: str, default_tlp: str | None,
                      audience: list[str], dry_run: bool) -> dict[str, Any]:
    size = len(raw.encode())
    if size > MAX_BUNDLE_BYTES:
        raise ValidationError(f"STIX bundle refused: {size / 2**20:.1f} MiB, more than "
                              f"{MAX_BUNDLE_BYTES // 2**20} MiB in one import (split it)")
    tlp = _default_tlp(default_tlp)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"STIX bundle refused: not JSON ({exc})") from None
    # stix2's checks of a large bundle take a while: off the event loop.
    plan = await asyncio.to_thread(imports.plan, data, tlp, tuple(audience))
    drafts = []
    for conv in plan.records:
        try:
            drafts.append(record.parse_draft(conv.draft))
        except ValidationError as exc:
            raise ValidationError(f"STIX bundle refused: {conv.stix_id}: {exc} "
                                  "(nothing was imported)") from None
    groups, known = node.groups(), node.known_centers()
    for conv, draft in zip(plan.records, drafts, strict=True):
        try:
            aud = record.expand_audience(draft.audience, groups, known)
            # The checks build_body makes at publish (expiry, size), with stand-ins
            # for what the node adds.
            record.build_body(draft, origin=node.center, seq=1, prev=b"", record_id="0" * 32,
                              version=1, created_ms=now_ms(), audience=aud,
                              author=user.name, contact=node.config.contact)
        except ValidationError as exc:
            raise ValidationError(f"STIX bundle refused: {conv.stix_id}: {exc} "
                                  "(nothing was imported)") from None
    published: list[dict[str, Any]] = []
    if drafts and not dry_run:
        published = await node.publish(user, drafts, detail={
            "via": "import stix2.1", "bundle": str(data.get("id", ""))})
    rows = []
    for i, (conv, draft) in enumerate(zip(plan.records, drafts, strict=True)):
        row = {"stix_id": conv.stix_id, "kind": draft.kind, "tlp": draft.tlp.label,
               "entities": len(draft.entities), "folded": len(conv.folded),
               "notes": list(conv.notes)}
        if published:
            row["record_id"] = published[i]["record_id"]
        rows.append(row)
    return {"bundle": str(data.get("id", "")), "dry_run": dry_run,
            "imported": 0 if dry_run else len(published), "records": rows,
            "skipped": [{"stix_id": s.stix_id, "reason": s.reason} for s in plan.skipped]}

