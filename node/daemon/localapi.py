"""The local gRPC API (Unix socket): a thin adapter from the typed messages of
proto/fcnode/v1/local.proto to the NodeService. Credentials arrive as metadata
``authorization: Bearer TOKEN``.

The services return dicts (the shapes the CLI prints); node.localtypes turns
them into the reply messages here, at the boundary, and requests arrive as
messages: no JSON is parsed on the way in."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from node.core.localtypes import Request, build, to_dict
from node.core.query import SearchParams, make_params
from node.core.record import parse_draft
from node.core.timeutil import now_ms, parse_duration_ms, parse_instant_ms
from node.core.types import AccessDenied, FcnodeError, ValidationError
from node.core.users import User
from node.services import exchange
from node.services.backup import make_backup
from node.services.lifecycle import Lifecycle
from node.services.service import NodeService, NotFound
from node.services.watches import Watches
from node.storage import audit as audit_tx
from node.storage.db import StorageError
from node.telemetry import logs
from node.wire import local_pb2 as pb
from node.wire import local_pb2_grpc, records_pb2

log = logs.get("fcnode.local")
Handler = Callable[..., Awaitable[Any]]

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (AccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
    (FcnodeError, grpc.StatusCode.FAILED_PRECONDITION),
]

def _token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None



def _status_for(exc: Exception) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


Convert = Callable[[Any], Message]


def _converter(reply: type[Message] | Convert) -> Convert:
    if isinstance(reply, type) and issubclass(reply, Message):
        return lambda data: data if isinstance(data, Message) else build(reply, data)
    return reply


def unary(reply: type[Message] | Convert) -> Callable[[Handler], Handler]:
    """A unary call: the method returns the reply's dict (or the message)."""
    convert = _converter(reply)

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: LocalServicer, request: Message,
                          context: grpc.aio.ServicerContext) -> Message:
            try:
                user = await self.node.authenticate(_token(context))
                return convert(await method(self, user, request))
            except FcnodeError as exc:
                await context.abort(_status_for(exc), str(exc))
            raise AssertionError("unreachable")

        return wrapper

    return decorate


def streaming(reply: type[Message] | Convert) -> Callable[[Handler], Handler]:
    """A server-streaming call: the method returns a list, or an async iterator
    whose items are sent as they come (federated query results)."""
    convert = _converter(reply)

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: LocalServicer, request: Message,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
            try:
                user = await self.node.authenticate(_token(context))
                items = await method(self, user, request)
                if hasattr(items, "__aiter__"):
                    async for item in items:
                        yield convert(item)
                    return
            except FcnodeError as exc:
                await context.abort(_status_for(exc), str(exc))
                return
            for item in items:
                yield convert(item)

        return wrapper

    return decorate


def search_params(f: pb.Filters, default_limit: int = 50) -> SearchParams:
    """The search filters of a request: one place for search and export."""
    return make_params(
        text=f.text, entity_pairs=list(f.entities), kinds=list(f.kinds),
        since_ms=parse_instant_ms(f.since) if f.since else 0, labels=list(f.labels),
        origins=list(f.origins), limit=f.limit or default_limit,
        behaviors=list(f.behaviors))


def draft_dict(d: pb.RecordDraft) -> dict[str, Any]:
    """A draft message as the record file schema that parse_draft validates:
    what was left empty is absent (parse_draft applies the defaults). Written
    out field by field: a batch publish converts thousands of drafts, and the
    generic converter costs ~45 µs a draft (about one signature)."""
    out: dict[str, Any] = {"kind": d.kind, "title": d.title}
    for key in ("narrative", "expires", "contact"):
        if value := getattr(d, key):
            out[key] = value
    for key in ("labels", "behaviors"):
        if values := getattr(d, key):
            out[key] = list(values)
    if d.entities:
        out["entities"] = [{"type": e.type, "value": e.value} for e in d.entities]
    if d.HasField("policy"):
        p = d.policy
        policy: dict[str, Any] = {k: v for k, v in (
            ("tlp", p.tlp), ("audience", list(p.audience)), ("require", list(p.require)),
            ("discoverability", p.discoverability)) if v}
        if p.HasField("relay"):
            policy["relay"] = p.relay
        out["policy"] = policy
    if d.HasField("part23"):
        q = d.part23
        out["part23"] = {k: v for k, v in (
            ("justification", q.justification), ("source_reliability", q.source_reliability),
            ("content_validity", q.content_validity), ("review_due", q.review_due)) if v}
    return out


