"""Issue 13 with real daemons: `fcnode export --format stix2.1` releases only
what the caller may read in FULL (never a POINTER-level record), audits it and
logs it as disseminated (channel export); `fcnode import` of that bundle into an
empty node gives the same records; a dry run and refused bundles write nothing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import stix2
from stix2validator import ValidationOptions, validate_parsed_json

from node.cli.client import Client, CliError
from node.config.home import Home
from node.core import record
from node.core.stix import common
from node.devnet import Node
from node.wire import records_pb2

KINDS_TLPS = [("SAR", "AMBER"), ("BOLO", "GREEN"), ("BULLETIN", "CLEAR"),
              ("TIP", "AMBER+STRICT"), ("DECONFLICTION", "RED")]
ENTITIES = ["person=Doe, John;1980-01-02", "phone=(555) 123-4567", "plate=CA:7ABC-123",
            "email=john@example.com", "address=12 North Main Street", "organization=Acme Inc",
            "vehicle=1HGCM82633A004352", "weapon=SN12345"]


def _bodies(node: Node, origin: str) -> dict[str, Any]:
    with contextlib.closing(node.db()) as conn:
        rows = conn.execute("SELECT payload FROM entries WHERE origin = ? AND payload IS NOT "
                            "NULL ORDER BY seq", (origin,)).fetchall()
    return {b.record_id: b for b in (records_pb2.RecordBody.FromString(r[0]) for r in rows)}


def _entry_count(node: Node) -> int:
    with contextlib.closing(node.db()) as conn:
        return conn.execute("SELECT count(*) FROM entries").fetchone()[0]


def _comparable(body: Any) -> dict[str, Any]:
    out = record.body_to_dict(body)
    for key in ("record_id", "origin", "seq", "created", "author", "editor"):
        out.pop(key)
    return out


def _export(node: Node, path: Path, *filters: str, user: str) -> dict[str, Any]:
    node.ok("export", *filters, "--format", "stix2.1", "-o", str(path), user=user)
    assert path.stat().st_mode & 0o077 == 0  # record content: the owner's only
    return json.loads(path.read_text())


def test_export_never_includes_a_pointer_level_record(make_node, tmp_path: Path) -> None:
    node = make_node("ncric")
    node.add_user("officer", "sworn_le")
    node.add_user("clerk")
    open_rec = node.publish("--kind", "BULLETIN", "--title", "Phone used in scams",
                            "--entity", "phone=555-123-4567", "--tlp", "GREEN",
                            "--audience", "members")
    guarded = node.publish("--kind", "SAR", "--title", "Stash house phone",
                           "--entity", "phone=555-123-4567", "--require", "sworn_le",
                           "--justification", "controlled buy")
    # The clerk's search finds the guarded record as a POINTER (an exact entity match) ...
    seen = {r["record_id"]: r["access"] for r in node.json_lines(
        "search", "--entity", "phone=555-123-4567", user="clerk")}
    assert seen == {open_rec["record_id"]: "FULL", guarded["record_id"]: "POINTER"}
    # ... but the export holds only what the clerk may read in full.
    for filters in (("--entity", "phone=555-123-4567"), ()):
        bundle = _export(node, tmp_path / "clerk.json", *filters, user="clerk")
        reports = [o for o in bundle["objects"] if o["type"] == "report"]
        assert [r["id"] for r in reports] == [common.report_id("ncric", open_rec["record_id"], 1)]
        assert "Stash house" not in json.dumps(bundle)
        assert validate_parsed_json(bundle, ValidationOptions(version="2.1")).errors == []
    officer = _export(node, tmp_path / "officer.json", user="officer")
    assert len([o for o in officer["objects"] if o["type"] == "report"]) == 2
    again = _export(node, tmp_path / "again.json", user="officer")
    assert again == officer  # deterministic

    with contextlib.closing(node.db()) as conn:
        rows = conn.execute("SELECT center, user, record_id, channel, decision FROM "
                            "disseminations WHERE channel = 'export'").fetchall()
    assert ("ncric", "clerk", guarded["record_id"], "export", "FULL") not in rows
    assert ("ncric", "clerk", open_rec["record_id"], "export", "FULL") in rows
    assert ("ncric", "officer", guarded["record_id"], "export", "FULL") in rows
    audit = node.json_lines("audit")
    exports = [e for e in audit if e["action"] == "record.export"]
    assert len(exports) == 4 and all(e["detail"]["format"] == "stix2.1" for e in exports)
    assert node.json("audit", "verify")["ok"]


def test_round_trip_into_an_empty_node(make_node, tmp_path: Path) -> None:
    ncric = make_node("ncric")
    ncric.add_user("ortiz", "sworn_le", "ntk:narcotics")
    published = []
    for kind, tlp in KINDS_TLPS:
        args = ["--kind", kind, "--title", f"{kind} title", "--narrative", f"{kind} body",
                "--tlp", tlp, "--label", "case:17", "--justification", "predicate",
                "--reliability", "B", "--validity", "2", "--require", "sworn_le"]
        args += [a for e in ENTITIES for a in ("--entity", e)]
        if tlp == "RED":
            args += ["--require", "user:ncric/ortiz"]
        elif tlp in ("GREEN", "CLEAR"):
            args += ["--audience", "members", "--discoverability", "open"]
        published.append(ncric.publish(*args, user="ortiz"))
    bundle_path = tmp_path / "ncric.json"
    _export(ncric, bundle_path, user="ortiz")

    ffc = make_node("ffc")
    dry = json.loads(ffc.ok("import", str(bundle_path), "--format", "stix2.1", "--dry-run",
                            "--json"))
    assert dry["dry_run"] and len(dry["records"]) == len(KINDS_TLPS) and dry["imported"] == 0
    assert _entry_count(ffc) == 0  # a dry run writes nothing
    result = json.loads(ffc.ok("import", str(bundle_path), "--format", "stix2.1", "--json"))
    assert result["imported"] == len(KINDS_TLPS) and result["skipped"] == []
    originals = _bodies(ncric, "ncric")
    imported = _bodies(ffc, "ffc")
    by_report = {r["stix_id"]: r["record_id"] for r in result["records"]}
    for p in published:
        copy = imported[by_report[common.report_id("ncric", p["record_id"], 1)]]
        assert _comparable(copy) == _comparable(originals[p["record_id"]])
    human = ffc.ok("import", str(bundle_path), "--format", "stix2.1", "--dry-run")
    assert "would become SAR" in human


def test_refused_bundles_write_nothing(make_node, tmp_path: Path) -> None:
    node = make_node("ffc")
    good = stix2.v21.Report(name="fine", published="2026-01-01T00:00:00Z",
                            object_refs=[stix2.v21.EmailAddress(value="a@b.org").id],
                            report_types=["bulletin"])
    bad = stix2.v21.Report(name="a SAR needs a justification", published="2026-01-01T00:00:00Z",
                           object_refs=[good.id], report_types=["sar"])
    statement = stix2.v21.MarkingDefinition(definition_type="statement",
                                            definition={"statement": "Copyright ACME"})
    marked = stix2.v21.Report(name="marked", published="2026-01-01T00:00:00Z",
                              object_refs=[good.id], object_marking_refs=[statement.id])
    cases = {
        "notjson.json": ("{not json", "not JSON"),
        "notbundle.json": (json.dumps({"type": "report"}), "not a STIX bundle"),
        "half.json": (stix2.v21.Bundle(good, bad).serialize(), "justification"),
        "marking.json": (stix2.v21.Bundle(statement, marked).serialize(),
                         "marking fcnode does not know"),
        "big.json": ('{"type": "bundle", "objects": []}' + " " * common.MAX_BUNDLE_BYTES,
                     "MiB"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        r = node.cli("import", str(path), "--format", "stix2.1")
        assert r.returncode == 2, (name, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
    r = node.cli("import", "-", "--format", "stix2.1", stdin=cases["big.json"][0])
    assert r.returncode == 2 and "MiB" in r.stderr
    # The daemon holds the limit too, whatever a client sends it.
    client = Client(Home(node.home), node.token)
    with pytest.raises(CliError, match="more than 8 MiB"):
        client.call("Import", {"format": "stix2.1", "bundle": cases["big.json"][0]})
    client.close()
    assert _entry_count(node) == 0
