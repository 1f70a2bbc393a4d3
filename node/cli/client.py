"""The CLI's side of the local API: one call, clear errors, no traceback."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from node.config.home import Home, resolve_home
from node.core.localtypes import build, to_dict
from node.core.types import FcnodeError
from node.wire import local_pb2, local_pb2_grpc

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3


class CliError(FcnodeError):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def read_token(token_file: str | None) -> str | None:
    if token_file:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise CliError(f"token file {path} does not exist", EXIT_USAGE) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CliError(f"token file {path} has mode {stat.S_IMODE(mode):04o}; it must be "
                           f"0600 (run: chmod 600 {path})", EXIT_USAGE)
        return path.read_text().strip()
    return os.environ.get("FCNODE_TOKEN")


def client_for(args: Any) -> Client:
    """The client for a parsed command line (--home, --token-file)."""
    return Client(Home(resolve_home(args.home)), read_token(args.token_file))


_DRAFT_TEXT = ("kind", "title", "narrative", "expires", "contact")
_DRAFT_LISTS = ("labels", "behaviors")
_POLICY_TEXT = ("tlp", "discoverability")
_POLICY_LISTS = ("audience", "require")
_PART23_TEXT = ("justification", "source_reliability", "content_validity", "review_due")
_DRAFT_KEYS = {*_DRAFT_TEXT, *_DRAFT_LISTS, "entities", "policy", "part23"}
_POLICY_KEYS = {*_POLICY_TEXT, *_POLICY_LISTS, "relay"}


def draft_message(draft: dict[str, Any]) -> local_pb2.RecordDraft:
    """A validated record file's draft as the typed message: entities given as
    TYPE=VALUE become (type, value).

    Written out field by field for the shapes a record file has: the generic
    converter (localtypes.build) cost ~24 µs a draft, as long as the daemon's
    validation of it, on the sending side of every batch publish. Anything else
    (an unknown key, a value of another type) goes through the generic
    converter, which names what is wrong. tests/node/daemon/test_local_roundtrip.py
    checks that both make the same message."""
    from node.core.entities import parse_pair

    ents = [dict(zip(("type", "value"), parse_pair(e), strict=True)) if isinstance(e, str)
            else e for e in draft.get("entities") or []]
    try:
        return _written_out(draft, ents)
    except (KeyError, TypeError, ValueError, AttributeError):
        pass  # not a plain record file: the generic converter says what is wrong
    return build(local_pb2.RecordDraft, {**draft, "entities": ents})


def _written_out(draft: dict[str, Any], ents: list[Any]) -> local_pb2.RecordDraft:
    """draft_message's fast path; raises on any key or value it does not write."""
    if not draft.keys() <= _DRAFT_KEYS:
        raise KeyError("unknown key")
    msg = local_pb2.RecordDraft()
    _fill_plain(msg, draft, _DRAFT_TEXT, _DRAFT_LISTS)
    for e in ents:
        msg.entities.add(**{k: v for k, v in e.items() if v is not None})
    pol, part23 = draft.get("policy"), draft.get("part23")
    if pol is not None:
        if not pol.keys() <= _POLICY_KEYS:
            raise KeyError("unknown key")
        msg.policy.SetInParent()  # present even when empty, as build makes it
        _fill_plain(msg.policy, pol, _POLICY_TEXT, _POLICY_LISTS)
        if pol.get("relay") is not None:
            msg.policy.relay = pol["relay"]
    if part23 is not None:
        if not part23.keys() <= set(_PART23_TEXT):
            raise KeyError("unknown key")
        msg.part23.SetInParent()
        _fill_plain(msg.part23, part23, _PART23_TEXT, ())
    return msg


def _fill_plain(msg: Message, d: dict[str, Any], text: tuple[str, ...],
                lists: tuple[str, ...]) -> None:
    for key in text:
        if d.get(key) is not None:
            setattr(msg, key, d[key])
    for key in lists:
        if d.get(key) is not None:
            if not isinstance(d[key], list | tuple):  # extend would take a string's letters
                raise TypeError(key)
            getattr(msg, key).extend(d[key])


