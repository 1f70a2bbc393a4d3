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


def draft_message(draft: dict[str, Any]) -> local_pb2.RecordDraft:
    """A validated record file's draft as the typed message: entities given as
    TYPE=VALUE become (type, value)."""
    from node.core.entities import parse_pair

    ents = [dict(zip(("type", "value"), parse_pair(e), strict=True)) if isinstance(e, str)
            else e for e in draft.get("entities") or []]
    return build(local_pb2.RecordDraft, {**draft, "entities": ents})


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
        return to_dict(self.call_message(method, request, timeout))

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
