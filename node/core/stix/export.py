"""Records -> one STIX 2.1 bundle (pure: bodies in, a JSON-ready dict out).

Only records the caller may read in FULL come here (node/services/service.py decides);
this module converts, it never judges access.

Mapping (README "STIX 2.1"):
- each record version is one `report` (kind in `report_types`, title as `name`,
  narrative as `description`, labels, `published`), created by its origin center's
  `identity` (organization), marked with the official TLP 2.0 marking;
- the rest of the access policy, the 28 CFR Part 23 fields, expiry and contact
  travel in the fcnode property extension on the report, so nothing about how
  the record may be shared is lost;
- entities: person -> identity (individual), organization -> identity
  (organization), address -> location, email -> email-addr; phone, plate,
  vehicle and weapon -> custom observables defined by the fcnode extension
  (phone-number is OpenCTI's type name). Every entity object carries its fcnode
  type and exact value in the extension, so an import gives back the same entity;
- ids are UUIDv5 from (origin, record id, version): exporting twice gives the
  same bundle, and consumers deduplicate. Observables (email-addr and the custom
  ones) use the STIX deterministic SCO ids (from their value), so one observable
  shared by several records appears once, marked with the strictest of their TLPs.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import stix2

from node.core.record import body_policy, kind_name
from node.core.stix.common import (
    CUSTOM_SCO,
    EXTENSION_ID,
    FIXED_CREATED,
    NAMESPACE,
    PROJECT_IDENTITY,
    TLP2_CREATED,
    TLP2_EXTENSION,
    TLP2_IDS,
    center_identity_id,
    derived_id,
    record_behaviors,
    report_id,
    timestamp,
    tlp_word,
)
from node.core.types import Tlp
from node.wire import records_pb2

# STIX 2.1 section 2.9: the namespace of deterministic observable ids.
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")


def sco_id(stix_type: str, value: str) -> str:
    """The deterministic id of an observable whose id contributing property is
    ``value`` (what stix2 computes for email-addr; custom observables are built
    here as plain dicts, since stix2 registers an extension id only once)."""
    canonical = json.dumps({"value": value}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return f"{stix_type}--{uuid.uuid5(SCO_NAMESPACE, canonical)}"

EXTENSION_SCHEMA = (
    "fcnode record extension 1.0. Property extension on report: kind, origin, record_id, "
    "version, audience (center ids or 'members'; empty = the origin only), "
    "required_attributes, discoverability (open|pointer|restricted), relay, justification, "
    "source_reliability (A|B|C|X), content_validity (1-4), review_due, expires, contact, "
    "behaviors. Property extension on entity objects: entity_type, value (the fcnode entity "
    "exactly as published). New SCOs phone-number, fcnode-plate, fcnode-vehicle, "
    "fcnode-weapon: value (string, required). The origin's node decides access with the "
    "policy; the TLP marking is in object_marking_refs."
)


def extension_objects() -> list[Any]:
    """The fcnode extension definition and the identity that defines it."""
    project = stix2.v21.Identity(
        id=PROJECT_IDENTITY, name="fcnode", identity_class="system",
        created=FIXED_CREATED, modified=FIXED_CREATED)
    ext = stix2.v21.ExtensionDefinition(
        id=EXTENSION_ID, created_by_ref=PROJECT_IDENTITY, created=FIXED_CREATED,
        modified=FIXED_CREATED, name="fcnode record", version="1.0", schema=EXTENSION_SCHEMA,
        extension_types=["property-extension", "new-sco"],
        description="Access policy, 28 CFR Part 23 fields and typed entities of fcnode "
                    "records (fusion center nodes)")
    return [project, ext]


def tlp_marking(tlp: Tlp) -> stix2.v21.MarkingDefinition:
    """The OASIS TLP 2.0 marking definition object, exactly as published."""
    return stix2.v21.MarkingDefinition(
        id=TLP2_IDS[tlp], created=TLP2_CREATED, name=f"TLP:{tlp.label}",
        extensions={TLP2_EXTENSION: {"extension_type": "property-extension",
                                     "tlp_2_0": tlp_word(tlp)}})


def _person_name(value: str) -> str:
    """'Doe, John;1980-01-02' -> 'Doe, John' (the DOB stays in the extension value)."""
    m = re.search(r"(?:;|\bdob\b[:=]?\s*|\bborn\s+)(.+)$", value, re.IGNORECASE)
    return (value[: m.start()] if m else value).strip() or value


def _entity_ext(etype: str, value: str) -> dict[str, Any]:
    return {EXTENSION_ID: {"extension_type": "property-extension", "entity_type": etype,
                           "value": value}}


def _entity_object(etype: str, value: str, sdo_id: str, created: str,
                   creator: str, marking: str) -> Any:
    """The STIX object for one entity. SDOs get a per-record id; observables get
    the deterministic SCO id of their value (stix2 computes it)."""
    common = {"created": created, "modified": created, "created_by_ref": creator,
              "object_marking_refs": [marking], "extensions": _entity_ext(etype, value)}
    if etype == "person":
        return stix2.v21.Identity(id=sdo_id.replace("report--", "identity--"),
                                  name=_person_name(value), identity_class="individual",
                                  **common)
    if etype == "organization":
        return stix2.v21.Identity(id=sdo_id.replace("report--", "identity--"), name=value,
                                  identity_class="organization", **common)
    if etype == "address":
        # fcnode addresses are US addresses (USPS normalization), and STIX needs a
        # region, country or coordinates on every location.
        return stix2.v21.Location(id=sdo_id.replace("report--", "location--"),
                                  street_address=value, country="US", **common)
    if etype == "email":
        return {"type": "email-addr", "value": value}
    return {"type": CUSTOM_SCO[etype], "value": value}


def _report_extension(body: records_pb2.RecordBody) -> dict[str, Any]:
    p = body_policy(body)
    p23 = body.part23
    ext: dict[str, Any] = {
        "extension_type": "property-extension", "kind": kind_name(body),
        "origin": body.origin, "record_id": body.record_id, "version": body.version,
        "discoverability": p.discoverability.name.lower(), "relay": p.relay,
        "source_reliability": p23.source_reliability or "X",
        "content_validity": p23.content_validity or "4",
        "expires": timestamp(body.expires_ms),
    }
    # STIX forbids empty lists: an absent audience is the empty one (the origin only).
    if p.audience:
        ext["audience"] = sorted(p.audience)
    if p.required_attributes:
        ext["required_attributes"] = sorted(p.required_attributes)
    if p23.justification:
        ext["justification"] = p23.justification
    if p23.review_due_ms:
        ext["review_due"] = timestamp(p23.review_due_ms)
    if body.contact:
        ext["contact"] = body.contact
    behaviors = record_behaviors(body)
    if behaviors:
        ext["behaviors"] = behaviors
    return {EXTENSION_ID: ext}


def _sco(etype: str, value: str, markings: list[str]) -> Any:
    if etype == "email":
        return stix2.v21.EmailAddress(value=value, object_marking_refs=markings)
    stix_type = CUSTOM_SCO[etype]
    return _Plain({"type": stix_type, "spec_version": "2.1", "id": sco_id(stix_type, value),
                   "value": value, "object_marking_refs": markings,
                   "extensions": {EXTENSION_ID: {"extension_type": "new-sco"}}})


class _Plain(dict):
    """A custom observable, serialized like the stix2 objects beside it."""

    @property
    def id(self) -> str:
        return self["id"]

    def serialize(self) -> str:
        return json.dumps(self)


def bundle(bodies: Sequence[records_pb2.RecordBody],
           center_names: Mapping[str, str]) -> dict[str, Any]:
    """One bundle for these record versions (JSON-ready, deterministic).

    ``center_names``: display names of origins (an origin missing is named by id)."""
    bodies = sorted(bodies, key=lambda b: (b.origin, b.record_id, b.version))
    objects: dict[str, Any] = {}
    scos: dict[tuple[str, str], Tlp] = {}  # (etype, value) -> strictest TLP of its records
    tlps: set[Tlp] = set()
    reports = []
    for body in bodies:
        tlp = body_policy(body).tlp
        tlps.add(tlp)
        marking = TLP2_IDS[tlp]
        creator = center_identity_id(body.origin)
        if creator not in objects:
            objects[creator] = stix2.v21.Identity(
                id=creator, name=center_names.get(body.origin) or body.origin,
                identity_class="organization", created=FIXED_CREATED, modified=FIXED_CREATED,
                description=f"fcnode center {body.origin}")
        created = timestamp(body.created_ms)
        refs = []
        base = report_id(body.origin, body.record_id, body.version)
        for i, e in enumerate(body.entities):
            sdo_id = derived_id("report", body.origin, body.record_id, body.version, "entity", i)
            obj = _entity_object(e.type, e.value, sdo_id, created, creator, marking)
            if isinstance(obj, dict):  # an observable: built once all its records are known
                key = (e.type, e.value)
                scos[key] = max(scos.get(key, tlp), tlp)
                refs.append(key)
            else:
                objects[obj.id] = obj
                refs.append(obj.id)
        reports.append((body, base, created, creator, marking, refs))
    sco_objects = {key: _sco(key[0], key[1], [TLP2_IDS[t]]) for key, t in scos.items()}
    for obj in sco_objects.values():
        objects[obj.id] = obj
    for body, rid, created, creator, marking, refs in reports:
        object_refs = [sco_objects[r].id if isinstance(r, tuple) else r for r in refs]
        report = stix2.v21.Report(
            id=rid, created=created, modified=created, published=created, name=body.title,
            description=body.narrative or None, report_types=[kind_name(body).lower()],
            labels=list(body.labels) or None, created_by_ref=creator,
            # a report must refer to something: a record without entities points
            # to its center
            object_refs=list(dict.fromkeys(object_refs)) or [creator],
            object_marking_refs=[marking], extensions=_report_extension(body),
            allow_custom=True)  # object_refs name the custom observables
        objects[report.id] = report
    for tlp in sorted(tlps):
        m = tlp_marking(tlp)
        objects[m.id] = m
    if bodies:
        for obj in extension_objects():
            objects[obj.id] = obj
    ordered = [json.loads(objects[k].serialize()) for k in sorted(objects)]
    bundle_id = f"bundle--{uuid.uuid5(NAMESPACE, ' '.join(sorted(objects)))}"
    return {"type": "bundle", "id": bundle_id, "objects": ordered}
