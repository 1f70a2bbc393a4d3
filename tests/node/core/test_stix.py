"""Issue 13: STIX 2.1 conversion (pure). Every exported bundle passes
stix2-validator; records of every kind, TLP and entity type survive a round
trip; bundles written with the stix2 library the way MISP and OpenCTI write
them import as the expected records; bad bundles are refused with a clear error."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stix2
from stix2validator import ValidationOptions, validate_parsed_json

from node.core import record
from node.core.record import CONTENT_KINDS
from node.core.stix import common, export, imports
from node.core.types import Tlp, ValidationError

ENTITIES = ["person=Doe, John A.;1980-01-02", "phone=(555) 123-4567", "plate=CA:7ABC-123",
            "email=John.Doe+x@Example.com", "address=12 North Main Street #4",
            "organization=Acme, Inc.", "vehicle=1HGCM82633A004352", "weapon=SN-12345"]
CREATED = 1_790_000_000_123
KNOWN = {"ncric", "nysic", "ffc"}


def _draft(kind: str, tlp: str, **over: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"tlp": tlp, "audience": ["nysic"],
                              "require": ["sworn_le", "ntk:narcotics"],
                              "discoverability": "restricted", "relay": True}
    if tlp == "RED":
        policy["require"] = ["user:nysic/ortiz"]
    if tlp == "GREEN":
        policy.update(audience=["members"], discoverability="open", require=[])
    if tlp == "CLEAR":
        policy.update(audience=[], require=[], discoverability="pointer", relay=False)
    doc = {"kind": kind, "title": f"{kind} {tlp} title", "narrative": f"what happened\n{tlp}",
           "labels": ["narcotics", "case:2026/17"], "entities": ENTITIES, "policy": policy,
           "part23": {"justification": "reasonable suspicion: controlled buy",
                      "source_reliability": "B", "content_validity": "2",
                      "review_due": "2027-06-01"},
           "expires": "2028-01-01T00:00:00Z", "contact": "NCRIC watch desk 555-0100"}
    doc.update(over)
    return doc


def _body(doc: dict[str, Any], origin: str = "ncric", record_id: str = "r1",
          version: int = 1, created: int = CREATED) -> Any:
    d = record.parse_draft(doc)
    return record.build_body(d, origin=origin, seq=1, prev=b"", record_id=record_id,
                             version=version, created_ms=created,
                             audience=record.expand_audience(d.audience, {}, KNOWN),
                             author="ortiz", contact="default contact")


def _all_bodies() -> list[Any]:
    bodies = []
    for i, kind in enumerate(CONTENT_KINDS):
        for j, tlp in enumerate(["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]):
            bodies.append(_body(_draft(kind, tlp), record_id=f"{i:02d}{j:02d}" * 8))
    bodies.append(_body(_draft("BULLETIN", "AMBER", entities=[], labels=[], narrative=""),
                        record_id="e" * 32))
    # ISE-SAR behaviour codes have no STIX field: they travel in the fcnode extension.
    bodies.append(_body(_draft("SAR", "AMBER", behaviors=["SURVL", "PHOTO"]),
                        record_id="b" * 32))
    return bodies


def _errors(bundle: dict[str, Any]) -> list[str]:
    result = validate_parsed_json(json.loads(json.dumps(bundle)),
                                  ValidationOptions(version="2.1"))
    return [str(e) for e in result.errors]


def _comparable(body: Any) -> dict[str, Any]:
    out = record.body_to_dict(body)
    for key in ("record_id", "origin", "seq", "created", "author", "editor", "version"):
        out.pop(key)
    return out


def test_every_exported_bundle_passes_the_validator() -> None:
    bodies = _all_bodies()
    bundle = export.bundle(bodies, {"ncric": "Northern California RIC"})
    assert _errors(bundle) == []
    for body in bodies:  # and each record alone
        assert _errors(export.bundle([body], {})) == []
    assert _errors(export.bundle([], {})) == []


def test_export_maps_records_to_reports_identities_and_tlp_2_markings() -> None:
    body = _body(_draft("SAR", "AMBER+STRICT"))
    objs = {o["id"]: o for o in export.bundle([body], {"ncric": "NCRIC"})["objects"]}
    [report] = [o for o in objs.values() if o["type"] == "report"]
    assert report["id"] == common.report_id("ncric", "r1", 1)
    assert report["name"] == "SAR AMBER+STRICT title" and report["report_types"] == ["sar"]
    assert report["object_marking_refs"] == [
        "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"]
    center = objs[report["created_by_ref"]]
    assert center["identity_class"] == "organization" and center["name"] == "NCRIC"
    ext = report["extensions"][common.EXTENSION_ID]
    assert ext["audience"] == ["nysic"] and ext["discoverability"] == "restricted"
    assert ext["required_attributes"] == ["ntk:narcotics", "sworn_le"]
    assert ext["relay"] is False and ext["justification"].startswith("reasonable")
    assert common.EXTENSION_ID in objs and objs[common.EXTENSION_ID]["type"] == \
        "extension-definition"
    types = sorted(objs[r]["type"] for r in report["object_refs"])
    assert types == ["email-addr", "fcnode-plate", "fcnode-vehicle", "fcnode-weapon",
                     "identity", "identity", "location", "phone-number"]
    person = next(objs[r] for r in report["object_refs"]
                  if objs[r].get("identity_class") == "individual")
    assert person["name"] == "Doe, John A."
    marking = objs["marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"]
    assert marking["extensions"][common.TLP2_EXTENSION]["tlp_2_0"] == "amber+strict"


def test_exporting_twice_gives_the_same_bundle() -> None:
    bodies = _all_bodies()
    first = json.dumps(export.bundle(bodies, {}), sort_keys=True)
    assert json.dumps(export.bundle(list(reversed(bodies)), {}), sort_keys=True) == first
    newer = _body(_draft("SAR", "AMBER"), version=2)
    assert export.bundle([newer], {})["id"] != export.bundle([_body(_draft("SAR", "AMBER"))],
                                                           {})["id"]


def test_round_trip_every_kind_tlp_and_entity_type() -> None:
    bodies = _all_bodies()
    plan = imports.plan(export.bundle(bodies, {}))
    assert plan.skipped == ()
    assert len(plan.records) == len(bodies)
    by_report = {c.stix_id: c for c in plan.records}
    for body in bodies:
        conv = by_report[common.report_id(body.origin, body.record_id, body.version)]
        again = _body(conv.draft, origin="ffc", record_id="x" * 32, created=CREATED + 99_000)
        assert _comparable(again) == _comparable(body)


def test_a_shared_observable_carries_the_strictest_marking() -> None:
    green = _body(_draft("BULLETIN", "GREEN", entities=["email=a@b.org"]), record_id="g" * 32)
    amber = _body(_draft("BULLETIN", "AMBER", entities=["email=a@b.org"]), record_id="a" * 32)
    objs = export.bundle([green, amber], {})["objects"]
    [email] = [o for o in objs if o["type"] == "email-addr"]
    assert email["object_marking_refs"] == [common.TLP2_IDS[Tlp.AMBER]]


# -- bundles as other tools write them ------------------------------------------------
AMBER_STRICT = stix2.v21.MarkingDefinition(
    id="marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    created="2022-10-01T00:00:00.000Z", name="TLP:AMBER+STRICT",
    extensions={common.TLP2_EXTENSION: {"extension_type": "property-extension",
                                        "tlp_2_0": "amber+strict"}})


def _misp_bundle() -> dict[str, Any]:
    """A MISP event as misp-stix writes it: a report with indicators and
    observed-data, the organisation's identity, TLP:AMBER+STRICT."""
    org = stix2.v21.Identity(name="ORGNAME", identity_class="organization")
    email = stix2.v21.EmailAddress(value="courier@example.net")
    ind1 = stix2.v21.Indicator(
        name="courier phone", pattern_type="stix",
        pattern="[phone-number:value = '555-987-6543']", valid_from="2026-01-01T00:00:00Z",
        labels=['misp:type="phone-number"', 'misp:category="Attribution"'],
        created_by_ref=org.id, object_marking_refs=[AMBER_STRICT.id], allow_custom=True)
    ind2 = stix2.v21.Indicator(
        name="c2", pattern_type="stix", pattern="[ipv4-addr:value = '198.51.100.7']",
        valid_from="2026-01-01T00:00:00Z", created_by_ref=org.id)
    obs = stix2.v21.ObservedData(first_observed="2026-01-02T00:00:00Z",
                                 last_observed="2026-01-02T00:00:00Z", number_observed=1,
                                 object_refs=[email.id], created_by_ref=org.id)
    report = stix2.v21.Report(
        name="Narcotics courier network", published="2026-01-03T00:00:00Z",
        description="MISP event 4411", report_types=["misc"], created_by_ref=org.id,
        labels=["Threat-Report", 'misp:tool="MISP-STIX-Converter"'],
        object_refs=[ind1.id, ind2.id, obs.id, org.id], object_marking_refs=[AMBER_STRICT.id])
    return json.loads(stix2.v21.Bundle(org, AMBER_STRICT, email, ind1, ind2, obs, report,
                                       allow_custom=True).serialize())


