"""The federation servicer's refusal of a certificate that is not pinned: one log
line a minute for all such calls, however many (certificates are free to make)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import grpc
import pytest

from federation.transport.server import FederationServicer


class Aborted(Exception):
    pass


class Context:
    def __init__(self, n: int) -> None:
        self.n = n

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [b"certificate %d" % self.n]}

    def peer(self) -> str:
        return f"ipv4:127.0.0.1:{40000 + self.n}"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code)


def test_unpinned_certificates_cost_one_log_line_a_minute(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    node = SimpleNamespace(peers={}, config=SimpleNamespace(limits=SimpleNamespace(
        restarts_per_minute=10, max_streams_per_peer=0)))
    tls = SimpleNamespace(center_for_pem=lambda pem: None)
    servicer = FederationServicer(node, tls)  # type: ignore[arg-type]

    async def calls() -> None:
        for i in range(50):
            with pytest.raises(Aborted):
                await servicer.authenticate(Context(i))  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING):
        asyncio.run(calls())
    lines = [r for r in caplog.records if "unpinned certificate" in r.getMessage()]
    # Before the fix: 50 lines, one per call.
    assert len(lines) == 1, f"{len(lines)} lines for 50 refused calls"
    servicer.unpinned_logs.lines._buckets["unpinned"].updated -= 61  # a minute later
    with caplog.at_level(logging.WARNING):
        asyncio.run(calls())
    lines = [r for r in caplog.records if "unpinned certificate" in r.getMessage()]
    assert len(lines) == 2 and lines[1].not_logged_before == 49  # type: ignore[attr-defined]


def test_streams_over_the_cap_cost_one_log_line_a_minute_per_peer(
        caplog: pytest.LogCaptureFixture) -> None:
    node = SimpleNamespace(peers={}, config=SimpleNamespace(limits=SimpleNamespace(
        restarts_per_minute=10, max_streams_per_peer=0)))
    servicer = FederationServicer(node, SimpleNamespace())  # type: ignore[arg-type]

    async def calls(peer: str) -> None:
        for i in range(20):
            with pytest.raises(Aborted):
                await servicer._stream_cap(peer, Context(i), "replication")  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING):
        asyncio.run(calls("aa"))
        asyncio.run(calls("bb"))
    lines = [r for r in caplog.records if "stream refused" in r.getMessage()]
    # Before: a line a call (40).
    assert [r.peer for r in lines] == ["aa", "bb"]  # type: ignore[attr-defined]
