"""`fcnode watch`: standing searches that fire when matching records arrive."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from node.cli import output
from node.cli.client import client_for
from node.wire import local_pb2 as pb


def _hit_line(h: dict[str, Any]) -> str:
    return f"{h['time']}  watch {h['watch_id']}  {output.result_line(h)}  [from {h['from']}]"


def cmd_watch(args: argparse.Namespace) -> int:
    client = client_for(args)
    op = args.watch_cmd
    if op == "add":
        req = pb.AddWatchRequest(
            filters=pb.Filters(text=" ".join(args.text), entities=args.entity or [],
                               kinds=args.kind or [], labels=args.label or [],
                               behaviors=args.behavior or []),
            network=args.network, expires=args.expires or "")
        w = client.call("AddWatch", req)
        if args.json:
            output.emit_json(w)
        else:
            print(w["watch_id"])
            print(f"watching until {w['expires']}{' (network)' if w['network'] else ''}",
                  file=sys.stderr)
        return 0
    if op == "remove":
        r = client.call("RemoveWatch", pb.WatchId(watch_id=args.watch_id))
        output.emit_json(r) if args.json else print(f"removed watch {r['removed']}")
        return 0
    if op == "list":
        rows = list(client.stream("ListWatches", pb.ListWatchesRequest(remote=args.remote)))
        if args.json:
            for r in rows:
                output.emit_json(r)
            return 0
        for r in rows:
            r["entities"] = ",".join(r.get("entity_keys") or []) or "-"
            if args.remote:
                # the peer its set came through, then the other ways back
                r["via"] = ",".join([r.get("via") or "-", *(r.get("also_via") or [])])
        cols = (["center", "via", "user", "watch_id", "entities", "expires"] if args.remote else
                ["watch_id", "network", "entities", "text", "expires"])
        if not output.table(rows, cols):
            print("no watches")
        return 0
    # hits
    req = pb.HitsRequest(follow=args.follow)
    timeout = 10 * 365 * 86400 if args.follow else None
    n = 0
    for h in client.stream("WatchHits", req, timeout=timeout):
        n += 1
        if args.json:
            output.emit_json(h)
        else:
            print(_hit_line(h), flush=True)
    if not args.json and not args.follow:
        print(f"{n} hit(s)", file=sys.stderr)
    return 0


def register(add: Callable[..., argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add("watch", cmd_watch, "standing searches: tell me when a matching record arrives")
    ws = p.add_subparsers(dest="watch_cmd", required=True, metavar="add|list|remove|hits")
    wa = ws.add_parser("add", parents=[common], help="watch for matching records")
    wa.add_argument("text", nargs="*", help="words that must occur")
    wa.add_argument("--entity", action="append", metavar="TYPE=VALUE")
    wa.add_argument("--kind", action="append")
    wa.add_argument("--label", action="append")
    wa.add_argument("--behavior", action="append", metavar="CODE")
    wa.add_argument("--network", action="store_true",
                    help="also ask every center this node queries (entities only)")
    wa.add_argument("--expires", help="e.g. 30d (default and cap: [limits] max_watch_days)")
    wl = ws.add_parser("list", parents=[common])
    wl.add_argument("--remote", action="store_true",
                    help="standing queries other centers registered here (admin)")
    wr = ws.add_parser("remove", parents=[common])
    wr.add_argument("watch_id")
    wh = ws.add_parser("hits", parents=[common])
    wh.add_argument("--follow", action="store_true", help="stream hits until interrupted")
