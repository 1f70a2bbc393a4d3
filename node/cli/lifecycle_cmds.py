"""CLI commands for a record's life: update, retract, validate, purge, review,
and the notices a center receives about records it holds."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.cli import output
from node.cli.client import EXIT_USAGE, CliError, client_for
from node.cli.drafts import drafts_from_file
from node.core.localtypes import build
from node.wire import local_pb2 as pb


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """Only what was given: the rest of the record stays as it is."""
    if args.file:
        drafts = drafts_from_file(args.file)
        if len(drafts) != 1:
            raise CliError("update takes one record in --file", EXIT_USAGE)
        return drafts[0]
    changes: dict[str, Any] = {}
    for key in ("kind", "title", "narrative", "expires"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.entity is not None:
        changes["entities"] = args.entity
    if args.label is not None:
        changes["labels"] = args.label
    policy = {k: v for k, v in (("tlp", args.tlp), ("audience", args.audience),
                                ("require", args.require),
                                ("discoverability", args.discoverability)) if v is not None}
    if args.no_relay:
        policy["relay"] = False
    if policy:
        changes["policy"] = policy
    part23 = {k: v for k, v in (("justification", args.justification),
                                ("source_reliability", args.reliability),
                                ("content_validity", args.validity)) if v is not None}
    if part23:
        changes["part23"] = part23
    if not changes:
        raise CliError("nothing to change: give the flags to change, or --file", EXIT_USAGE)
    return changes


def changes_message(changes: dict[str, Any]) -> pb.RecordChanges:
    """The fields to change as the typed message (entities TYPE=VALUE split)."""
    from node.core.entities import parse_pair

    if isinstance(changes.get("entities"), list):
        changes = {**changes, "entities": [
            dict(zip(("type", "value"), parse_pair(e), strict=True)) if isinstance(e, str)
            else e for e in changes["entities"]]}
    try:
        return build(pb.RecordChanges, changes)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A record file with an unknown field or a value of the wrong type.
        raise CliError(f"update: {str(exc).strip(chr(34))}", EXIT_USAGE) from None


def _done(args: argparse.Namespace, r: dict[str, Any], verb: str) -> int:
    if args.json:
        output.emit_json(r)
    else:
        print(f"{verb} {r['record_id']}: version {r['version']} ({r['kind']}, seq {r['seq']})")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    r = client_for(args).call("Update", pb.UpdateRequest(
        record_id=args.record_id, changes=changes_message(_changes(args)), reason=args.reason))
    return _done(args, r, "updated")


def cmd_end(args: argparse.Namespace) -> int:
    """retract, purge and validate: one record, one reason."""
    r = client_for(args).call(args.command.capitalize(), pb.RecordReason(
        record_id=args.record_id, reason=args.reason))
    return _done(args, r, {"retract": "retracted", "purge": "purged",
                           "validate": "validated"}[args.command])


def cmd_review(args: argparse.Namespace) -> int:
    rows = list(client_for(args).stream("Review", pb.ReviewRequest(within=args.due_within)))
    if args.json:
        for r in rows:
            output.emit_json(r)
    elif not output.table([{**r, "overdue": "OVERDUE" if r["overdue"] else ""} for r in rows],
                          ["review_due", "overdue", "record_id", "kind", "version", "title"]):
        print(f"no records due for review within {args.due_within}")
    return 0


def cmd_notices(args: argparse.Namespace) -> int:
    rows = list(client_for(args).stream("Notices", pb.NoticesRequest(since=args.since or "",
                                                                      limit=args.limit)))
    if args.json:
        for r in rows:
            output.emit_json(r)
        return 0
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("time", "kind", "origin", "record_id")}
        print(f"{r['time']}  {r['kind']:<13} {r['origin']:<10} {r['record_id']}  "
              + "  ".join(f"{k}={v}" for k, v in sorted(extra.items()) if v not in ("", None)))
    if not rows:
        print("no notices")
    return 0


def register(add: Callable[..., argparse.ArgumentParser],
             record_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = add("update", cmd_update, "publish a new version of one of this center's records")
    p.add_argument("record_id")
    record_flags(p)
    p.add_argument("--reason", default="", help="why (kept with the version)")
    for name, help_ in (
            ("retract", "withdraw a record everywhere (holders keep a notice)"),
            ("purge", "delete a record's content everywhere now (28 CFR 23.20(h))"),
            ("validate", "record a review and keep the record five more years")):
        p = add(name, cmd_end, help_)
        p.add_argument("record_id")
        p.add_argument("--reason", required=True)
    p = add("review", cmd_review, "this center's records due for review")
    p.add_argument("--due-within", default="90d", help="e.g. 90d (default), 1y")
    p = add("notices", cmd_notices, "corrections, retractions, purges, recalls, "
                                    "deconfliction hits")
    p.add_argument("--since", help="date or age, e.g. 7d")
    p.add_argument("--limit", type=int, default=1000)
