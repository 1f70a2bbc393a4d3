"""CLI commands for the network: peers and the dissemination log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.cli import output
from node.cli.client import EXIT_NO_DAEMON, CliError, client_for
from node.cli.search_args import add_search_flags, search_filters
from node.config.home import Home, lock_if_stopped, resolve_home
from node.wire import local_pb2 as pb


def _card_text(value: str) -> str:
    """A card, a file holding one, or - for stdin."""
    if value == "-":
        return sys.stdin.read().strip()
    if not value.startswith("fcnode1/") and Path(value).is_file():
        return Path(value).read_text().strip()
    return value


def _groups(args: argparse.Namespace) -> list[str]:
    return [g.strip() for g in (args.groups or "").split(",") if g.strip()]


def _print_pinned(r: dict[str, Any]) -> None:
    print(f"pinned {r['center']} ({r['name']}) at {r['address']}, TLS fingerprint "
          f"{r['tls_fingerprint'][:16]}…" + ("" if r["connect"] else "; keys only, not dialled"))


def _print_updated(r: dict[str, Any]) -> None:
    print(f"updated {r['center']}: TLS fingerprint {r['tls_fingerprint'][:16]}…"
          + (f"; entries signed with its old key after seq {r['distrust_after']} are refused"
             if r.get("distrust_after") is not None else ""))
    if r.get("quarantined_for_review"):
        print(f"{r['quarantined_for_review']} held entries signed with the old key after that "
              "seq moved out of the log for review (fcnode peers show "
              f"{r['center']})")


def _peers_offline(args: argparse.Namespace, home: Home) -> int:
    """The daemon is stopped (we hold its lock): edit peers.toml directly."""
    from node.services import offline

    op = args.peers_cmd
    if op == "add":
        r = offline.add_peer(home, _card_text(args.card), _groups(args), not args.no_connect,
                             args.introducer)
        output.emit_json(r) if args.json else _print_pinned(r)
        if not args.json:
            print("the daemon is stopped: it connects when it starts")
        return 0
    if op == "update":
        r = offline.update_peer(home, _card_text(args.card), args.distrust_after)
        output.emit_json(r) if args.json else _print_updated(r)
        return 0
    if op == "remove":
        r = offline.remove_peer(home, args.center)
        output.emit_json(r) if args.json else print(f"removed peer {r['removed']}")
        return 0
    if op == "show":
        r = offline.show_peer(home, args.center)
        output.emit_json(r) if args.json else output.kv(r)
        return 0
    if op == "list":
        _print_peer_rows(args, offline.list_peers(home))
        return 0
    raise CliError(f"peers {op} needs the running daemon (start it with: fcnode serve)",
                   EXIT_NO_DAEMON)


def _print_peer_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if args.json:
        for r in rows:
            output.emit_json(r)
        return
    shown = [{**r, "groups": ",".join(r["groups"]) or "-",
              "fingerprint": r["tls_fingerprint"][:16],
              "pinned": ("CONFLICT" if r.get("conflict") else
                         f"by {r['introduced_by']}" if r.get("introduced_by") else
                         "introducer" if r.get("introducer") else "direct")} for r in rows]
    if not output.table(shown, ["center", "address", "state", "pinned", "groups",
                                "fingerprint"]):
        print("no peers pinned (add one with: fcnode peers add CARD)")


def cmd_peers(args: argparse.Namespace) -> int:
    home = Home(resolve_home(args.home))
    home.require()
    with lock_if_stopped(home) as stopped:
        if stopped:
            return _peers_offline(args, home)
    client = client_for(args)
    op = args.peers_cmd
    if op == "add":
        r = client.call("AddPeer", pb.AddPeerRequest(card=_card_text(args.card),
                                                     groups=_groups(args),
                                                     connect=not args.no_connect,
                                                     introducer=args.introducer))
        output.emit_json(r) if args.json else _print_pinned(r)
        return 0
    if op == "update":
        r = client.call("UpdatePeer", pb.UpdatePeerRequest(card=_card_text(args.card),
                                                           distrust_after=args.distrust_after))
        output.emit_json(r) if args.json else _print_updated(r)
        return 0
    if op == "remove":
        r = client.call("RemovePeer", pb.CenterName(center=args.center))
        output.emit_json(r) if args.json else print(f"removed peer {r['removed']}")
        return 0
    if op == "show":
        r = client.call("ShowPeer", pb.CenterName(center=args.center))
        output.emit_json(r) if args.json else output.kv(r)
        return 0
    if op == "groups":
        r = client.call("PeerGroups")
        if args.json:
            output.emit_json(r)
        else:
            for g, members in r.items():
                print(f"{g:<20} {', '.join(members)}")
        return 0
    _print_peer_rows(args, client.call("ListPeers"))
    return 0


def cmd_disseminations(args: argparse.Namespace) -> int:
    req = pb.DisseminationsRequest(record_id=args.record_id or "", limit=args.limit)
    rows = list(client_for(args).stream("Disseminations", req))
    if args.json:
        for r in rows:
            output.emit_json(r)
    elif not output.table(rows, ["time", "center", "user", "origin", "record_id", "version",
                                 "channel", "decision", "via"]):
        print("no disseminations recorded")
    return 0


def _run_query(args: argparse.Namespace, req: pb.QueryRequest) -> tuple[list[Any], Any]:
    """Stream a federated query; return (results, summary)."""
    results, summary = [], None
    for item in client_for(args).stream("Query", req, timeout=120):
        if "summary" in item:
            summary = item
        else:
            results.append(item)
            yield_line(args, item)
    return results, summary


def yield_line(args: argparse.Namespace, item: dict[str, Any]) -> None:
    if getattr(args, "quiet_results", False):
        return
    if args.json:
        output.emit_json(item)
    else:
        print(output.result_line(item) + f"  [from {item['from']}]", flush=True)


def _print_summary(summary: dict[str, Any]) -> None:
    print("\ncenters:")
    for center, o in summary["summary"].items():
        got = f"{o['results']} full, {o['pointers']} pointer, {o['ms']} ms"
        detail = {"answered": got, "timed out": f"after {o['ms']} ms",
                  "refused": o.get("reason", ""), "unreachable": o.get("reason", ""),
                  # A relayed answer that did not all arrive: what came, and why it is
                  # not the whole (its reason names the missing parts).
                  "incomplete": f"{got}; INCOMPLETE: {o.get('reason', '')}"
                  }.get(o["status"], "")
        extra = (f"; {o['dropped']} dropped (failed verification)" if o.get("dropped") else "")
        extra += "; TRUNCATED at its max_results" if o.get("truncated") else ""
        extra += f"; via {' <- '.join(o['via'])}" if o.get("via") else ""
        extra += (f"; {o['tampered']} relayed answers failed verification (tampered)"
                  if o.get("tampered") else "")
        print(f"  {center:<12} {o['status']:<12} {detail}{extra}")
    if summary.get("not_answered"):
        print(f"  known centers that did not answer: {', '.join(summary['not_answered'])}")


def cmd_query(args: argparse.Namespace) -> int:
    req = pb.QueryRequest(
        filters=search_filters(args), timeout=args.timeout, hops=args.hops,
        centers=[c.strip() for c in (args.centers or "").split(",") if c.strip()])
    _, summary = _run_query(args, req)
    if summary is not None:
        output.emit_json(summary) if args.json else _print_summary(summary)
    return 0


def cmd_deconflict(args: argparse.Namespace) -> int:
    args.quiet_results = True
    results, summary = _run_query(args, pb.QueryRequest(
        filters=pb.Filters(entities=args.entities, limit=args.limit), timeout=args.timeout,
        any_entity=True, hops=args.hops))
    by_origin: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_origin.setdefault(r["origin"], []).append(r)
    rows = [{"center": origin, "records": len(items),
             "level": "FULL" if any(i["access"] == "FULL" for i in items) else "POINTER",
             "kinds": ",".join(sorted({i["kind"] for i in items})),
             "contact": sorted({i.get("contact") or "-" for i in items})[0]}
            for origin, items in sorted(by_origin.items())]
    if args.json:
        for row in rows:
            output.emit_json({**row, "record_ids": [i["record_id"]
                                                    for i in by_origin[row["center"]]]})
        if summary is not None:
            output.emit_json(summary)
        return 0
    print(f"deconfliction: {' '.join(args.entities)}")
    if not output.table(rows, ["center", "level", "records", "kinds", "contact"]):
        print("no center reported a record on these entities")
    if summary is not None:
        _print_summary(summary)
    return 0


def register(add: Callable[..., argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add("peers", cmd_peers, "pin, update, list and remove peer centers (add, update, "
            "remove, list and show also work while the daemon is stopped)")
    ps = p.add_subparsers(dest="peers_cmd", required=True,
                          metavar="add|update|list|show|remove|groups")
    pa = ps.add_parser("add", parents=[common], help="pin a center from its identity card")
    pa.add_argument("card", help="identity card line, a file holding it, or -")
    pa.add_argument("--groups", help="comma-separated groups, e.g. region:west,hidta")
    pa.add_argument("--no-connect", action="store_true",
                    help="pin its keys but never dial it (reached through hubs)")
    pa.add_argument("--introducer", action="store_true",
                    help="adopt the cards this peer has pinned, for verification only "
                         "(never dialled); they follow its view")
    pu = ps.add_parser("update", parents=[common],
                       help="replace a pinned center's keys and certificate with its new card")
    pu.add_argument("card", help="the center's new identity card (received out of band)")
    pu.add_argument("--distrust-after", type=int, metavar="SEQ",
                    help="entries of that center signed with its old key after SEQ are "
                         "refused and held for review (default: after what this node holds)")
    ps.add_parser("list", parents=[common])
    for name in ("show", "remove"):
        sp = ps.add_parser(name, parents=[common])
        sp.add_argument("center")
    ps.add_parser("groups", parents=[common])

    p = add("query", cmd_query, "search this node and every connected center at once")
    add_search_flags(p, origins=False, limit=100, limit_help="per center (default 100)")
    p.add_argument("--centers", help="only these centers, e.g. nysic,ffc")
    p.add_argument("--timeout", default="5s", help="per center (default 5s)")
    p.add_argument("--hops", type=int, default=3,
                   help="how far the query travels through forwarding centers (default 3; "
                        "1: direct peers only)")

    p = add("deconflict", cmd_deconflict,
            "which centers hold records on these entities, and whom to call")
    p.add_argument("entities", nargs="+", metavar="TYPE=VALUE")
    p.add_argument("--timeout", default="5s")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--hops", type=int, default=3, help="forwarding hops (default 3)")

    p = add("disseminations", cmd_disseminations,
            "who received which record (28 CFR 23.20(f)) (admin)")
    p.add_argument("record_id", nargs="?")
    p.add_argument("--limit", type=int, default=1000)