def test_a_misp_report_with_indicators_and_observed_data() -> None:
    plan = imports.plan(_misp_bundle())
    [rec] = plan.records
    d = rec.draft
    assert d["kind"] == "BULLETIN" and d["title"] == "Narcotics courier network"
    assert d["policy"]["tlp"] == "AMBER+STRICT" and d["policy"]["audience"] == []
    assert {(e["type"], e["value"]) for e in d["entities"]} == {
        ("phone", "555-987-6543"), ("email", "courier@example.net")}
    assert "[ipv4-addr:value = '198.51.100.7']" in d["narrative"]
    assert any("ipv4-addr" in s.reason for s in plan.skipped)
    draft = record.parse_draft(d)  # validated like a publish
    assert draft.tlp is Tlp.AMBER_STRICT and not draft.relay
    assert "misp:tool-misp-stix-converter" in draft.labels


def test_an_opencti_grouping_with_tlp_1_and_its_own_tlp_marking_ids() -> None:
    """OpenCTI writes TLP:WHITE (1.0) and its own AMBER+STRICT definition."""
    octi_strict = {"type": "marking-definition", "spec_version": "2.1",
                   "id": "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37",
                   "created": "2022-01-01T00:00:00.000Z", "definition_type": "TLP",
                   "name": "TLP:AMBER+STRICT", "definition": {"TLP": "TLP:AMBER+STRICT"}}
    person = stix2.v21.Identity(name="Jane Roe", identity_class="individual",
                                object_marking_refs=[stix2.v21.TLP_WHITE.id])
    place = stix2.v21.Location(street_address="40 Elm Street", city="Albany",
                               country="US", object_marking_refs=[stix2.v21.TLP_WHITE.id])
    phone = {"type": "phone-number", "spec_version": "2.1",
             "id": "phone-number--5a0c3d29-1b8e-5bbd-9d3a-2d0fd5f0a3c1", "value": "+1 518 555 0199"}
    grouping = stix2.v21.Grouping(name="Shared case", context="suspicious-activity",
                                  object_refs=[person.id, place.id, phone["id"]],
                                  object_marking_refs=[stix2.v21.TLP_WHITE.id],
                                  allow_custom=True)
    other = stix2.v21.Grouping(name="Strict one", context="unspecified",
                               object_refs=[place.id], object_marking_refs=[octi_strict["id"]])
    bundle = json.loads(stix2.v21.Bundle(stix2.v21.TLP_WHITE, person, place, grouping, other,
                                         allow_custom=True).serialize())
    bundle["objects"] += [phone, octi_strict]
    plan = imports.plan(bundle, audience=("members",))
    by = {c.draft["title"]: c.draft for c in plan.records}
    shared = by["Shared case"]
    assert shared["policy"] == {"tlp": "CLEAR", "audience": ["members"]}
    assert {(e["type"], e["value"]) for e in shared["entities"]} == {
        ("person", "Jane Roe"), ("address", "40 Elm Street, Albany"),
        ("phone", "+1 518 555 0199")}
    assert by["Strict one"]["policy"]["tlp"] == "AMBER+STRICT"
    for d in by.values():
        record.parse_draft(d)