def published_list(rows: list[dict[str, Any]]) -> pb.PublishedList:
    """The reply of a publish, field by field: the generic converter (build) cost
    3.2 µs a record (8 with routing) on the event loop, this 0.4 (1.5); the same
    message (tests/node/daemon/test_local_roundtrip.py compares them)."""
    reply = pb.PublishedList()
    add = reply.records.add
    for r in rows:
        p = add(record_id=r["record_id"], origin=r["origin"], seq=r["seq"],
                version=r["version"], kind=r["kind"])
        for key in ("routing", "audience"):
            if r.get(key) is not None:
                getattr(p, key).SetInParent()  # present even when empty
                getattr(p, key).items.extend(r[key])
    return reply


def record_view(data: dict[str, Any]) -> pb.RecordView:
    if data.get("access") == "FULL":
        return pb.RecordView(full=build(pb.FullRecord, data))
    return pb.RecordView(pointer=build(pb.PointerRecord, data))


def query_item(item: dict[str, Any]) -> pb.QueryItem:
    if "summary" in item:
        return pb.QueryItem(summary=build(pb.QuerySummary, item))
    if item.get("access") == "FULL":
        return pb.QueryItem(full=build(pb.QueryFull, item))
    return pb.QueryItem(pointer=build(pb.QueryPointer, item))


def status_reply(data: dict[str, Any]) -> pb.StatusReply:
    return build(pb.StatusReply, data)


