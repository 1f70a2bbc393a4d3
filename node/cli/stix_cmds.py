"""`fcnode export` and `fcnode import`: STIX 2.1 bundles out of and into the node
(README "STIX 2.1"). The daemon converts, decides access and publishes; the CLI
reads and writes the files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from node.cli import output
from node.cli.client import EXIT_USAGE, CliError, client_for
from node.cli.search_args import add_search_flags, search_filters
from node.core.stix.common import MAX_BUNDLE_BYTES
from node.wire import local_pb2 as pb

FORMATS = ["stix2.1"]


def cmd_export(args: argparse.Namespace) -> int:
    req = pb.ExportRequest(format=args.format, filters=search_filters(args))
    result = client_for(args).call("Export", req, timeout=300)
    text = json.dumps(result["bundle"], indent=2, ensure_ascii=False) + "\n"
    if args.output and args.output != "-":
        path = Path(args.output)
        # The bundle holds record content: readable by its owner only, like the keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        summary = {"file": str(path), "records": result["records"],
                   "bundle": result["bundle"]["id"]}
        output.emit_json(summary) if args.json else print(
            f"exported {result['records']} record(s) to {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        print(f"exported {result['records']} record(s)", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    path = args.file
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_BUNDLE_BYTES + 1)
        else:
            size = Path(path).stat().st_size
            if size > MAX_BUNDLE_BYTES:
                raise CliError(f"STIX bundle refused: {path} is {size / 2**20:.1f} MiB, more "
                               f"than {MAX_BUNDLE_BYTES // 2**20} MiB in one import (split it)",
                               EXIT_USAGE)
            raw = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    if len(raw) > MAX_BUNDLE_BYTES:
        raise CliError(f"STIX bundle refused: more than {MAX_BUNDLE_BYTES // 2**20} MiB in one "
                       "import (split it)", EXIT_USAGE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"STIX bundle refused: {path} is not UTF-8 text", EXIT_USAGE) from None
    result = client_for(args).call("Import", pb.ImportRequest(
        format=args.format, bundle=text, tlp=args.tlp or "", audience=args.audience or [],
        dry_run=args.dry_run), timeout=600)
    if args.json:
        output.emit_json(result)
        return 0
    verb = "would become" if result["dry_run"] else "became"
    for r in result["records"]:
        target = r.get("record_id", "a record")
        print(f"{r['stix_id']} {verb} {r['kind']} {target} (TLP:{r['tlp']}, "
              f"{r['entities']} entities, {r['folded']} objects folded in)")
        for note in r["notes"]:
            print(f"  note: {note}")
    for s in result["skipped"]:
        print(f"skipped {s['stix_id']}: {s['reason']}")
    done = (f"dry run: {len(result['records'])} record(s) would be imported, nothing written"
            if result["dry_run"] else f"imported {result['imported']} record(s)")
    print(f"{done}; {len(result['skipped'])} object(s) skipped", file=sys.stderr)
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("export", cmd_export, "write the records you may read in full as a STIX 2.1 bundle")
    add_search_flags(p)
    p.set_defaults(limit=1000)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("-o", "--output", help="file to write (mode 0600; default standard output)")

    p = add("import", cmd_import, "publish the records of a STIX 2.1 bundle (all or none)")
    p.add_argument("file", help="the bundle (- for standard input)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--tlp", help="TLP for objects without a marking (default AMBER)")
    p.add_argument("--audience", action="append", metavar="CENTER_OR_GROUP",
                   help="audience of records that carry no fcnode policy "
                        "(default: this center only)")
    p.add_argument("--dry-run", action="store_true", help="check and report, write nothing")


