"""node.query: search parameters and the FTS5 query built from user text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.query import MAX_LIMIT, MAX_TERMS, MAX_TEXT, SearchParams, discovered, make_params
from node.core.types import Decision, ValidationError


def test_defaults():
    p = make_params()
    assert p == SearchParams()
    assert p.limit == 50
    assert p.fts_match() == ""


def test_entity_pairs_become_first_match_keys():
    p = make_params(entity_pairs=["phone=(555) 123-4567", "person=Doe, John;1980-01-02"])
    assert p.entity_keys == ("phone:5551234567", "person:doe john|1980-01-02")


def test_kinds_labels_origins_normalized():
    p = make_params(text=" grey van ", kinds=["bolo", "Sar"], labels=["Vehicle"],
                    origins=["nysic"], since_ms=5, limit=MAX_LIMIT)
    assert p.text == "grey van"
    assert p.kinds == ("BOLO", "SAR")
    assert p.labels == ("vehicle",)
    assert p.origins == ("nysic",)
    assert (p.since_ms, p.limit) == (5, MAX_LIMIT)


@pytest.mark.parametrize("kwargs,needle", [
    ({"kinds": ["memo"]}, "unknown kind 'MEMO'"),
    ({"origins": ["Not A Center"]}, "invalid origin"),
    ({"limit": 0}, "limit must be between 1 and"),
    ({"limit": MAX_LIMIT + 1}, "limit must be between 1 and"),
    ({"text": "x" * (MAX_TEXT + 1)}, "longer than"),
    ({"text": "!!! ??"}, "no words"),
    ({"entity_pairs": ["phone=12"]}, "not a valid phone"),
    ({"entity_pairs": ["phone"]}, "TYPE=VALUE"),
    ({"entity_pairs": ["phone=5550100000"] * 65}, "more than 64 entities"),
])
def test_bad_params_rejected(kwargs, needle):
    with pytest.raises(ValidationError, match=needle):
        make_params(**kwargs)


def test_fts_match_quotes_every_word():
    p = make_params(text='Grey VAN" OR title:* NEAR(x) -port')
    assert p.fts_match() == '"grey" "van" "or" "title" "near" "x" "port"'


def test_fts_match_caps_terms():
    p = make_params(text=" ".join(f"w{i}" for i in range(MAX_TERMS + 10)))
    assert len(p.fts_match().split()) == MAX_TERMS


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_prop_fts_match_is_only_quoted_words(text):
    match = SearchParams(text=text).fts_match()
    tokens = match.split(" ") if match else []
    assert len(tokens) <= MAX_TERMS
    for t in tokens:
        assert re.fullmatch(r'"\w+"', t), t


@pytest.mark.parametrize("decision", list(Decision))
@pytest.mark.parametrize("entity", [False, True])
@pytest.mark.parametrize("content_match", [False, True])
def test_discovery_rule(decision, entity, content_match):
    """FULL needs every filter; a pointer or a notice needs an entity key and
    never depends on the content filters; no entity key: FULL only."""
    params = SearchParams(text="stash", entity_keys=("phone:5550107777",) if entity else ())
    got = discovered(decision, params, content_match)
    if decision is Decision.FULL:
        assert got is (Decision.FULL if content_match else Decision.DENY)
    elif decision is Decision.DENY or not entity:
        assert got is Decision.DENY
    else:
        assert got is decision
