"""Record drafts: validation of what an analyst submits, and building the body.

A draft comes from CLI flags or a JSON file (schema in the README, example in
configs/record-example.json). Validation is pure and complete before anything is
signed or stored: an invalid draft is refused with one line naming the problem.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node.core import entities
from node.core.timeutil import YEAR_MS, iso, parse_instant_ms
from node.core.types import MEMBERS, Discoverability, Policy, Tlp, ValidationError, check_center_id
from node.wire import records_pb2

CONTENT_KINDS = ("SAR", "BOLO", "BULLETIN", "TIP", "DECONFLICTION")
# 28 CFR 23.20(c): criminal intelligence needs a reasonable-suspicion justification.
JUSTIFIED_KINDS = ("SAR", "TIP", "DECONFLICTION")
RETENTION_MS = 5 * YEAR_MS  # 28 CFR 23.20(h): at most five years without validation
MAX_TITLE = 200
MAX_NARRATIVE = 64 * 1024
MAX_LABELS = 32
MAX_ENTITIES = 256
MAX_ATTRIBUTES = 32
MAX_AUDIENCE = 128
MAX_RECORD_BYTES = 256 * 1024
RELIABILITY = ("A", "B", "C", "X")
VALIDITY = ("1", "2", "3", "4")
# One attribute vocabulary for the whole network (README, "Attributes").
ATTRIBUTES = ("sworn_le", "28cfr_certified", "analyst", "supervisor", "privacy_officer",
              "fusion_liaison")
ATTRIBUTE_PREFIXES = ("ntk:", "user:")
# The sixteen behaviour categories of the ISE-SAR Functional Standard (v1.5.5):
# defined criminal activity, then potential criminal or non-criminal activity
# that needs more information. A code is content: never in a stub or POINTER.
BEHAVIORS = ("AVIATION", "CYBER", "INTRSN", "MISREP", "SABOT", "THEFT", "THREAT",
             "ELICIT", "EXPERT", "MATRLS", "PHOTO", "RECRUT", "SECTOR", "SURVL", "TESTSEC",
             "WPNS")
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_:./-]{0,63}$")
_ATTR_RE = re.compile(r"^[a-z0-9][a-z0-9_:./-]{0,95}$")
_DRAFT_KEYS = {"kind", "title", "narrative", "labels", "entities", "policy", "part23",
               "expires", "contact", "behaviors"}
_POLICY_KEYS = {"tlp", "audience", "require", "discoverability", "relay"}
_PART23_KEYS = {"justification", "source_reliability", "content_validity", "review_due"}


def check_behaviors(codes: Iterable[str]) -> tuple[str, ...]:
    """ISE-SAR behaviour codes, upper-cased and de-duplicated; an unknown one is
    refused with the list."""
    out = tuple(dict.fromkeys(c.strip().upper() for c in codes))
    for code in out:
        if code not in BEHAVIORS:
            raise ValidationError(f"unknown behavior {code!r}: use one of {', '.join(BEHAVIORS)} "
                                  "(ISE-SAR Functional Standard)")
    return out


def check_attribute(attr: str) -> str:
    attr = attr.strip().lower()
    if not _ATTR_RE.match(attr) or not (
        attr in ATTRIBUTES or (attr.startswith(ATTRIBUTE_PREFIXES) and len(attr) > 5)
    ):
        raise ValidationError(
            f"unknown attribute {attr!r}: use {', '.join(ATTRIBUTES)}, ntk:TOPIC "
            "or user:CENTER/NAME"
        )
    return attr


@dataclass(frozen=True)
class Draft:
    kind: str
    title: str
    narrative: str
    labels: tuple[str, ...]
    entities: tuple[tuple[str, str, tuple[str, ...]], ...]  # type, value, match keys
    tlp: Tlp
    audience: tuple[str, ...]  # center ids, groups or "members", not yet expanded
    required_attributes: frozenset[str]
    discoverability: Discoverability
    relay: bool
    justification: str
    source_reliability: str
    content_validity: str
    expires_ms: int | None
    review_due_ms: int | None
    contact: str
    behaviors: tuple[str, ...] = ()


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{what} must be a list of strings")
    return value


def _text(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string")
    return value.strip()


def _unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ValidationError(f"unknown field {extra[0]!r} in {where}")


def parse_draft(data: Any) -> Draft:
    """Validate a draft document (the JSON file schema) completely."""
    if not isinstance(data, dict):
        raise ValidationError("a record must be a JSON object")
    _unknown(data, _DRAFT_KEYS, "record")
    kind = _text(data, "kind", "kind").upper()
    if not kind:
        raise ValidationError("missing required field 'kind'")
    if kind not in CONTENT_KINDS:
        raise ValidationError(f"unknown kind {kind!r}: use one of {', '.join(CONTENT_KINDS)}")
    title = _text(data, "title", "title")
    if not title:
        raise ValidationError("missing required field 'title'")
    if len(title) > MAX_TITLE:
        raise ValidationError(f"title is longer than {MAX_TITLE} characters")
    narrative = _text(data, "narrative", "narrative")
    if len(narrative.encode()) > MAX_NARRATIVE:
        raise ValidationError(f"narrative is larger than {MAX_NARRATIVE} bytes")
    labels = tuple(dict.fromkeys(v.strip().lower() for v in _strings(data.get("labels"), "labels")))
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"more than {MAX_LABELS} labels")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise ValidationError(f"invalid label {label!r}: letters, digits and _ : . / -")
    ents: list[tuple[str, str, tuple[str, ...]]] = []
    raw_entities = data.get("entities") or []
    if not isinstance(raw_entities, list):
        raise ValidationError("entities must be a list")
    for item in raw_entities:
        if isinstance(item, str):
            etype, value = entities.parse_pair(item)
        elif isinstance(item, dict) and set(item) <= {"type", "value"}:
            etype, value = str(item.get("type", "")).lower(), str(item.get("value", ""))
        else:
            raise ValidationError("each entity must be {\"type\": ..., \"value\": ...}")
        keys = tuple(entities.match_keys(etype, value))  # raises on a bad value
        ents.append((etype, value.strip(), keys))
    if len(ents) > MAX_ENTITIES:
        raise ValidationError(f"more than {MAX_ENTITIES} entities")
    behaviors = check_behaviors(_strings(data.get("behaviors"), "behaviors"))

    pol = data.get("policy") or {}
    if not isinstance(pol, dict):
        raise ValidationError("policy must be an object")
    _unknown(pol, _POLICY_KEYS, "policy")
    tlp = Tlp.parse(str(pol.get("tlp") or "AMBER"))
    audience = tuple(dict.fromkeys(a.strip().lower() for a in _strings(pol.get("audience"),
                                                                        "audience")))
    if len(audience) > MAX_AUDIENCE:
        raise ValidationError(f"more than {MAX_AUDIENCE} audience entries")
    required = frozenset(check_attribute(a) for a in _strings(pol.get("require"), "require"))
    if len(required) > MAX_ATTRIBUTES:
        raise ValidationError(f"more than {MAX_ATTRIBUTES} required attributes")
    disc = Discoverability.parse(str(pol.get("discoverability") or "pointer"))
    relay = pol.get("relay", True)
    if not isinstance(relay, bool):
        raise ValidationError("policy.relay must be true or false")
    if tlp in (Tlp.AMBER_STRICT, Tlp.RED):
        relay = False
        if disc is Discoverability.OPEN:
            raise ValidationError(f"TLP:{tlp.label} records cannot be discoverability open")
    if tlp is Tlp.RED:
        if MEMBERS in audience:
            raise ValidationError("TLP:RED records need named centers, not 'members'")
        if not any(a.startswith("user:") for a in required):
            raise ValidationError("TLP:RED records must name their readers: --require "
                                  "user:CENTER/NAME")

    p23 = data.get("part23") or {}
    if not isinstance(p23, dict):
        raise ValidationError("part23 must be an object")
    _unknown(p23, _PART23_KEYS, "part23")
    justification = _text(p23, "justification", "part23.justification")
    if kind in JUSTIFIED_KINDS and not justification:
        raise ValidationError(
            f"missing required field 'justification' (28 CFR 23.20: a {kind} needs the "
            "reasonable suspicion / criminal predicate)"
        )
    reliability = _text(p23, "source_reliability", "source_reliability").upper() or "X"
    if reliability not in RELIABILITY:
        raise ValidationError("source_reliability must be A, B, C or X")
    validity = _text(p23, "content_validity", "content_validity") or "4"
    if validity not in VALIDITY:
        raise ValidationError("content_validity must be 1, 2, 3 or 4")
    expires = _instant(data.get("expires"), "expires")
    review_due = _instant(p23.get("review_due"), "part23.review_due")
    return Draft(
        kind=kind, title=title, narrative=narrative, labels=labels, entities=tuple(ents),
        tlp=tlp, audience=audience, required_attributes=required, discoverability=disc,
        relay=relay, justification=justification, source_reliability=reliability,
        content_validity=validity, expires_ms=expires, review_due_ms=review_due,
        contact=_text(data, "contact", "contact"), behaviors=behaviors,
    )


def _instant(value: Any, what: str) -> int | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a date string")
    return parse_instant_ms(value)


def expand_audience(
    audience: Iterable[str], groups: Mapping[str, Iterable[str]], known: Iterable[str]
) -> frozenset[str]:
    """Groups -> center ids, at publish, so every node enforces the same set."""
    known_set = set(known)
    out: set[str] = set()
    for entry in audience:
        if entry == MEMBERS:
            out.add(MEMBERS)
        elif entry in groups:
            out.update(groups[entry])
        elif ":" in entry:
            raise ValidationError(f"unknown group {entry!r} in audience "
                                  f"(known: {', '.join(sorted(groups)) or 'none'})")
        else:
            check_center_id(entry, "audience center")
            if entry not in known_set:
                raise ValidationError(f"unknown center {entry!r} in audience: not this center "
                                      "or a pinned peer (see fcnode peers list)")
            out.add(entry)
    if MEMBERS in out:
        return frozenset({MEMBERS})
    return frozenset(out)


# Own-log positions whose new records share an id prefix (new_record_id).
ID_CLUSTER_ENTRIES = 1024


def id_cluster(secret: bytes, seq: int) -> bytes:
    """The 4-byte id prefix of records created at own-log position ``seq``: the same
    for ID_CLUSTER_ENTRIES consecutive positions, keyed by this node's secret so
    that nobody else can tell which positions (or times) a prefix stands for."""
    window = (seq // ID_CLUSTER_ENTRIES).to_bytes(8, "big")
    return hmac.new(secret, b"fcnode/record-id/v1\0" + window, hashlib.sha256).digest()[:4]


def new_record_id(cluster: bytes = b"") -> str:
    """A new record id: 32 lowercase hex digits, the 4-byte ``cluster`` (random if
    none) and 96 random bits.

    Records created one after another share their cluster (id_cluster), so each
    node's indexes on (origin, record_id) take them at one small region instead of
    at random leaves: with wholly random ids every insert dirtied a leaf page of its
    own, and storing a record cost twice as much at 200,000 records as at 20,000
    (bench/bench_store.py). Not time-ordered on purpose: a POINTER leaves out when a
    record was made, and an id carrying its creation time (UUIDv7) told every
    center shown the pointer (review, session 17). What a cluster tells: that two
    records of one origin were made within ~1,024 entries of its log of each other,
    nothing of when. Unique without coordination (96 random bits); ids are never
    parsed, only compared."""
    prefix = cluster[:4] if len(cluster) >= 4 else secrets.token_bytes(4)
    return (prefix + secrets.token_bytes(12)).hex()


def build_body(
    draft: Draft, *, origin: str, seq: int, prev: bytes, record_id: str, version: int,
    created_ms: int, audience: frozenset[str], author: str, contact: str,
) -> records_pb2.RecordBody:
    expires = draft.expires_ms or created_ms + RETENTION_MS
    if expires <= created_ms:
        raise ValidationError("expires must be in the future")
    if expires > created_ms + RETENTION_MS:
        raise ValidationError("expires is more than five years away (28 CFR 23.20(h)); "
                              "validate the record to extend it later")
    review_due = draft.review_due_ms or expires
    body = records_pb2.RecordBody(
        origin=origin, seq=seq, prev=prev, record_id=record_id, version=version,
        created_ms=created_ms, expires_ms=expires, kind=records_pb2.Kind.Value(draft.kind),
        title=draft.title, narrative=draft.narrative, labels=list(draft.labels),
        author=author, contact=draft.contact or contact, behaviors=list(draft.behaviors),
        part23=records_pb2.Part23(
            justification=draft.justification, source_reliability=draft.source_reliability,
            content_validity=draft.content_validity, review_due_ms=min(review_due, expires),
        ),
        policy=records_pb2.AccessPolicy(
            tlp=int(draft.tlp), audience=sorted(audience),
            required_attributes=sorted(draft.required_attributes),
            discoverability=int(draft.discoverability), relay=draft.relay,
        ),
    )
    for etype, value, keys in draft.entities:
        body.entities.add(type=etype, value=value, keys=keys)
    if body.ByteSize() > MAX_RECORD_BYTES:
        raise ValidationError(f"record is larger than {MAX_RECORD_BYTES // 1024} KiB")
    return body


def body_policy(body: records_pb2.RecordBody) -> Policy:
    p = body.policy
    try:
        tlp = Tlp(p.tlp)
        disc = Discoverability(p.discoverability)
    except ValueError:
        # Unknown enum values from a newer peer: the strictest reading, never the loosest.
        tlp, disc = Tlp.RED, Discoverability.RESTRICTED
    return Policy(tlp=tlp, audience=frozenset(p.audience),
                  required_attributes=frozenset(p.required_attributes),
                  discoverability=disc, relay=p.relay)


_KIND_NAMES = {v: k for k, v in records_pb2.Kind.items()}


def kind_name(body: records_pb2.RecordBody) -> str:
    return _KIND_NAMES.get(body.kind, "?")


def body_to_dict(body: records_pb2.RecordBody) -> dict[str, Any]:
    """The full, readable form of a record (only for a FULL decision)."""
    policy = body_policy(body)
    return {
        "record_id": body.record_id, "origin": body.origin, "seq": body.seq,
        "version": body.version, "kind": kind_name(body), "title": body.title,
        "narrative": body.narrative, "labels": list(body.labels),
        "behaviors": list(body.behaviors),
        "entities": [{"type": e.type, "value": e.value} for e in body.entities],
        "created": iso(body.created_ms), "expires": iso(body.expires_ms),
        "tlp": policy.tlp.label, "audience": sorted(policy.audience),
        "require": sorted(policy.required_attributes),
        "discoverability": policy.discoverability.name.lower(), "relay": policy.relay,
        "justification": body.part23.justification,
        "source_reliability": body.part23.source_reliability,
        "content_validity": body.part23.content_validity,
        "review_due": iso(body.part23.review_due_ms), "author": body.author,
        # Who made this version; a first version (no editor) was made by its author.
        "editor": body.editor or body.author, "contact": body.contact,
    }
