"""Human and JSON output for the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def kv(obj: dict[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            kv(value, indent + "  ")
        elif isinstance(value, list):
            shown = ", ".join(v if isinstance(v, str) else json.dumps(v) for v in value)
            print(f"{indent}{key.ljust(width)}  {shown or '-'}")
        else:
            print(f"{indent}{key.ljust(width)}  {value}")


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> int:
    rows = list(rows)
    if not rows:
        return 0
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    return len(rows)


def result_line(r: dict[str, Any]) -> str:
    """One search or query result; a POINTER shows no content."""
    if r.get("access") == "POINTER":
        return (f"POINTER  {r['origin']:<10} {r['kind']:<13} {r['record_id']}  "
                f"(content withheld; contact: {r.get('contact') or '-'})")
    return (f"FULL     {r['origin']:<10} {r['kind']:<13} {r['record_id']}  "
            f"v{r['version']} TLP:{r['tlp']:<12} {r.get('created', '')}  {r['title']}")


def error(message: str) -> None:
    print(f"fcnode: error: {message}", file=sys.stderr)
