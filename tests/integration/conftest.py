from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.devnet import Node


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Create (and afterwards stop) real nodes; homes under a short tmp path."""
    nodes: list[Node] = []

    def make(center: str, start: bool = True, name: str | None = None) -> Node:
        node = Node(tmp_path, center, name)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        node.stop()