def published_rows(reply: local_pb2.PublishedList) -> list[dict[str, Any]]:
    """A Publish reply as the rows the CLI prints (what to_dict makes of it, key
    order included; tests/node/daemon/test_local_roundtrip.py compares them),
    field by field: the generic to_dict cost ~5 µs a record."""
    out = []
    for p in reply.records:
        row: dict[str, Any] = {"record_id": p.record_id, "origin": p.origin, "seq": p.seq,
                               "version": p.version, "kind": p.kind}
        for key in ("routing", "audience"):
            if p.HasField(key):
                row[key] = list(getattr(p, key).items)
        out.append(row)
    return out


def _request(method: str, request: Message | dict[str, Any] | None) -> Message:
    """The RPC's request message; a dict (the fields by name) is built into it."""
    if isinstance(request, Message):
        return request
    rpc = local_pb2.DESCRIPTOR.services_by_name["Local"].methods_by_name.get(method)
    if rpc is None:
        raise CliError(f"the local API has no {method!r} operation")
    if method == "Publish" and isinstance(request, dict):  # record files: TYPE=VALUE
        return local_pb2.PublishRequest(records=[draft_message(d)
                                                 for d in request.get("records") or []])
    return build(getattr(local_pb2, rpc.input_type.name), request or {})


class Client:
    def __init__(self, home: Home, token: str | None, timeout: float = 30.0) -> None:
        home.require()
        home.socket_dir_is_private()
        self.home = home
        self.token = token
        self.timeout = timeout
        socket = home.socket
        if not socket.exists():
            raise CliError(f"no fcnode daemon is running for {home.root} "
                           f"(start it with: fcnode serve --home {home.root})", EXIT_NO_DAEMON)
        # Replies up to the 16 MiB the daemon accepts (a STIX export can be large).
        self.channel = grpc.insecure_channel(
            f"unix:{socket}", options=[("grpc.max_receive_message_length", 16 * 2**20)])
        self.stub = local_pb2_grpc.LocalStub(self.channel)

    def _metadata(self) -> list[tuple[str, str]]:
        if not self.token:
            raise CliError("no credential: set FCNODE_TOKEN or pass --token-file FILE "
                           "(fcnode init and fcnode users add print one)", EXIT_USAGE)
        return [("authorization", f"Bearer {self.token}")]

    def _error(self, exc: grpc.RpcError) -> CliError:
        code = exc.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or ""):  # type: ignore[attr-defined]
            return CliError(f"no fcnode daemon is running for {self.home.root} (start it with: "
                            f"fcnode serve --home {self.home.root})", EXIT_NO_DAEMON)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError("the daemon did not answer in time")
        if code == grpc.StatusCode.INVALID_ARGUMENT:  # the input was wrong: exit 2, like usage
            return CliError(exc.details() or "invalid input", EXIT_USAGE)  # type: ignore[attr-defined]
        return CliError(exc.details() or code.name)  # type: ignore[attr-defined]

    def call(self, method: str, request: Message | dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        """One typed call; the reply as the dict the CLI prints (node.core.localtypes)."""
        reply = self.call_message(method, request, timeout)
        return published_rows(reply) if method == "Publish" else to_dict(reply)

    def call_message(self, method: str, request: Message | dict[str, Any] | None = None,
                     timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(
                _request(method, request), metadata=self._metadata(),
                timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def stream(self, method: str, request: Message | dict[str, Any] | None = None,
               timeout: float | None = None) -> Iterator[Any]:
        try:
            for reply in getattr(self.stub, method)(
                    _request(method, request), metadata=self._metadata(),
                    timeout=timeout or self.timeout):
                yield to_dict(reply)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        self.channel.close()