def test_incident_sighting_and_standalone_indicator_become_records() -> None:
    ind = stix2.v21.Indicator(name="plate seen", pattern_type="stix",
                              pattern="[fcnode-plate:value = '7ABC123']",
                              valid_from="2026-01-01T00:00:00Z", allow_custom=True)
    lone = stix2.v21.Indicator(name="mail", pattern_type="stix",
                               pattern="[email-addr:value = 'x@example.org']",
                               valid_from="2026-01-01T00:00:00Z",
                               object_marking_refs=[stix2.v21.TLP_GREEN.id])
    sighting = stix2.v21.Sighting(sighting_of_ref=ind.id)
    incident = stix2.v21.Incident(name="Shots fired", description="at the depot")
    bundle = json.loads(stix2.v21.Bundle(ind, lone, sighting, incident,
                                         allow_custom=True).serialize())
    plan = imports.plan(bundle, default_tlp=Tlp.GREEN)
    by = {c.stix_id: c.draft for c in plan.records}
    assert set(by) == {lone.id, sighting.id, incident.id}  # ind is folded into the sighting
    assert by[sighting.id]["entities"] == [{"type": "plate", "value": "7ABC123"}]
    assert by[sighting.id]["title"] == "Sighting of plate seen"
    assert by[lone.id]["entities"] == [{"type": "email", "value": "x@example.org"}]
    assert by[incident.id]["policy"]["tlp"] == "GREEN"  # no marking: the default


