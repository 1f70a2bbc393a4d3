"""CLI commands for the network: peers and the dissemination log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.cli import output
from node.cli.client import client_for


def _card_text(value: str) -> str:
    """A card, a file holding one, or - for stdin."""
    if value == "-":
        return sys.stdin.read().strip()
    if not value.startswith("fcnode1/") and Path(value).is_file():
        return Path(value).read_text().strip()
    return value


def cmd_peers(args: argparse.Namespace) -> int:
    client = client_for(args)
    op = args.peers_cmd
    if op == "add":
        groups = [g.strip() for g in (args.groups or "").split(",") if g.strip()]
        r = client.call("Peers", {"op": "add", "card": _card_text(args.card), "groups": groups,
                                  "connect": not args.no_connect})
        if args.json:
            output.emit_json(r)
        else:
            print(f"pinned {r['center']} ({r['name']}) at {r['address']}, TLS fingerprint "
                  f"{r['tls_fingerprint'][:16]}…"
                  + ("" if r["connect"] else "; keys only, not dialled"))
        return 0
    if op == "remove":
        r = client.call("Peers", {"op": "remove", "center": args.center})
        output.emit_json(r) if args.json else print(f"removed peer {r['removed']}")
        return 0
    if op == "show":
        r = client.call("Peers", {"op": "show", "center": args.center})
        output.emit_json(r) if args.json else output.kv(r)
        return 0
    if op == "groups":
        r = client.call("Peers", {"op": "groups"})
        if args.json:
            output.emit_json(r)
        else:
            for g, members in r.items():
                print(f"{g:<20} {', '.join(members)}")
        return 0
    rows = client.call("Peers", {"op": "list"})
    if args.json:
        for r in rows:
            output.emit_json(r)
    else:
        shown = [{**r, "groups": ",".join(r["groups"]) or "-",
                  "fingerprint": r["tls_fingerprint"][:16]} for r in rows]
        if not output.table(shown, ["center", "address", "state", "groups", "fingerprint"]):
            print("no peers pinned (add one with: fcnode peers add CARD)")
    return 0


def cmd_disseminations(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"record_id": args.record_id, "limit": args.limit}
    rows = list(client_for(args).stream("Disseminations", req))
    if args.json:
        for r in rows:
            output.emit_json(r)
    elif not output.table(rows, ["time", "center", "user", "origin", "record_id", "version",
                                 "channel", "decision"]):
        print("no disseminations recorded")
    return 0


def register(add: Callable[..., argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add("peers", cmd_peers, "pin, list and remove peer centers")
    ps = p.add_subparsers(dest="peers_cmd", required=True,
                          metavar="add|list|show|remove|groups")
    pa = ps.add_parser("add", parents=[common], help="pin a center from its identity card")
    pa.add_argument("card", help="identity card line, a file holding it, or -")
    pa.add_argument("--groups", help="comma-separated groups, e.g. region:west,hidta")
    pa.add_argument("--no-connect", action="store_true",
                    help="pin its keys but never dial it (reached through hubs)")
    ps.add_parser("list", parents=[common])
    for name in ("show", "remove"):
        sp = ps.add_parser(name, parents=[common])
        sp.add_argument("center")
    ps.add_parser("groups", parents=[common])

    p = add("disseminations", cmd_disseminations,
            "who received which record (28 CFR 23.20(f)) (admin)")
    p.add_argument("record_id", nargs="?")
    p.add_argument("--limit", type=int, default=1000)
