"""The typed local API from outside the CLI: the example script publishes and
searches through the generated code, and server reflection describes the
service for clients in other languages (grpcurl, any gRPC toolkit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from node.wire import local_pb2, local_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_example_client_publishes_and_searches(make_node) -> None:
    node = make_node("ffc")
    env = {**os.environ, "FCNODE_TOKEN": node.tokens["admin"], "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "configs/examples/local_client.py"),
                          "--home", str(node.home), "--title", "Scripted bulletin"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    published = run.stdout.splitlines()[0].split()[1]
    assert f"found FULL BULLETIN {published} 'Scripted bulletin'" in run.stdout
    # The CLI sees the same record (one store, one API).
    shown = node.json("get", published)
    assert shown["title"] == "Scripted bulletin" and shown["verification"]["valid"]


def test_reflection_lists_the_typed_service(make_node) -> None:
    node = make_node("ffc")
    socket = node.home / "fcnode.sock"
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert "fcnode.v1.Local" in db.get_services()
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        service = pool.FindServiceByName("fcnode.v1.Local")
        search = service.methods_by_name["Search"]
        assert search.input_type.full_name == "fcnode.v1.SearchRequest"
        assert search.output_type.full_name == "fcnode.v1.SearchResult"
        assert "JsonRequest" not in {m.input_type.name for m in service.methods}
        # Typed calls need a credential like the CLI's.
        stub = local_pb2_grpc.LocalStub(channel)
        try:
            stub.Status(local_pb2.Empty(), metadata=[("authorization", "Bearer wrong")])
            raise AssertionError("a wrong token was accepted")
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.UNAUTHENTICATED), exc
        status = stub.Status(local_pb2.Empty(),
                             metadata=[("authorization", f"Bearer {node.tokens['admin']}")])
        assert status.center == "ffc" and status.HasField("own_log")