def test_the_strictest_marking_of_what_is_folded_in_wins() -> None:
    email = stix2.v21.EmailAddress(value="a@example.org",
                                   object_marking_refs=[stix2.v21.TLP_AMBER.id])
    report = stix2.v21.Report(name="r", published="2026-01-01T00:00:00Z",
                              object_refs=[email.id],
                              object_marking_refs=[stix2.v21.TLP_GREEN.id])
    plan = imports.plan(json.loads(stix2.v21.Bundle(email, report).serialize()))
    assert plan.records[0].draft["policy"]["tlp"] == "AMBER"


@pytest.mark.parametrize("bundle, message", [
    ([], "not a STIX bundle"),
    ({"type": "bundle", "objects": {}}, "'objects' must be a list"),
    ({"type": "bundle", "spec_version": "2.0", "objects": []}, "STIX 2.0"),
    ({"type": "bundle", "objects": [{"type": "report"}]}, "has no valid id"),
    ({"type": "bundle", "objects": [{"type": "report", "spec_version": "2.1",
                                     "id": "report--4d6fbb43-8a49-4b8d-9c2c-1b0d6f3d3a11",
                                     "name": "no published date", "object_refs": [],
                                     "created": "2026-01-01T00:00:00Z",
                                     "modified": "2026-01-01T00:00:00Z"}]},
     "not valid STIX 2.1"),
])
def test_malformed_bundles_are_refused(bundle: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        imports.plan(bundle)


def test_an_unknown_marking_is_refused_never_dropped() -> None:
    statement = stix2.v21.MarkingDefinition(definition_type="statement",
                                            definition={"statement": "Copyright ACME"})
    report = stix2.v21.Report(name="r", published="2026-01-01T00:00:00Z",
                              object_refs=[statement.id.replace("marking-definition", "identity")],
                              object_marking_refs=[statement.id])
    bundle = json.loads(stix2.v21.Bundle(statement, report).serialize())
    with pytest.raises(ValidationError, match=r"marking fcnode does not know"):
        imports.plan(bundle)
    bundle["objects"] = [report_dict for report_dict in bundle["objects"]
                         if report_dict["type"] == "report"]  # undefined marking id
    with pytest.raises(ValidationError, match=r"neither a TLP marking nor defined"):
        imports.plan(bundle)


def test_too_many_objects_are_refused() -> None:
    email = json.loads(stix2.v21.EmailAddress(value="a@b.org").serialize())
    bundle = {"type": "bundle", "id": "bundle--4d6fbb43-8a49-4b8d-9c2c-1b0d6f3d3a11",
              "objects": [email] * (common.MAX_OBJECTS + 1)}
    with pytest.raises(ValidationError, match="at most"):
        imports.plan(bundle)


@pytest.mark.parametrize("marking, tlp", [
    (stix2.v21.TLP_WHITE, "CLEAR"), (stix2.v21.TLP_GREEN, "GREEN"),
    (stix2.v21.TLP_AMBER, "AMBER"), (stix2.v21.TLP_RED, "RED"),
    *[(export.tlp_marking(t), t.label) for t in Tlp],
])
def test_tlp_1_and_2_markings_map_to_tlp(marking: Any, tlp: str) -> None:
    report = stix2.v21.Report(name="r", published="2026-01-01T00:00:00Z",
                              object_refs=[stix2.v21.EmailAddress(value="a@b.org").id],
                              object_marking_refs=[marking.id])
    # Only the id counts: the bundle need not even hold the definition.
    plan = imports.plan(json.loads(stix2.v21.Bundle(report).serialize()), Tlp.GREEN)
    assert plan.records[0].draft["policy"]["tlp"] == tlp


def test_granular_markings_are_refused() -> None:
    report = stix2.v21.Report(
        name="r", published="2026-01-01T00:00:00Z",
        object_refs=[stix2.v21.EmailAddress(value="a@b.org").id],
        granular_markings=[{"marking_ref": stix2.v21.TLP_RED.id, "selectors": ["name"]}])
    with pytest.raises(ValidationError, match="granular markings"):
        imports.plan(json.loads(stix2.v21.Bundle(report).serialize()))
