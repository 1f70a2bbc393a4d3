"""Reading record drafts from a JSON file or standard input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from node.cli.client import EXIT_USAGE, CliError


def drafts_from_file(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}", EXIT_USAGE) from None
    drafts = data if isinstance(data, list) else [data]
    if not drafts:
        raise CliError(f"{path} holds no records", EXIT_USAGE)
    return drafts
