"""Dialing a peer: one channel per peer, mutual TLS, pinned server certificate."""

from __future__ import annotations

import grpc

from federation.tls import PinnedTls
from node.config.home import Limits
from node.config.peers import Peer
from node.wire import federation_pb2_grpc


def open_channel(tls: PinnedTls, peer: Peer, limits: Limits) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        peer.address,
        tls.channel_credentials(peer),
        options=[
            # The pinned certificate's SAN is the center id, not a host name.
            ("grpc.ssl_target_name_override", peer.center),
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ],
    )


def stub(channel: grpc.aio.Channel) -> federation_pb2_grpc.FederationStub:
    return federation_pb2_grpc.FederationStub(channel)
