"""Search parameters, shared by local search and federated query (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from node import entities
from node.record import CONTENT_KINDS
from node.types import ValidationError, check_center_id

MAX_LIMIT = 1000
MAX_TEXT = 512
MAX_TERMS = 32


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

    def fts_match(self) -> str:
        """User text as an FTS5 query: every word must occur (quoted: no syntax)."""
        words = re.findall(r"\w+", self.text.lower())[:MAX_TERMS]
        return " ".join(f'"{w}"' for w in words)


def make_params(
    text: str = "", entity_pairs: list[str] | None = None, kinds: list[str] | None = None,
    since_ms: int = 0, labels: list[str] | None = None, origins: list[str] | None = None,
    limit: int = 50, any_entity: bool = False,
) -> SearchParams:
    if len(text) > MAX_TEXT:
        raise ValidationError(f"search text is longer than {MAX_TEXT} characters")
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
                          any_entity)
    if text.strip() and not params.fts_match():
        raise ValidationError(f"search text {text!r} has no words to search for")
    return params
