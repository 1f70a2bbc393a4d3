"""A script that publishes a record and searches through a node's local API,
with the generated code (node/wire/local_pb2*.py) instead of the CLI.

    FCNODE_TOKEN=... python configs/examples/local_client.py --home /var/lib/fcnode

The API is proto/fcnode/v1/local.proto (service fcnode.v1.Local) on the Unix
socket <home>/fcnode.sock (under a short /tmp directory when the home's path is
too long for a socket: node.home.Home.socket). Every call carries metadata
"authorization: Bearer <token>" (a credential from `fcnode users add`).

Another language does the same with its own generated code:
    protoc -I proto --go_out=. --go-grpc_out=. proto/fcnode/v1/local.proto
(or --java_out, --csharp_out, ... with that language's gRPC plugin), or without
the .proto file at all, from the daemon's server reflection:
    grpcurl -plaintext -unix -H "authorization: Bearer $FCNODE_TOKEN" \
        -d '{"filters": {"text": "pickup"}}' <home>/fcnode.sock fcnode.v1.Local/Search
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from node.config.home import Home, resolve_home
from node.wire import local_pb2, local_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="node home (default $FCNODE_HOME)")
    parser.add_argument("--title", default="Example bulletin from the local API")
    args = parser.parse_args(argv)
    token = os.environ["FCNODE_TOKEN"]
    socket = Home(resolve_home(args.home)).socket
    auth = [("authorization", f"Bearer {token}")]

    with grpc.insecure_channel(f"unix:{socket}") as channel:
        local = local_pb2_grpc.LocalStub(channel)
        published = local.Publish(local_pb2.PublishRequest(records=[local_pb2.RecordDraft(
            kind="BULLETIN", title=args.title, narrative="Published by a script.",
            labels=["example"], entities=[local_pb2.EntityValue(type="phone",
                                                                value="555-010-0199")],
            policy=local_pb2.DraftPolicy(tlp="GREEN", audience=["members"],
                                         discoverability="open"))]), metadata=auth)
        for r in published.records:
            print(f"published {r.record_id} (seq {r.seq}, version {r.version})")

        # Results stream back one message at a time.
        found = local.Search(local_pb2.SearchRequest(filters=local_pb2.Filters(
            entities=["phone=555-010-0199"], limit=10)), metadata=auth)
        for hit in found:
            print(f"found {hit.access} {hit.kind} {hit.record_id} {hit.title!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
