"""Standing watches (pure): what a watch asks, and whether one record is a hit.

A watch is a saved search that fires when a matching record arrives (published
here, replicated in, or a new version that now matches). A hit is judged exactly
as a search result would be, with the owner's CURRENT attributes, through the one
discovery rule (node.core.query.discovered): a record the owner may read in full is a
hit when it matches every filter; a record the owner may not read yields a
POINTER (or, at a record's origin, a restricted-hit notice) only from an exact
entity-key match, whatever the text, labels or behaviour codes asked. So a watch
can never be an oracle for content its owner may not read.

Matching here is the in-memory twin of node/storage/log.py ``matches`` (which
works on the indexes): entity keys all present, kind and origin in their lists;
text words, labels and behaviour codes decide only ``content_match``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from node.core.query import SearchParams, discovered
from node.core.record import kind_name
from node.core.types import Decision, ValidationError
from node.wire import records_pb2

MAX_WATCH_TEXT = 512


@dataclass(frozen=True)
class Watch:
    id: str
    owner: str           # local user name (for standing queries: the remote center's user)
    params: SearchParams
    network: bool
    created_ms: int
    expires_ms: int

    def to_json(self) -> dict[str, Any]:
        p = self.params
        return {"text": p.text, "entity_keys": list(p.entity_keys), "kinds": list(p.kinds),
                "labels": list(p.labels), "behaviors": list(p.behaviors)}

    @staticmethod
    def params_from_json(data: dict[str, Any]) -> SearchParams:
        return SearchParams(text=data.get("text", ""),
                            entity_keys=tuple(data.get("entity_keys", ())),
                            kinds=tuple(data.get("kinds", ())),
                            labels=tuple(data.get("labels", ())),
                            behaviors=tuple(data.get("behaviors", ())))


def check_watch(params: SearchParams, network: bool) -> None:
    """A watch must ask something; a network watch asks by entity only (what other
    centers judge against their records: no words travel to be matched there)."""
    if params.since_ms or params.origins:
        raise ValidationError("a watch takes no --since or --origin: it watches what arrives")
    if network:
        if not params.entity_keys:
            raise ValidationError("a --network watch needs at least one --entity "
                                  "(other centers are asked by entity only)")
        if params.text or params.labels:
            raise ValidationError("a --network watch matches entities (with --kind and "
                                  "--behavior), not text or labels")
        return
    if not (params.text or params.entity_keys or params.kinds or params.labels
            or params.behaviors):
        raise ValidationError("a watch needs text, --entity, --kind, --label or --behavior")


_WORD = re.compile(r"\w+")


def words_of(body: records_pb2.RecordBody) -> set[str]:
    """The words FTS5 indexes for a record (title, narrative, labels, entities)."""
    parts = [body.title, body.narrative, " ".join(body.labels),
             " ".join(e.value for e in body.entities)]
    return set(_WORD.findall(" ".join(parts).lower()))


def record_match(params: SearchParams, body: records_pb2.RecordBody,
                 keys: frozenset[str] | None = None) -> tuple[bool, bool]:
    """(found, content_match): ``found`` when the record matches the entity keys,
    kinds and origins (what may discover a pointer); ``content_match`` when it also
    matches the text, labels and behaviour codes (what a FULL hit needs)."""
    if keys is None:
        keys = frozenset(k for e in body.entities for k in e.keys)
    if not all(k in keys for k in params.entity_keys):
        return False, False
    if params.kinds and kind_name(body) not in params.kinds:
        return False, False
    if params.origins and body.origin not in params.origins:
        return False, False
    content = (all(label in body.labels for label in params.labels)
               and all(code in body.behaviors for code in params.behaviors))
    if content and params.text:
        words = words_of(body)
        content = all(w in words for w in _WORD.findall(params.text.lower()))
    return True, content


def judge(decision: Decision, params: SearchParams, body: records_pb2.RecordBody,
          keys: frozenset[str] | None = None) -> Decision:
    """What one record yields to one watch, for a policy ``decision`` made with the
    owner's current attributes: FULL, POINTER, NOTIFY_ONLY (at the origin: a
    restricted-hit notice) or DENY (nothing)."""
    found, content = record_match(params, body, keys)
    if not found:
        return Decision.DENY
    return discovered(decision, params, content)


class WatchIndex:
    """Watches by entity key, so a record is judged against the watches that can
    match it, not all of them (1,000 standing queries cost a lookup per key)."""

    def __init__(self, watches: Iterable[Watch]) -> None:
        self.by_key: dict[str, list[Watch]] = {}
        self.unkeyed: list[Watch] = []
        for w in watches:
            if w.params.entity_keys:
                # Every key must match: indexing by the first one is enough.
                self.by_key.setdefault(w.params.entity_keys[0], []).append(w)
            else:
                self.unkeyed.append(w)

    def __bool__(self) -> bool:
        return bool(self.by_key or self.unkeyed)

    def candidates(self, keys: frozenset[str]) -> list[Watch]:
        out = list(self.unkeyed)
        for k in keys:
            out.extend(self.by_key.get(k, ()))
        return out
