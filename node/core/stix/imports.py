"""A STIX 2.1 bundle -> record drafts (pure: parsed JSON in, draft documents out).

The drafts are the documents `fcnode publish --file` takes (node/core/record.py
parse_draft validates them), so an import is validated exactly like a publish;
node/services/service.py then publishes them all in one transaction.

What becomes a record: every `report`, `grouping`, `incident`, `observed-data`,
`sighting` and `indicator`, except one that a report or grouping (or a sighting,
for observed-data and indicators) refers to: that one is folded into the record
of its container, the way a MISP event's attributes belong to the event. The
observables a record refers to become its typed entities: email-addr, location
(street address), identity (individual -> person, organization), phone-number,
the fcnode custom observables, and the equality terms of indicator patterns on
those types. Everything else is listed as skipped, with the reason.

Markings: the TLP 2.0 ids, the STIX 2.1 TLP 1.0 ids (WHITE -> CLEAR), and a
marking definition in the bundle that says it is TLP (OpenCTI writes its own ids).
A record's TLP is the strictest of its own and of everything folded into it
(never the loosest); none at all takes the default (--tlp). A marking that is
not TLP is refused, never dropped: the import stops and names it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import stix2
from stix2.exceptions import STIXError

from node.core import entities
from node.core.record import CONTENT_KINDS, MAX_LABELS, MAX_TITLE
from node.core.stix.common import (
    EXTENSION_ID,
    KNOWN_MARKINGS,
    MAX_IMPORT_RECORDS,
    MAX_OBJECTS,
    SCO_ENTITY,
    TLP2_EXTENSION,
    TLP_WORDS,
)
from node.core.types import Tlp, ValidationError

RECORD_TYPES = ("report", "grouping", "incident", "observed-data", "sighting", "indicator")
CONTAINERS = ("report", "grouping")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*--[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Equality terms of a pattern: [email-addr:value = 'x'], [phone-number:value='x'].
_PATTERN_TERM = re.compile(r"([a-z0-9-]+):value\s*=\s*'((?:[^'\\]|\\.)*)'")
_LABEL_BAD = re.compile(r"[^a-z0-9_:./-]+")
_SILENT = ("marking-definition", "extension-definition", "language-content")


@dataclass(frozen=True)
class Converted:
    """One STIX object that becomes one record."""

    stix_id: str
    draft: dict[str, Any]
    folded: tuple[str, ...]  # the ids folded into it
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    stix_id: str
    reason: str


@dataclass(frozen=True)
class Plan:
    records: tuple[Converted, ...]
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)


def _fail(what: str) -> ValidationError:
    return ValidationError(f"STIX bundle refused: {what}")


def check_bundle(data: Any) -> dict[str, dict[str, Any]]:
    """Structural checks, then stix2's own property checks on every object.
    Returns the objects by id."""
    if not isinstance(data, dict) or data.get("type") != "bundle":
        raise _fail("not a STIX bundle (a JSON object with \"type\": \"bundle\")")
    if "spec_version" in data:
        raise _fail("this is a STIX 2.0 bundle (spec_version on the bundle); "
                    "only STIX 2.1 is accepted")
    objects = data.get("objects", [])
    if not isinstance(objects, list):
        raise _fail("'objects' must be a list")
    if len(objects) > MAX_OBJECTS:
        raise _fail(f"{len(objects)} objects; at most {MAX_OBJECTS} in one import")
    by_id: dict[str, dict[str, Any]] = {}
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise _fail(f"object {i} has no type")
        oid = obj.get("id")
        if not isinstance(oid, str) or not _ID_RE.match(oid) or \
                not oid.startswith(obj["type"] + "--"):
            raise _fail(f"object {i} ({obj['type']}) has no valid id")
        if obj.get("spec_version", "2.1") != "2.1":
            raise _fail(f"{oid} is STIX {obj.get('spec_version')}; only 2.1 is accepted")
        try:
            # Marking definitions are judged by _Markings (stix2 refuses the TLP
            # definitions other tools write under their own ids).
            if obj["type"] != "marking-definition":
                stix2.parse(obj, allow_custom=True, version="2.1")
        except (STIXError, ValueError, TypeError, KeyError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise _fail(f"{oid} is not valid STIX 2.1: {reason}") from None
        # Two versions of one object: the newest (modified) wins, as in STIX.
        if oid in by_id and by_id[oid] != obj and \
                str(obj.get("modified", "")) <= str(by_id[oid].get("modified", "")):
            continue
        by_id[oid] = obj
    return by_id


class _Markings:
    def __init__(self, by_id: dict[str, dict[str, Any]]) -> None:
        self.by_id = by_id

    def tlp_of(self, ref: str, where: str) -> Tlp:
        if ref in KNOWN_MARKINGS:
            return KNOWN_MARKINGS[ref]
        obj = self.by_id.get(ref)
        if obj is not None:
            tlp = _tlp_in_definition(obj)
            if tlp is not None:
                return tlp
            name = obj.get("name") or obj.get("definition_type") or "unnamed"
            raise _fail(f"{where} is marked {ref} ({name}), a marking fcnode does not know; "
                        "only TLP markings are understood (nothing was imported)")
        raise _fail(f"{where} is marked {ref}, which is neither a TLP marking nor defined in "
                    "the bundle (nothing was imported)")

    def tlp(self, obj: dict[str, Any]) -> Tlp | None:
        """The strictest TLP on an object, None without any marking."""
        if obj.get("granular_markings"):
            raise _fail(f"{obj['id']} has granular markings; fcnode marks whole records "
                        "(nothing was imported)")
        refs = obj.get("object_marking_refs") or []
        found = [self.tlp_of(r, obj["id"]) for r in refs]
        return max(found) if found else None


def _tlp_in_definition(obj: dict[str, Any]) -> Tlp | None:
    """A marking definition that says it is TLP: TLP 2.0 extension, or
    definition_type tlp (any case; OpenCTI writes {"TLP": "TLP:AMBER+STRICT"})."""
    ext = (obj.get("extensions") or {}).get(TLP2_EXTENSION) or {}
    words = [ext.get("tlp_2_0")]
    if str(obj.get("definition_type", "")).lower() == "tlp":
        definition = obj.get("definition") or {}
        words += [v for k, v in definition.items() if str(k).lower() == "tlp"]
    for w in words:
        if isinstance(w, str):
            tlp = TLP_WORDS.get(w.strip().lower().removeprefix("tlp:"))
            if tlp is not None:
                return tlp
    return None


def _label(text: str) -> str:
    label = _LABEL_BAD.sub("-", text.strip().lower()).strip("-_:./")
    return label[:64]


def _refs(obj: dict[str, Any]) -> list[str]:
    t = obj["type"]
    if t in CONTAINERS or t == "observed-data":
        return list(obj.get("object_refs") or [])
    if t == "sighting":
        # where_sighted_refs name who saw it, not what it is about: not entities.
        return [obj.get("sighting_of_ref", ""), *(obj.get("observed_data_refs") or [])]
    return []


def _entity_of(obj: dict[str, Any]) -> tuple[str, str] | str:
    """(type, value) for an entity object, or why it is not one."""
    ext = (obj.get("extensions") or {}).get(EXTENSION_ID) or {}
    if isinstance(ext.get("entity_type"), str) and isinstance(ext.get("value"), str):
        return ext["entity_type"], ext["value"]
    t = obj["type"]
    if t == "email-addr":
        return "email", str(obj.get("value", ""))
    if t in SCO_ENTITY:
        return SCO_ENTITY[t], str(obj.get("value", ""))
    if t == "identity":
        cls = obj.get("identity_class", "")
        if cls == "individual":
            return "person", str(obj.get("name", ""))
        if cls == "organization":
            return "organization", str(obj.get("name", ""))
        return f"an identity of class {cls or 'unknown'} is not an fcnode entity"
    if t == "location":
        parts = [obj.get(k) for k in ("street_address", "city", "administrative_area",
                                      "postal_code")]
        if not obj.get("street_address"):
            return "a location without a street address is not an fcnode address"
        return "address", ", ".join(str(p) for p in parts if p)
    return f"{t} has no fcnode counterpart"


def _pattern_entities(pattern: str) -> tuple[list[tuple[str, str]], list[str]]:
    found, skipped = [], []
    for stix_type, raw in _PATTERN_TERM.findall(pattern or ""):
        value = raw.replace("\\'", "'").replace("\\\\", "\\")
        if stix_type == "email-addr":
            found.append(("email", value))
        elif stix_type in SCO_ENTITY:
            found.append((SCO_ENTITY[stix_type], value))
        else:
            skipped.append(f"pattern term {stix_type}:value is not an fcnode entity type")
    return found, skipped


def _kind(obj: dict[str, Any], ext: dict[str, Any]) -> str:
    kind = str(ext.get("kind") or "").upper()
    if kind in CONTENT_KINDS:
        return kind
    for t in obj.get("report_types") or []:
        if str(t).upper() in CONTENT_KINDS:
            return str(t).upper()
    return "BULLETIN"  # the one kind that needs no 28 CFR justification


def _title(obj: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    name = obj.get("name")
    if not name and obj["type"] == "sighting":
        target = by_id.get(obj.get("sighting_of_ref", ""), {})
        name = f"Sighting of {target.get('name') or obj.get('sighting_of_ref')}"
    if not name and obj["type"] == "observed-data":
        name = f"Observed data {obj.get('first_observed', '')}".strip()
    if not name and obj["type"] == "indicator":
        name = f"Indicator {obj.get('pattern', '')}"
    return str(name or obj["id"])


def plan(data: Any, default_tlp: Tlp = Tlp.AMBER,
         audience: tuple[str, ...] = ()) -> Plan:
    """Which objects become which record drafts, and what is skipped and why.

    ``audience`` is for records without an fcnode policy (bundles from other
    tools); a record exported by fcnode keeps the audience it was published with."""
    by_id = check_bundle(data)
    markings = _Markings(by_id)
    for obj in by_id.values():  # a refused marking refuses the import, wherever it is
        markings.tlp(obj)
    folded_into: dict[str, str] = {}
    for obj in by_id.values():
        if obj["type"] in CONTAINERS:
            for ref in _refs(obj):
                folded_into.setdefault(ref, obj["id"])
    for obj in by_id.values():
        if obj["type"] == "sighting" and obj["id"] not in folded_into:
            for ref in _refs(obj):
                folded_into.setdefault(ref, obj["id"])

    records: list[Converted] = []
    skipped: list[Skipped] = []
    used: set[str] = set()
    for obj in by_id.values():
        oid = obj["id"]
        if obj["type"] not in RECORD_TYPES or (oid in folded_into and
                                               by_id.get(folded_into[oid], {}).get("type")
                                               in RECORD_TYPES):
            continue
        conv = _convert(obj, by_id, markings, default_tlp, audience, skipped)
        used.update(conv.folded)
        used.add(oid)
        records.append(conv)
    if len(records) > MAX_IMPORT_RECORDS:
        raise _fail(f"{len(records)} records; at most {MAX_IMPORT_RECORDS} in one import "
                    "(split the bundle)")
    authors = {o.get("created_by_ref") for o in by_id.values()}
    for obj in by_id.values():
        oid, t = obj["id"], obj["type"]
        if oid in used or t in _SILENT or oid in folded_into:
            continue
        if t == "identity" and oid in authors:
            continue  # an author, not content
        if t == "relationship":
            skipped.append(Skipped(oid, "relationships have no fcnode counterpart"))
        else:
            skipped.append(Skipped(oid, f"{t} is not referenced by a report, grouping, "
                                        "incident, observed-data, sighting or indicator"))
    return Plan(tuple(records), tuple(skipped))


def _convert(obj: dict[str, Any], by_id: dict[str, dict[str, Any]], markings: _Markings,
             default_tlp: Tlp, audience: tuple[str, ...],
             skipped: list[Skipped]) -> Converted:
    oid = obj["id"]
    ext = (obj.get("extensions") or {}).get(EXTENSION_ID) or {}
    notes: list[str] = []
    ents: list[tuple[str, str]] = []
    patterns: list[str] = []
    tlps = [markings.tlp(obj)]
    folded: list[str] = []
    seen: set[str] = set()  # folded, as a set: a container may refer to 20,000 objects

    def visit(o: dict[str, Any], depth: int) -> None:
        if o["type"] == "indicator":
            found, bad = _pattern_entities(o.get("pattern", ""))
            ents.extend(found)
            skipped.extend(Skipped(o["id"], b) for b in bad)
            if o is not obj:
                patterns.append(f"{o.get('name') or 'indicator'}: {o.get('pattern', '')}")
        for ref in _refs(o):
            target = by_id.get(ref)
            if target is None:
                skipped.append(Skipped(ref, f"referred to by {o['id']} but not in the bundle"))
                continue
            if ref == oid or ref in seen or target["type"] in _SILENT:
                continue
            if target.get("id") == obj.get("created_by_ref") and target["type"] == "identity" \
                    and not (target.get("extensions") or {}).get(EXTENSION_ID):
                continue  # the author's identity (an fcnode record with no entities)
            folded.append(ref)
            seen.add(ref)
            tlps.append(markings.tlp(target))
            if target["type"] in RECORD_TYPES:
                if depth < 3:
                    visit(target, depth + 1)
                continue
            entity = _entity_of(target)
            if isinstance(entity, str):
                skipped.append(Skipped(ref, entity))
            else:
                ents.append(entity)

    visit(obj, 0)
    good: list[dict[str, str]] = []
    for etype, value in dict.fromkeys(ents):
        try:
            entities.match_keys(etype, value)
        except ValidationError as exc:
            skipped.append(Skipped(oid, f"entity dropped: {exc}"))
            continue
        good.append({"type": etype, "value": value})
    # An fcnode record's TLP is its own marking, as its author published it (an
    # observable it shares with a stricter record carries that record's marking too);
    # anything else takes the strictest of what is folded into it.
    strictest = max((t for t in (tlps[:1] if ext else tlps) if t is not None), default=None)
    tlp = strictest if strictest is not None else default_tlp
    title = _title(obj, by_id)
    if len(title) > MAX_TITLE:
        notes.append(f"title shortened to {MAX_TITLE} characters")
        title = title[: MAX_TITLE - 1] + "…"
    narrative = str(obj.get("description") or "")
    if obj["type"] == "indicator" and not ext:
        narrative = "\n".join(x for x in (narrative, f"STIX pattern: {obj.get('pattern')}") if x)
    if patterns:
        narrative = "\n".join([narrative, "Indicators:", *patterns]).strip()
    labels = [x for x in dict.fromkeys(_label(str(v)) for v in obj.get("labels") or []) if x]
    if len(labels) > MAX_LABELS:
        notes.append(f"{len(labels) - MAX_LABELS} labels beyond {MAX_LABELS} dropped")
        labels = labels[:MAX_LABELS]
    policy: dict[str, Any] = {"tlp": tlp.label}
    if ext:  # an fcnode record: its whole policy, as its author published it
        policy.update(audience=list(ext.get("audience") or []),
                      require=list(ext.get("required_attributes") or []),
                      discoverability=ext.get("discoverability") or "pointer",
                      relay=bool(ext.get("relay", True)))
    else:
        policy["audience"] = list(audience)
    draft: dict[str, Any] = {
        "kind": _kind(obj, ext), "title": title, "narrative": narrative, "labels": labels,
        "entities": good, "policy": policy,
        "part23": {"justification": str(ext.get("justification") or ""),
                   "source_reliability": str(ext.get("source_reliability") or "X"),
                   "content_validity": str(ext.get("content_validity") or "4")},
    }
    if ext.get("review_due"):
        draft["part23"]["review_due"] = ext["review_due"]
    if ext.get("expires"):
        draft["expires"] = ext["expires"]
    if ext.get("contact"):
        draft["contact"] = ext["contact"]
    if ext.get("behaviors"):
        draft["behaviors"] = list(ext["behaviors"])
    return Converted(oid, draft, tuple(folded), tuple(notes))
