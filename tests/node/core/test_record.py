"""node.record: draft validation, audience expansion, body building."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.record import (
    MAX_NARRATIVE,
    MAX_RECORD_BYTES,
    MAX_TITLE,
    RETENTION_MS,
    body_policy,
    body_to_dict,
    build_body,
    check_attribute,
    expand_audience,
    parse_draft,
)
from node.core.timeutil import DAY_MS, YEAR_MS
from node.core.types import MEMBERS, Discoverability, Policy, Tlp, ValidationError
from node.wire import records_pb2

CREATED = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BASE = {
    "kind": "SAR",
    "title": "Bulk purchase of precursor chemicals",
    "narrative": "Subject bought 40 kg in cash.",
    "labels": ["Narcotics", "precursors"],
    "entities": ["phone=(555) 123-4567", {"type": "plate", "value": "CA:7abc-123"}],
    "policy": {"tlp": "amber", "audience": ["nysic", "region:west"], "require": ["sworn_le"],
               "discoverability": "pointer"},
    "part23": {"justification": "Purchase pattern consistent with manufacture",
               "source_reliability": "b", "content_validity": "2"},
}
GROUPS = {"region:west": ("ffc", "wsic"), "hidta": ("nysic",), "region:empty": ()}
KNOWN = ("ncric", "nysic", "ffc", "wsic", "mcac")


def doc(**changes):
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = d
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[k]
        if value is _DROP:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    return d


_DROP = object()


def body_for(draft, **kw):
    args = dict(origin="ncric", seq=1, prev=b"", record_id="r1", version=1,
                created_ms=CREATED, audience=frozenset({"nysic"}), author="alice",
                contact="NCRIC watch desk")
    args.update(kw)
    return build_body(draft, **args)


# --------------------------------------------------------------------- parse_draft

def test_valid_draft_parses_and_normalizes():
    d = parse_draft(doc())
    assert d.kind == "SAR"
    assert d.labels == ("narcotics", "precursors")
    assert d.entities == (("phone", "(555) 123-4567", ("phone:5551234567",)),
                          ("plate", "CA:7abc-123", ("plate:7ABC123",)))
    assert d.tlp is Tlp.AMBER
    assert d.audience == ("nysic", "region:west")
    assert d.required_attributes == {"sworn_le"}
    assert d.discoverability is Discoverability.POINTER
    assert d.relay is True
    assert d.source_reliability == "B"
    assert d.expires_ms is None


@pytest.mark.parametrize("changes,needle", [
    ({"kind": "MEMO"}, "unknown kind 'MEMO'"),
    ({"kind": _DROP}, "missing required field 'kind'"),
    ({"title": _DROP}, "missing required field 'title'"),
    ({"title": "   "}, "missing required field 'title'"),
    ({"title": "x" * (MAX_TITLE + 1)}, "title is longer"),
    ({"part23__justification": _DROP}, "missing required field 'justification'"),
    ({"part23__justification": ""}, "justification"),
    ({"policy__tlp": "purple"}, "invalid TLP 'purple'"),
    ({"colour": "red"}, "unknown field 'colour' in record"),
    ({"policy__who": ["x"]}, "unknown field 'who' in policy"),
    ({"part23__score": 3}, "unknown field 'score' in part23"),
    ({"narrative": "é" * (MAX_NARRATIVE // 2 + 1)}, "narrative is larger"),
    ({"policy__tlp": "RED", "policy__require": ["sworn_le"]}, "must name their readers"),
    ({"policy__tlp": "RED", "policy__audience": [MEMBERS],
      "policy__require": ["user:nysic/alice"]}, "not 'members'"),
    ({"policy__require": ["top_secret"]}, "unknown attribute 'top_secret'"),
    ({"policy__tlp": "AMBER+STRICT", "policy__discoverability": "open"},
     "cannot be discoverability open"),
    ({"policy__discoverability": "secret"}, "invalid discoverability"),
    ({"policy__relay": "yes"}, "relay must be true or false"),
    ({"labels": ["Bad Label!"]}, "invalid label"),
    ({"entities": ["phone=12"]}, "not a valid phone"),
    ({"entities": ["555-1234"]}, "TYPE=VALUE"),
    ({"entities": [{"kind": "phone"}]}, "each entity"),
    ({"part23__source_reliability": "Z"}, "source_reliability"),
    ({"part23__content_validity": "9"}, "content_validity"),
    ({"expires": "next tuesday"}, "invalid date"),
    ({"title": 7}, "title must be a string"),
    ({"policy": "open"}, "policy must be an object"),
    ({"policy__audience": [1, 2]}, "audience must be a list of strings"),
])
def test_bad_drafts_rejected_naming_problem(changes, needle):
    with pytest.raises(ValidationError, match=needle):
        parse_draft(doc(**changes))


def test_non_object_rejected():
    with pytest.raises(ValidationError, match="JSON object"):
        parse_draft(["SAR"])


def test_bulletin_needs_no_justification():
    d = parse_draft(doc(kind="bulletin", part23__justification=_DROP))
    assert d.kind == "BULLETIN"
    assert d.justification == ""


def test_strict_tlp_forces_relay_false():
    d = parse_draft(doc(policy__tlp="TLP:AMBER+STRICT", policy__relay=True))
    assert d.tlp is Tlp.AMBER_STRICT
    assert d.relay is False
    r = parse_draft(doc(policy__tlp="red", policy__require=["user:nysic/alice"]))
    assert r.tlp is Tlp.RED
    assert r.relay is False


def test_attributes_lowercased_and_checked():
    assert check_attribute(" SWORN_LE ") == "sworn_le"
    assert check_attribute("ntk:narcotics") == "ntk:narcotics"
    assert check_attribute("user:nysic/alice") == "user:nysic/alice"
    for bad in ("user:", "ntk:", "secret", "sworn le"):
        with pytest.raises(ValidationError, match="unknown attribute"):
            check_attribute(bad)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
    max_leaves=6)
field_names = st.sampled_from(["kind", "title", "narrative", "labels", "entities", "policy",
                               "part23", "expires", "contact"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(field_names, json_value, max_size=6), st.dictionaries(
    st.sampled_from(["tlp", "audience", "require", "discoverability", "relay"]), json_value))
def test_prop_parse_draft_raises_only_validation_error(fields, policy_fields):
    data = doc()
    data.update(fields)
    if isinstance(data.get("policy"), dict):
        data["policy"] = {**data["policy"], **policy_fields}
    try:
        parse_draft(data)
    except ValidationError as exc:
        assert str(exc)


# ----------------------------------------------------------------- expand_audience

def test_expand_audience_groups_and_centers():
    got = expand_audience(["nysic", "region:west", "mcac"], GROUPS, KNOWN)
    assert got == {"nysic", "ffc", "wsic", "mcac"}


def test_expand_audience_members_absorbs_everything():
    assert expand_audience(["nysic", MEMBERS], GROUPS, KNOWN) == {MEMBERS}


def test_expand_audience_rejects_unknown_group():
    with pytest.raises(ValidationError, match="unknown group 'region:north'"):
        expand_audience(["region:north"], GROUPS, KNOWN)


def test_expand_audience_rejects_unknown_center():
    with pytest.raises(ValidationError, match="unknown center 'nowhere'"):
        expand_audience(["nowhere"], GROUPS, KNOWN)


def test_expand_audience_rejects_malformed_center():
    with pytest.raises(ValidationError, match="invalid audience center"):
        expand_audience(["Bad Center"], GROUPS, KNOWN)


def test_expand_audience_empty_stays_empty():
    assert expand_audience([], GROUPS, KNOWN) == frozenset()
    assert expand_audience(["region:empty"], GROUPS, KNOWN) == frozenset()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*KNOWN, *GROUPS, MEMBERS]), max_size=6))
def test_prop_expand_audience_only_named_centers(entries):
    got = expand_audience(entries, GROUPS, KNOWN)
    if not entries or set(entries) <= {"region:empty"}:
        assert got == frozenset()
    if MEMBERS in entries:
        assert got == {MEMBERS}
    else:
        allowed = {e for e in entries if e in KNOWN}
        for e in entries:
            allowed.update(GROUPS.get(e, ()))
        assert got == allowed


# ---------------------------------------------------------------------- build_body

def test_build_body_defaults_expiry_to_five_years():
    body = body_for(parse_draft(doc()))
    assert body.expires_ms == CREATED + RETENTION_MS == CREATED + 5 * YEAR_MS
    assert body.part23.review_due_ms == body.expires_ms


def test_build_body_accepts_exactly_five_years_rejects_more():
    d = parse_draft(doc())
    assert body_for(replace(d, expires_ms=CREATED + RETENTION_MS)).expires_ms == (
        CREATED + RETENTION_MS)
    with pytest.raises(ValidationError, match="more than five years"):
        body_for(replace(d, expires_ms=CREATED + RETENTION_MS + 1))


def test_build_body_rejects_past_expiry():
    d = parse_draft(doc())
    with pytest.raises(ValidationError, match="in the future"):
        body_for(replace(d, expires_ms=CREATED - DAY_MS))


def test_build_body_review_due_capped_at_expiry():
    d = replace(parse_draft(doc()), expires_ms=CREATED + 30 * DAY_MS,
                review_due_ms=CREATED + 60 * DAY_MS)
    assert body_for(d).part23.review_due_ms == CREATED + 30 * DAY_MS


def test_build_body_carries_policy_entities_and_part23():
    d = parse_draft(doc(policy__require=["sworn_le", "ntk:narcotics"]))
    body = body_for(d, audience=frozenset({"wsic", "nysic", "ffc"}), seq=7, prev=b"p" * 32)
    assert body.kind == records_pb2.SAR
    assert (body.origin, body.seq, body.prev) == ("ncric", 7, b"p" * 32)
    assert list(body.policy.audience) == ["ffc", "nysic", "wsic"]
    assert body_policy(body) == Policy(Tlp.AMBER, frozenset({"ffc", "nysic", "wsic"}),
                                       frozenset({"sworn_le", "ntk:narcotics"}),
                                       Discoverability.POINTER, True)
    assert [list(e.keys) for e in body.entities] == [["phone:5551234567"], ["plate:7ABC123"]]
    assert body.part23.source_reliability == "B"
    assert body.contact == "NCRIC watch desk"
    view = body_to_dict(body)
    assert view["tlp"] == "AMBER"
    assert view["kind"] == "SAR"
    assert view["require"] == ["ntk:narcotics", "sworn_le"]


def test_build_body_rejects_oversized_record():
    d = replace(parse_draft(doc()), narrative="x" * (MAX_RECORD_BYTES + 1))
    with pytest.raises(ValidationError, match="record is larger"):
        body_for(d)


def test_body_policy_unknown_enum_reads_strictest():
    body = records_pb2.RecordBody(policy=records_pb2.AccessPolicy(
        tlp=99, audience=["nysic"], discoverability=1, relay=True))
    p = body_policy(body)
    assert p.tlp is Tlp.RED
    assert p.discoverability is Discoverability.RESTRICTED


def test_record_ids_cluster_by_log_position_and_carry_no_time() -> None:
    """Records made one after another share an id prefix (storage's (origin,
    record_id) indexes take them at one small region: issue 10 item 3); the prefix
    is keyed, so it says nothing of when or at which position a record was made
    (a POINTER leaves the time out: review, session 17); 32 lowercase hex digits,
    unique."""
    from node.core.record import ID_CLUSTER_ENTRIES, id_cluster, new_record_id
    secret, other = b"s" * 32, b"o" * 32
    first = [new_record_id(id_cluster(secret, seq)) for seq in range(1, ID_CLUSTER_ENTRIES)]
    assert len({rid[:8] for rid in first}) == 1, "one cluster for consecutive positions"
    assert new_record_id(id_cluster(secret, ID_CLUSTER_ENTRIES))[:8] != first[0][:8]
    assert id_cluster(other, 1) != id_cluster(secret, 1), "keyed: others cannot compute it"
    # Not ordered by time or position: later windows are not above earlier ones.
    windows = [id_cluster(secret, w * ID_CLUSTER_ENTRIES) for w in range(64)]
    assert windows != sorted(windows)
    for rid in [*first[:50], new_record_id()]:
        assert len(rid) == 32 and rid == rid.lower() and int(rid, 16) >= 0
    assert len(set(first)) == len(first)
