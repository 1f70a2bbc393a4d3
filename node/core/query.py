"""Search parameters and the discovery rule, shared by local search and
federated query (pure).

Discovery reveals no content. A record the asker may read in full (FULL) is a
result when it matches every filter. A record the asker may not read (POINTER,
or NOTIFY_ONLY: a restricted record whose origin is told of the hit) is
discovered only through an exact entity-key match: for it, only the entity
keys, kinds and origins of the query decide, because kind and origin are shown
in a pointer anyway. Text, labels, behaviour codes and ``since`` are never evaluated against
content the asker may not read: they can neither produce nor exclude a
pointer, or a pointer would be an oracle for the words, case numbers and
timestamps of that content. A query without an entity key returns FULL records
only and never notifies an origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.core import entities
from node.core.record import CONTENT_KINDS, check_behaviors
from node.core.types import Decision, ValidationError, check_center_id

MAX_LIMIT = 1000
MAX_TEXT = 512
MAX_TERMS = 32
MAX_ENTITY_KEYS = 64


@dataclass(frozen=True)
class SearchParams:
    text: str = ""
    entity_keys: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    since_ms: int = 0
    labels: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    limit: int = 50
    any_entity: bool = False  # deconfliction: a record on any of the entities matches
    # ISE-SAR behaviour codes: content, like labels (never find or hide a pointer).
    behaviors: tuple[str, ...] = ()

    def fts_match(self) -> str:
        """User text as an FTS5 query: every word must occur (quoted: no syntax)."""
        words = re.findall(r"\w+", self.text.lower())[:MAX_TERMS]
        return " ".join(f'"{w}"' for w in words)


def discovered(decision: Decision, params: SearchParams, content_match: bool) -> Decision:
    """What one record yields to a query under the discovery rule (module doc).

    ``decision``: the policy decision for the asker; ``content_match``: whether
    the record also matched the query's text, labels and since (it matched its
    entity keys, kinds and origins, or it would not be here). DENY: nothing."""
    if decision is Decision.FULL:
        return Decision.FULL if content_match else Decision.DENY
    if decision < Decision.NOTIFY_ONLY or not params.entity_keys:
        return Decision.DENY
    return decision


def make_params(
    text: str = "", entity_pairs: list[str] | None = None, kinds: list[str] | None = None,
    since_ms: int = 0, labels: list[str] | None = None, origins: list[str] | None = None,
    limit: int = 50, any_entity: bool = False, behaviors: list[str] | None = None,
) -> SearchParams:
    if len(text) > MAX_TEXT:
        raise ValidationError(f"search text is longer than {MAX_TEXT} characters")
    if len(entity_pairs or []) > MAX_ENTITY_KEYS:
        raise ValidationError(f"more than {MAX_ENTITY_KEYS} entities in one search")
    keys: list[str] = []
    for pair in entity_pairs or []:
        etype, value = entities.parse_pair(pair)
        keys.append(entities.match_keys(etype, value)[0])
    ks = [k.upper() for k in kinds or []]
    for k in ks:
        if k not in CONTENT_KINDS:
            raise ValidationError(f"unknown kind {k!r}: use one of {', '.join(CONTENT_KINDS)}")
    for o in origins or []:
        check_center_id(o, "origin")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}")
    params = SearchParams(text.strip(), tuple(keys), tuple(ks), since_ms,
                          tuple(x.lower() for x in labels or []), tuple(origins or []), limit,
                          any_entity, check_behaviors(behaviors or []))
    if text.strip() and not params.fts_match():
        raise ValidationError(f"search text {text!r} has no words to search for")
    return params
