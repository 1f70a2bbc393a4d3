"""The standard gRPC health and reflection services, on every listener, so that
standard tools (grpcurl, health probes) and any language's client work against
a node."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


def add_standard_services(server: grpc.aio.Server,
                          services: list[str]) -> health.aio.HealthServicer:
    """Health and reflection on every listener, so standard tools work."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health_servicer
