"""The `fcnode` command line.

Every command finds its node through --home or $FCNODE_HOME; every command that
talks to the daemon carries the user's credential from $FCNODE_TOKEN or
--token-file. Errors print one line on stderr and exit non-zero:
1 the operation failed, 2 bad usage or input, 3 no daemon running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from node.cli import output
from node.cli.client import EXIT_ERROR, EXIT_USAGE, CliError, client_for, draft_message
from node.cli.drafts import drafts_from_file
from node.cli.search_args import add_search_flags, search_filters
from node.config.home import Home, load_config, resolve_home
from node.core.types import FcnodeError, ValidationError
from node.wire import local_pb2 as pb

# Commands import what they need when they run: `fcnode status` should not pay
# for loading the daemon, storage and crypto stacks.
Command = Callable[[argparse.Namespace], int]
MAX_PUBLISH_BYTES = 15 * 2**20  # the local API accepts 16 MiB messages (node/daemon/server.py)


def _home(args: argparse.Namespace) -> Home:
    return Home(resolve_home(args.home))



# -- node -------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from node.config.init import init_node

    result = init_node(resolve_home(args.home), args.center, args.name, args.listen)
    if args.json:
        output.emit_json({"center": result.center, "home": str(result.home),
                          "admin_token": result.admin_token})
    else:
        print(f"created node {result.center!r} in {result.home}")
        print("admin credential (shown once; store it, e.g. export FCNODE_TOKEN=...):")
        print(result.admin_token)
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    from node.config.identity import b64e
    from node.config.init import own_card

    home = _home(args)
    cfg = load_config(home)
    card = own_card(home, cfg.center, cfg.name, cfg.listen)
    if args.json:
        output.emit_json({"center": card.center, "name": card.name, "address": card.address,
                          "signing_key": b64e(card.signing_key),
                          "tls_fingerprint": card.tls_fingerprint, "card": card.line()})
    else:
        print(card.line())
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """keys rotate --signing | --tls | --seal: through the running daemon (admin),
    which announces the new key in this center's own log so that peers learn it."""
    if not (args.signing or args.tls or args.seal):
        raise CliError("keys rotate needs --signing, --tls or --seal", EXIT_USAGE)
    if args.stolen and not args.signing:
        raise CliError("--stolen goes with --signing (the stolen-key runbook)", EXIT_USAGE)
    if args.retire and not args.seal:
        raise CliError("--retire goes with --seal", EXIT_USAGE)
    results = []
    client = client_for(args)
    for which in ("signing", "tls", "seal"):
        if getattr(args, which):
            results.append(client.call("RotateKey", pb.RotateRequest(
                which=which, stolen=which == "signing" and args.stolen,
                retire=which == "seal" and args.retire)))
    for r in results:
        if args.json:
            output.emit_json(r)
        elif r["rotated"] == "signing":
            print(f"signing key rotated at seq {r['seq']}: {r['old_key_id'][:16]} -> "
                  f"{r['new_key_id'][:16]} (print the new card with: fcnode identity)")
        elif r["rotated"] == "seal":
            kept = (f"{r['retired']} earlier private seal key(s) deleted" if r.get("retired")
                    else "the earlier private key is kept to open what was sealed to it")
            print(f"seal key rotated, announced at seq {r['seq']}: {r['old_key_id'][:16]} -> "
                  f"{r['new_key_id'][:16]}; {kept} (print the new card with: fcnode identity)")
        else:
            print(f"TLS certificate renewed, announced at seq {r['seq']}: "
                  f"{r['new_fingerprint'][:16]} valid until {r['not_after']}; "
                  f"presented from {r['switch_at']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from node.daemon.server import serve
    from node.telemetry import logs

    logs.setup(args.log_level.upper())
    home = _home(args)
    home.require()
    try:
        asyncio.run(serve(home))
    except FcnodeError as exc:
        logs.get("fcnode.daemon").error("cannot start", extra={"reason": str(exc)})
        raise
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    status = client.call("Status")
    if args.json:
        output.emit_json(status)
        return 0
    print(f"center   {status['center']} ({status['name']})")
    print(f"uptime   {status['uptime_s']} s")
    if "records" not in status:  # what a user without the admin role is shown
        print(f"connected  {', '.join(status.get('connected', [])) or 'none'}")
        return 0
    print(f"storage  {status['storage']}")
    if "tls" in status:
        tls = status["tls"]
        print(f"tls      certificate {tls['fingerprint'][:16]} expires {tls['expires']}")
        if "next" in tls:
            print(f"tls      renewed {tls['next']['fingerprint'][:16]} (expires "
                  f"{tls['next']['expires']}) announced, presented from "
                  f"{tls['next']['presented_from']}")
    own = status.get("own_log") or {}
    if own.get("held"):
        h = own["held"]
        print(f"HELD own log: peer {h['peer']} sent seq {h['seq']} signed by this node's key, "
              f"beyond its head {h['own_head']} (since {h['since']}); nothing is adopted or "
              "signed. An old copy of node.db: fcnode recovery adopt. A stolen key: "
              "fcnode keys rotate --signing --stolen (README: A stolen key)")
    elif own.get("recovering"):
        print(f"RECOVERING own log: {own['behind']} entries ({own['reason']}); "
              "publishing waits until every reachable peer confirmed, or: fcnode recovery finish")
    elif own.get("blocked"):
        print(f"own log  {own['blocked']}")
    for origin, states in sorted(status["records"].items()):
        print(f"records  {origin:<12} " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    for peer in status.get("peers", []):
        behind = ", ".join(f"{o}: {n}" for o, n in sorted(peer.get("behind", {}).items()) if n)
        print(f"peer     {peer['center']:<12} {peer['state']:<12} last contact "
              f"{peer.get('last_contact') or 'never'}"
              + (f"  behind {behind}" if behind else "")
              + (f"  ({peer['error']})" if peer.get("error") else ""))
    for q in status.get("quarantined", []):
        print(f"QUARANTINED  {q['origin']}: {q['reason']} since {q['since']}")
    for k in status.get("key_conflicts", []):
        print(f"KEY CONFLICT  {k['center']}: {k['why']} (decide: fcnode peers add CARD, "
              "or peers remove)")
    if status.get("index_erasure"):
        e = status["index_erasure"]
        print(f"erasure  {e['purges']} purged records out of search, their words still in "
              f"the text index file until {e['due']} (pending since {e['since']})")
    if status.get("rejected"):
        print("rejected envelopes: " + ", ".join(
            f"{k}: {v}" for k, v in sorted(status["rejected"].items())))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Through the daemon when it runs (admin credential), else on the file."""
    from pathlib import Path

    from node.config.home import lock_if_stopped

    home = _home(args)
    home.require()
    target = Path(args.file).expanduser().absolute()  # the daemon has another cwd
    with lock_if_stopped(home) as stopped:
        if stopped:
            from node.services import offline

            result = offline.backup(home, target, args.include_keys, args.force).as_dict()
    if not stopped:
        result = client_for(args).call("Backup", pb.BackupRequest(
            path=str(target), include_keys=args.include_keys, force=args.force), timeout=3600)
    if args.json:
        output.emit_json(result)
    else:
        print(f"backup   {result['file']} ({result['format']}"
              f"{', WITH KEYS: keep it like the keys themselves' if result['keys'] else ''})")
        print(f"sha256   {result['sha256']}")
        print(f"size     {result['size']} bytes, {result['records']} records")
        print(f"own log  head seq {result['own_head']['seq']} "
              f"hash {result['own_head']['hash'] or '-'}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Only with the daemon stopped: straight on the home's files."""
    from pathlib import Path

    from node.services.offline import actor
    from node.services.restore import restore

    result = restore(Home(resolve_home(args.home)), Path(args.file), actor()).as_dict()
    if args.json:
        output.emit_json(result)
        return 0
    print(f"restored {result['file']} ({result['format']}, sha256 {result['sha256']})")
    print(f"own log  head seq {result['own_head']['seq']}, {result['records']} records")
    if result["replaced"]:
        print(f"kept     the replaced database as {result['replaced']}")
    if result["installed"]:
        print(f"installed from the bundle: {', '.join(result['installed'])}")
    print("next     start the daemon: it takes this center's own entries beyond seq "
          f"{result['own_head']['seq']} back from its peers and refuses to publish until "
          "then (fcnode status shows 'recovering own log')")
    return 0


def cmd_recovery(args: argparse.Namespace) -> int:
    if args.recovery_cmd == "adopt":
        r = client_for(args).call("AdoptOwnLog")
        if args.json:
            output.emit_json(r)
        else:
            h = r["adopted"]
            print(f"adopted: entries beyond seq {h['own_head']} that peer {h['peer']} held "
                  f"(from seq {h['seq']}) are taken back as this node's own; recovering "
                  "(fcnode status shows 'recovering own log')")
        return 0
    r = client_for(args).call("FinishRecovery")
    if args.json:
        output.emit_json(r)
    else:
        print(f"own-log recovery ended at seq {r['own_head_seq']}"
              + ("" if r["was_recovering"] else " (it was not recovering)")
              + (f"; peers had reported {r['peers_reported_ahead']} entries beyond it"
                 if r["peers_reported_ahead"] else ""))
    return 0


# -- records ----------------------------------------------------------------
def _draft_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    if not args.kind or not args.title:
        raise CliError("publish needs --kind and --title (or --file F)", EXIT_USAGE)
    policy: dict[str, Any] = {"tlp": args.tlp or "AMBER", "audience": args.audience or [],
                              "require": args.require or [],
                              "discoverability": args.discoverability or "pointer"}
    if args.no_relay:
        policy["relay"] = False
    draft: dict[str, Any] = {
        "kind": args.kind, "title": args.title, "narrative": args.narrative or "",
        "labels": args.label or [], "entities": args.entity or [], "policy": policy,
        "behaviors": args.behavior or [],
        "part23": {"justification": args.justification or "",
                   "source_reliability": args.reliability or "X",
                   "content_validity": args.validity or "4"},
    }
    if args.expires:
        draft["expires"] = args.expires
    return draft


def cmd_publish(args: argparse.Namespace) -> int:
    drafts = drafts_from_file(args.file) if args.file else [_draft_from_flags(args)]
    from node.core.record import parse_draft

    for d in drafts:  # fail fast, before talking to the daemon (which validates again)
        parse_draft(d)
    request = pb.PublishRequest(records=[draft_message(d) for d in drafts])
    size = request.ByteSize()
    if size > MAX_PUBLISH_BYTES:
        raise CliError(f"{len(drafts)} records ({size / 2**20:.1f} MiB) exceed what one publish "
                       f"sends ({MAX_PUBLISH_BYTES // 2**20} MiB); split the file", EXIT_USAGE)
    results = client_for(args).call("Publish", request)
    for r in results:
        if args.json:
            output.emit_json(r)
        else:
            print(f"published {r['record_id']} (origin {r['origin']}, seq {r['seq']}, "
                  f"version {r['version']})")
            if r.get("routing"):
                print(f"  routed by rule(s) {', '.join(r['routing'])}: audience "
                      f"{', '.join(r.get('audience') or [])}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    rec = client_for(args).call("Get", pb.GetRequest(record_id=args.record_id))
    if args.json:
        output.emit_json(rec)
    else:
        output.kv(rec)
    return 0 if rec.get("verification", {}).get("valid") else EXIT_ERROR


def cmd_search(args: argparse.Namespace) -> int:
    req = pb.SearchRequest(filters=search_filters(args))
    n = 0
    for r in client_for(args).stream("Search", req):
        n += 1
        output.emit_json(r) if args.json else print(output.result_line(r))
    if not args.json:
        print(f"{n} result(s)", file=sys.stderr)
    return 0


# -- users and audit -----------------------------------------------------------
def cmd_users(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.users_cmd == "add":
        r = client.call("AddUser", pb.AddUserRequest(name=args.name, attributes=args.attr or [],
                                                     admin=args.admin))
        if args.json:
            output.emit_json(r)
        else:
            print(f"added user {r['user']} (attributes: {', '.join(r['attributes']) or 'none'}"
                  f"{'; admin' if r['admin'] else ''})")
            print("credential (shown once):")
            print(r["token"])
    elif args.users_cmd == "set":
        r = client.call("SetUserAttributes", pb.SetAttributesRequest(
            name=args.name, attributes=args.attr or []))
        output.emit_json(r) if args.json else print(
            f"{r['user']}: attributes {', '.join(r['attributes']) or 'none'}")
    elif args.users_cmd == "remove":
        r = client.call("RemoveUser", pb.UserName(name=args.name))
        output.emit_json(r) if args.json else print(f"removed user {r['removed']}")
    else:
        rows = client.call("ListUsers")
        if args.json:
            for r in rows:
                output.emit_json(r)
        else:
            output.table([{**r, "attributes": ",".join(r["attributes"]) or "-"} for r in rows],
                         ["user", "admin", "attributes", "created"])
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.audit_cmd == "verify":
        r = client.call("AuditVerify")
        if args.json:
            output.emit_json(r)
        elif r["ok"]:
            print(f"audit log intact: {r['entries']} entries, signed head at {r['head']}")
        else:
            for p in r["problems"]:
                print(f"TAMPERED: {p}")
        return 0 if r["ok"] else EXIT_ERROR
    for e in client.stream("Audit", pb.AuditRequest(since=args.since or "", limit=args.limit)):
        if args.json:
            output.emit_json(e)
        else:
            print(f"{e['seq']:>6}  {e['time']}  {e['actor']:<12} {e['action']:<16} "
                  f"{json.dumps(e['detail'], ensure_ascii=False)}")
    return 0


# -- parser -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="node home (default $FCNODE_HOME or ./fcnode-home)")
    common.add_argument("--token-file", help="file holding your credential (else $FCNODE_TOKEN)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(prog="fcnode", description="A fusion center's node.")
    parser.add_argument("--version", action="version", version=f"fcnode {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    p = add("init", cmd_init, "create a node home (keys, config, database, first admin)")
    p.add_argument("--center", required=True, help="center id, e.g. ncric")
    p.add_argument("--name", required=True, help="display name")
    p.add_argument("--listen", required=True, help="federation address HOST:PORT")

    add("identity", cmd_identity, "print this node's identity card")
    p = add("keys", cmd_keys, "rotate this node's signing or seal key or renew its TLS certificate "
            "(admin; peers learn the new key from this center's log)")
    ks = p.add_subparsers(dest="keys_cmd", required=True, metavar="rotate")
    kr = ks.add_parser("rotate", parents=[common])
    kr.add_argument("--signing", action="store_true", help="a new Ed25519 signing key")
    kr.add_argument("--tls", action="store_true", help="a new TLS key and certificate")
    kr.add_argument("--seal", action="store_true",
                    help="a new X25519 seal key (what copies, answers and hits for this "
                    "center are sealed to)")
    kr.add_argument("--retire", action="store_true",
                    help="with --seal: delete every earlier private seal key (what was "
                    "sealed to them no longer opens here)")
    kr.add_argument("--stolen", action="store_true",
                    help="with --signing: entries the current key signed beyond this node's "
                    "head are not this node's (a stolen key); allowed while the own log is "
                    "held, and ends it")
    p = add("serve", cmd_serve, "run the daemon in the foreground")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add("status", cmd_status, "the running daemon's state")
    p = add("backup", cmd_backup, "write a consistent copy of the database (admin; works "
            "with the daemon running or stopped)")
    p.add_argument("file", help="the backup file to write (mode 0600)")
    p.add_argument("--include-keys", action="store_true",
                   help="write a tar bundle with the keys and config too")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    p = add("restore", cmd_restore, "install a backup (daemon stopped): checked, put in "
            "place atomically; the node then recovers its own log from its peers")
    p.add_argument("file", help="a file written by fcnode backup (database or --include-keys tar)")
    p = add("recovery", cmd_recovery, "own-log recovery after a restore (admin)")
    p.add_argument("recovery_cmd", choices=["finish", "adopt"],
                   help="finish: end the wait (no peer holds newer entries of this log); "
                   "adopt: the entries that put the own log on hold are this node's own "
                   "(an old copy of node.db): take them back")

    p = add("publish", cmd_publish, "sign and publish a record")
    _record_flags(p)

    p = add("get", cmd_get, "show a record and its verification")
    p.add_argument("record_id")

    p = add("search", cmd_search, "search this node's records")
    add_search_flags(p)

    p = add("users", cmd_users, "manage users (admin)")
    us = p.add_subparsers(dest="users_cmd", required=True, metavar="add|list|remove|set")
    ua = us.add_parser("add", parents=[common])
    ua.add_argument("name")
    ua.add_argument("--attr", action="append", help="attribute, e.g. sworn_le, ntk:narcotics")
    ua.add_argument("--admin", action="store_true")
    us.add_parser("list", parents=[common])
    ur = us.add_parser("remove", parents=[common])
    ur.add_argument("name")
    ut = us.add_parser("set", parents=[common], help="replace a user's attributes")
    ut.add_argument("name")
    ut.add_argument("--attr", action="append", help="attribute (none: no attributes)")

    p = add("audit", cmd_audit, "read or verify the audit log (admin)")
    p.add_argument("audit_cmd", nargs="?", choices=["verify"], help="verify the hash chain")
    p.add_argument("--since", help="date or age, e.g. 7d")
    p.add_argument("--limit", type=int, default=0, help="newest N entries")

    from node.cli import federation_cmds, lifecycle_cmds, stix_cmds, watch_cmds

    federation_cmds.register(add, common)
    watch_cmds.register(add, common)
    lifecycle_cmds.register(add, _record_flags)
    stix_cmds.register(add)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fcnode")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _record_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", help="JSON record (or a list of them); - for stdin")
    p.add_argument("--kind", help="SAR, BOLO, BULLETIN, TIP or DECONFLICTION")
    p.add_argument("--title")
    p.add_argument("--narrative")
    p.add_argument("--entity", action="append", metavar="TYPE=VALUE")
    p.add_argument("--label", action="append")
    p.add_argument("--behavior", action="append", metavar="CODE",
                   help="ISE-SAR behaviour category, e.g. SURVL (repeatable)")
    p.add_argument("--tlp", help="CLEAR, GREEN, AMBER (default), AMBER+STRICT or RED")
    p.add_argument("--audience", action="append", metavar="CENTER_OR_GROUP",
                   help="center id, group or 'members' (default: this center only)")
    p.add_argument("--require", action="append", metavar="ATTR")
    p.add_argument("--discoverability", choices=["open", "pointer", "restricted"])
    p.add_argument("--no-relay", action="store_true", help="only this node may pass it on")
    p.add_argument("--justification", help="28 CFR 23 reasonable suspicion")
    p.add_argument("--reliability", help="source reliability A, B, C or X")
    p.add_argument("--validity", help="content validity 1, 2, 3 or 4")
    p.add_argument("--expires", help="date (default: five years)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except CliError as exc:
        output.error(str(exc))
        return exc.code
    except ValidationError as exc:
        output.error(str(exc))
        return EXIT_USAGE
    except FcnodeError as exc:
        output.error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
