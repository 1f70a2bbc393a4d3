"""Shared test configuration: gRPC's C core logs handshake failures at INFO on
stderr; tests provoke many of them on purpose."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
