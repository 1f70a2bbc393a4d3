"""The local gRPC API (Unix socket): a thin adapter from JSON requests to the
NodeService. Credentials arrive as metadata ``authorization: Bearer TOKEN``."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from node import exchange, logs
from node.backup import make_backup
from node.lifecycle import Lifecycle
from node.query import SearchParams, make_params
from node.record import parse_draft
from node.service import NodeService, NotFound
from node.storage import audit as audit_tx
from node.storage.db import StorageError
from node.timeutil import now_ms, parse_duration_ms, parse_instant_ms
from node.types import AccessDenied, FcnodeError, ValidationError
from node.users import User
from node.watches import Watches
from node.wire import local_pb2, local_pb2_grpc, records_pb2

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


def reply(data: Any) -> local_pb2.JsonReply:
    return local_pb2.JsonReply(json=json.dumps(data))


class Request:
    """The parsed JSON body, with typed accessors that fail with clear errors."""

    def __init__(self, raw: str) -> None:
        try:
            self.data = json.loads(raw or "{}")
        except json.JSONDecodeError as exc:
            raise ValidationError(f"request is not JSON: {exc}") from None
        if not isinstance(self.data, dict):
            raise ValidationError("request must be a JSON object")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def strings(self, key: str) -> list[str]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError(f"{key} must be a list of strings")
        return value


def _status_for(exc: Exception) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def unary(method: Handler) -> Handler:
    @functools.wraps(method)
    async def wrapper(self: LocalServicer, request: local_pb2.JsonRequest,
                      context: grpc.aio.ServicerContext) -> local_pb2.JsonReply:
        try:
            user = await self.node.authenticate(_token(context))
            return reply(await method(self, user, Request(request.json)))
        except FcnodeError as exc:
            await context.abort(_status_for(exc), str(exc))
        raise AssertionError("unreachable")

    return wrapper


def streaming(method: Callable[..., Awaitable[Any]]) -> Handler:
    """A server-streaming call: the method returns a list, or an async iterator
    whose items are sent as they come (federated query results)."""
    @functools.wraps(method)
    async def wrapper(self: LocalServicer, request: local_pb2.JsonRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[local_pb2.JsonReply]:
        try:
            user = await self.node.authenticate(_token(context))
            items = await method(self, user, Request(request.json))
            if hasattr(items, "__aiter__"):
                async for item in items:
                    yield reply(item)
                return
        except FcnodeError as exc:
            await context.abort(_status_for(exc), str(exc))
            return
        for item in items:
            yield reply(item)

    return wrapper


def search_params(req: Request) -> SearchParams:
    """The search filters of a request: one place for search and export."""
    since = req.get("since")
    return make_params(
        text=str(req.get("text") or ""), entity_pairs=req.strings("entities"),
        kinds=req.strings("kinds"), since_ms=parse_instant_ms(since) if since else 0,
        labels=req.strings("labels"), origins=req.strings("origins"),
        limit=int(req.get("limit") or 50), behaviors=req.strings("behaviors"))


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

    @unary
    async def Status(self, user: User, req: Request) -> Any:
        status = await self.node.status(user)
        if "status" in self.extensions:
            status.update(await self.extensions["status"](user, req))
        return status

    @unary
    async def Publish(self, user: User, req: Request) -> Any:
        records = req.get("records")
        if not isinstance(records, list):
            raise ValidationError("records must be a list")
        return await self.node.publish(user, [parse_draft(r) for r in records])

    @unary
    async def Get(self, user: User, req: Request) -> Any:
        return await self.node.get(user, str(req.get("record_id", "")))

    @streaming
    async def Search(self, user: User, req: Request) -> list[Any]:
        return await self.node.search(user, search_params(req))

    @unary
    async def Export(self, user: User, req: Request) -> Any:
        if req.get("format") != "stix2.1":
            raise ValidationError(f"unknown export format {req.get('format')!r}: use stix2.1")
        return await exchange.export_stix(self.node, user, search_params(req))

    @unary
    async def Import(self, user: User, req: Request) -> Any:
        if req.get("format") != "stix2.1":
            raise ValidationError(f"unknown import format {req.get('format')!r}: use stix2.1")
        bundle = req.get("bundle")
        if not isinstance(bundle, str):
            raise ValidationError("import needs the bundle text")
        return await exchange.import_stix(self.node, user, bundle, req.get("tlp"),
                                          req.strings("audience"), bool(req.get("dry_run")))

    @unary
    async def Users(self, user: User, req: Request) -> Any:
        op = req.get("op")
        if op == "add":
            return await self.node.add_user(user, str(req.get("name", "")),
                                            req.strings("attributes"), bool(req.get("admin")))
        if op == "remove":
            return await self.node.remove_user(user, str(req.get("name", "")))
        if op == "list":
            return await self.node.list_users(user)
        if op == "set":
            return await self.node.set_attributes(user, str(req.get("name", "")),
                                                  req.strings("attributes"))
        raise ValidationError(f"unknown users operation {op!r}")

    @streaming
    async def Audit(self, user: User, req: Request) -> list[Any]:
        since = req.get("since")
        return await self.node.audit_entries(
            user, parse_instant_ms(since) if since else 0, int(req.get("limit") or 0))

    @unary
    async def AuditVerify(self, user: User, req: Request) -> Any:
        return await self.node.audit_verify(user)

    async def _extension(self, name: str, user: User, req: Request) -> Any:
        handler = self.extensions.get(name)
        if handler is None:
            raise FcnodeError(f"{name} is not available on this node")
        return await handler(user, req)

    @unary
    async def Keys(self, user: User, req: Request) -> Any:
        return await self._extension("keys", user, req)

    @unary
    async def Peers(self, user: User, req: Request) -> Any:
        return await self._extension("peers", user, req)

    @streaming
    async def Disseminations(self, user: User, req: Request) -> list[Any]:
        return await self._extension("disseminations", user, req)

    @streaming
    async def Query(self, user: User, req: Request) -> list[Any]:
        return await self._extension("query", user, req)

    @streaming
    async def Notices(self, user: User, req: Request) -> list[Any]:
        since = req.get("since")
        return await self.lifecycle.notices(user, parse_instant_ms(since) if since else 0,
                                            int(req.get("limit") or 1000))

    @unary
    async def Lifecycle(self, user: User, req: Request) -> Any:
        op, record_id = req.get("op"), str(req.get("record_id") or "")
        reason = str(req.get("reason") or "")
        if op == "update":
            changes = req.get("changes")
            if not isinstance(changes, dict) or not changes:
                raise ValidationError("update needs at least one change")
            return await self.lifecycle.update(user, record_id, changes, reason)
        if op == "validate":
            return await self.lifecycle.validate(user, record_id, reason)
        if op == "retract":
            return await self.lifecycle.end(user, record_id, reason, records_pb2.RETRACTION)
        if op == "purge":
            return await self.lifecycle.end(user, record_id, reason, records_pb2.PURGE)
        raise ValidationError(f"unknown lifecycle operation {op!r}")

    @streaming
    async def Review(self, user: User, req: Request) -> list[Any]:
        return await self.lifecycle.review(user, parse_duration_ms(str(req.get("within")
                                                                       or "90d")))

    @streaming
    async def Watch(self, user: User, req: Request) -> Any:
        op = req.get("op")
        if op == "add":
            expires = req.get("expires")
            params = make_params(
                text=str(req.get("text") or ""), entity_pairs=req.strings("entities"),
                kinds=req.strings("kinds"), labels=req.strings("labels"),
                behaviors=req.strings("behaviors"))
            return [await self.watches.add(
                user, params, bool(req.get("network")),
                parse_duration_ms(str(expires)) if expires else None)]
        if op == "list":
            return await self.watches.list(user, bool(req.get("remote")))
        if op == "remove":
            return [await self.watches.remove(user, str(req.get("watch_id") or ""))]
        if op == "hits":
            if req.get("follow"):
                return self.watches.follow(user, int(req.get("after") or 0))
            return await self.watches.hits(user, int(req.get("after") or 0),
                                           int(req.get("limit") or 1000))
        raise ValidationError(f"unknown watch operation {op!r}")

    @unary
    async def Recovery(self, user: User, req: Request) -> Any:
        """`fcnode recovery finish`: the admin ends the own-log recovery wait
        (no peer holds newer entries of this center's log). Audited."""
        if req.get("op") != "finish":
            raise ValidationError(f"unknown recovery operation {req.get('op')!r}")
        detail = await self.node.finish_recovery(user)
        log.warning("own-log recovery ended by an administrator",
                    extra={"user": user.name, "own_head": detail["own_head_seq"]})
        return detail

    @unary
    async def Backup(self, user: User, req: Request) -> Any:
        """A consistent copy while the daemon runs (admin only): made on its own
        read-only connection in a worker thread, so publishing and replication
        go on meanwhile."""
        self.node.require_admin(user, "backing up the node")
        target = req.get("path")
        if not isinstance(target, str) or not target:
            raise ValidationError("backup needs a file path")
        result = await asyncio.to_thread(
            make_backup, self.node.home, self.node.center, Path(target),
            bool(req.get("include_keys")), bool(req.get("force")))
        await self.node.db.run(lambda c: audit_tx.append(
            c, self.node.sign_audit, now_ms(), user.name, "node.backup", result.audit_detail()))
        log.info("backup written", extra={"file": str(result.path), "keys": result.format == "tar"})
        return result.as_dict()