class LocalServicer(local_pb2_grpc.LocalServicer):
    def __init__(self, node: NodeService, lifecycle: Lifecycle,
                 extensions: dict[str, Handler] | None = None,
                 watches: Watches | None = None) -> None:
        self.node = node
        self.lifecycle = lifecycle
        self.watches = watches or Watches(node)
        # Operations that live outside node/ (peers, federated query) plug in here,
        # so node/ never imports federation/.
        self.extensions = extensions or {}

    async def _extension(self, name: str, user: User, req: Request) -> Any:
        handler = self.extensions.get(name)
        if handler is None:
            raise FcnodeError(f"{name} is not available on this node")
        return await handler(user, req)

    # -- the hot paths ---------------------------------------------------------
    @unary(status_reply)
    async def Status(self, user: User, req: pb.Empty) -> Any:
        status = await self.node.status(user)
        if "status" in self.extensions:
            status.update(await self.extensions["status"](user, Request()))
        return status

    @unary(published_list)
    async def Publish(self, user: User, req: pb.PublishRequest) -> Any:
        return await self.node.publish(user, [parse_draft(draft_dict(r)) for r in req.records])

    @unary(record_view)
    async def Get(self, user: User, req: pb.GetRequest) -> Any:
        return await self.node.get(user, req.record_id)

    @streaming(pb.SearchResult)
    async def Search(self, user: User, req: pb.SearchRequest) -> list[Any]:
        return await self.node.search(user, search_params(req.filters))

    @streaming(query_item)
    async def Query(self, user: User, req: pb.QueryRequest) -> Any:
        # federation/runtime.py reads the fields by name.
        return await self._extension("query", user, Request({
            **to_dict(req.filters), "timeout": req.timeout, "centers": list(req.centers),
            "any_entity": req.any_entity, "hops": req.hops}))

    # -- users and audit ---------------------------------------------------------
    @unary(pb.AddUserReply)
    async def AddUser(self, user: User, req: pb.AddUserRequest) -> Any:
        return await self.node.add_user(user, req.name, list(req.attributes), req.admin)

    @unary(pb.Removed)
    async def RemoveUser(self, user: User, req: pb.UserName) -> Any:
        return await self.node.remove_user(user, req.name)

    @unary(lambda rows: pb.UserList(users=[build(pb.UserRow, r) for r in rows]))
    async def ListUsers(self, user: User, req: pb.Empty) -> Any:
        return await self.node.list_users(user)

    @unary(pb.UserAttributes)
    async def SetUserAttributes(self, user: User, req: pb.SetAttributesRequest) -> Any:
        return await self.node.set_attributes(user, req.name, list(req.attributes))

    @streaming(pb.AuditEntry)
    async def Audit(self, user: User, req: pb.AuditRequest) -> list[Any]:
        return await self.node.audit_entries(
            user, parse_instant_ms(req.since) if req.since else 0, req.limit)

    @unary(pb.AuditVerifyReply)
    async def AuditVerify(self, user: User, req: pb.Empty) -> Any:
        return await self.node.audit_verify(user)

    # -- peers (federation/runtime.py) -------------------------------------------
    async def _peers(self, op: str, user: User, req: Message) -> Any:
        return await self._extension("peers", user, Request({"op": op, **to_dict(req)}))

    @unary(pb.PeerView)
    async def AddPeer(self, user: User, req: pb.AddPeerRequest) -> Any:
        return await self._peers("add", user, req)

    @unary(pb.UpdatedPeer)
    async def UpdatePeer(self, user: User, req: pb.UpdatePeerRequest) -> Any:
        return await self._peers("update", user, req)

    @unary(pb.Removed)
    async def RemovePeer(self, user: User, req: pb.CenterName) -> Any:
        return await self._peers("remove", user, req)

    @unary(lambda rows: pb.PeerList(peers=[build(pb.PeerView, r) for r in rows]))
    async def ListPeers(self, user: User, req: pb.Empty) -> Any:
        return await self._peers("list", user, req)

    @unary(pb.PeerDetail)
    async def ShowPeer(self, user: User, req: pb.CenterName) -> Any:
        return await self._peers("show", user, req)

    @unary(pb.GroupMap)
    async def PeerGroups(self, user: User, req: pb.Empty) -> Any:
        return await self._peers("groups", user, req)

    @streaming(pb.Dissemination)
    async def Disseminations(self, user: User, req: pb.DisseminationsRequest) -> Any:
        return await self._extension("disseminations", user, Request(req))

    @unary(pb.RotateReply)
    async def RotateKey(self, user: User, req: pb.RotateRequest) -> Any:
        return await self._extension("keys", user, Request({"op": "rotate", "which": req.which,
                                                            "stolen": req.stolen,
                                                            "retire": req.retire}))

    # -- a record's life ---------------------------------------------------------
    @unary(pb.LifecycleReply)
    async def Update(self, user: User, req: pb.UpdateRequest) -> Any:
        changes = to_dict(req.changes)  # only what was set: the rest stays as it was
        if not changes:
            raise ValidationError("update needs at least one change")
        return await self.lifecycle.update(user, req.record_id, changes, req.reason)

    @unary(pb.LifecycleReply)
    async def Validate(self, user: User, req: pb.RecordReason) -> Any:
        return await self.lifecycle.validate(user, req.record_id, req.reason)

    @unary(pb.LifecycleReply)
    async def Retract(self, user: User, req: pb.RecordReason) -> Any:
        return await self.lifecycle.end(user, req.record_id, req.reason, records_pb2.RETRACTION)

    @unary(pb.LifecycleReply)
    async def Purge(self, user: User, req: pb.RecordReason) -> Any:
        return await self.lifecycle.end(user, req.record_id, req.reason, records_pb2.PURGE)

    @streaming(pb.ReviewRow)
    async def Review(self, user: User, req: pb.ReviewRequest) -> list[Any]:
        return await self.lifecycle.review(user, parse_duration_ms(req.within or "90d"))

    @streaming(lambda n: pb.Notice(notice_json=_document(n)))
    async def Notices(self, user: User, req: pb.NoticesRequest) -> list[Any]:
        return await self.lifecycle.notices(
            user, parse_instant_ms(req.since) if req.since else 0, req.limit or 1000)

    # -- STIX ---------------------------------------------------------------------
    @unary(pb.ExportReply)
    async def Export(self, user: User, req: pb.ExportRequest) -> Any:
        if req.format != "stix2.1":
            raise ValidationError(f"unknown export format {req.format!r}: use stix2.1")
        return await exchange.export_stix(self.node, user, search_params(req.filters, 1000))

    @unary(pb.ImportReply)
    async def Import(self, user: User, req: pb.ImportRequest) -> Any:
        if req.format != "stix2.1":
            raise ValidationError(f"unknown import format {req.format!r}: use stix2.1")
        if not req.bundle:
            raise ValidationError("import needs the bundle text")
        return await exchange.import_stix(self.node, user, req.bundle, req.tlp or None,
                                          list(req.audience), req.dry_run)

    # -- watches -----------------------------------------------------------------
    @unary(pb.WatchView)
    async def AddWatch(self, user: User, req: pb.AddWatchRequest) -> Any:
        f = req.filters
        params = make_params(text=f.text, entity_pairs=list(f.entities), kinds=list(f.kinds),
                             labels=list(f.labels), behaviors=list(f.behaviors))
        return await self.watches.add(user, params, req.network,
                                      parse_duration_ms(req.expires) if req.expires else None)

    @streaming(pb.WatchView)
    async def ListWatches(self, user: User, req: pb.ListWatchesRequest) -> Any:
        return await self.watches.list(user, req.remote)

    @unary(pb.Removed)
    async def RemoveWatch(self, user: User, req: pb.WatchId) -> Any:
        return await self.watches.remove(user, req.watch_id)

    @streaming(lambda h: pb.LocalWatchHit(hit_json=_document(h)))
    async def WatchHits(self, user: User, req: pb.HitsRequest) -> Any:
        if req.follow:
            return self.watches.follow(user, req.after)
        return await self.watches.hits(user, req.after, req.limit or 1000)

    # -- operations --------------------------------------------------------------
    @unary(pb.RecoveryReply)
    async def FinishRecovery(self, user: User, req: pb.Empty) -> Any:
        """`fcnode recovery finish`: the admin ends the own-log recovery wait
        (no peer holds newer entries of this center's log). Audited."""
        detail = await self.node.finish_recovery(user)
        log.warning("own-log recovery ended by an administrator",
                    extra={"user": user.name, "own_head": detail["own_head_seq"]})
        return detail

    @unary(pb.RecoveryReply)
    async def AdoptOwnLog(self, user: User, req: pb.Empty) -> Any:
        """`fcnode recovery adopt`: the admin decides that the entries that put the
        own log on hold are this node's own (an old copy of node.db). Audited."""
        detail = await self.node.adopt_own_log(user)
        log.warning("held own-log entries adopted by an administrator: recovering",
                    extra={"user": user.name, "peer": detail["adopted"]["peer"],
                           "seq": detail["adopted"]["seq"]})
        return detail

    @unary(pb.BackupReply)
    async def Backup(self, user: User, req: pb.BackupRequest) -> Any:
        """A consistent copy while the daemon runs (admin only): made on its own
        read-only connection in a worker thread, so publishing and replication
        go on meanwhile."""
        self.node.require_admin(user, "backing up the node")
        if not req.path:
            raise ValidationError("backup needs a file path")
        # Purged words still pending in the text index (purges from peers wait for
        # index_compact_s) would be copied into the backup with it: compact first.
        await self.lifecycle.compact_index(force=True)
        result = await asyncio.to_thread(
            make_backup, self.node.home, self.node.center, Path(req.path),
            req.include_keys, req.force)
        await self.node.db.run(lambda c: audit_tx.append(
            c, self.node.sign_audit, now_ms(), user.name, "node.backup", result.audit_detail()))
        log.info("backup written", extra={"file": str(result.path), "keys": result.format == "tar"})
        return result.as_dict()


def _document(data: Any) -> str:
    """Notices and watch hits vary by kind: they travel as JSON documents."""
    return json.dumps(data, ensure_ascii=False)
