from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.devnet import Network, Node


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    """The test's nodes, homes under its tmp path; all daemons stopped at the end."""
    with Network(tmp_path) as net:
        yield net


@pytest.fixture
def make_node(network: Network) -> Callable[..., Node]:
    """Create (and afterwards stop) real nodes: make_node(center, start=True, name=None)."""
    def make(center: str, start: bool = True, name: str | None = None) -> Node:
        return network.node(center, name, start=start)

    return make
