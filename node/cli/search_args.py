"""The search filters as command-line flags and as a local-API request: one
definition for `search`, `export` (and anything else that selects records)."""

from __future__ import annotations

import argparse

from node.wire import local_pb2


def add_search_flags(p: argparse.ArgumentParser, origins: bool = True, limit: int = 50,
                     limit_help: str | None = None) -> None:
    """``origins``: offer --origin (a federated query asks centers, not origins)."""
    p.add_argument("text", nargs="*", help="words that must occur")
    p.add_argument("--entity", action="append", metavar="TYPE=VALUE")
    p.add_argument("--kind", action="append")
    p.add_argument("--since", help="date or age, e.g. 30d")
    p.add_argument("--label", action="append")
    p.add_argument("--behavior", action="append", metavar="CODE",
                   help="ISE-SAR behaviour category (repeatable: all must be present)")
    if origins:
        p.add_argument("--origin", action="append", metavar="CENTER")
    else:
        p.set_defaults(origin=None)
    p.add_argument("--limit", type=int, default=limit, help=limit_help)


def search_filters(args: argparse.Namespace) -> local_pb2.Filters:
    return local_pb2.Filters(
        text=" ".join(args.text), entities=args.entity or [], kinds=args.kind or [],
        since=args.since or "", labels=args.label or [], origins=args.origin or [],
        limit=args.limit, behaviors=args.behavior or [])
