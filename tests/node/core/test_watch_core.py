"""The pure pieces of issue 12: judging one record for one watch (the discovery
rule), the watch index, routing rules, behaviour codes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core import entities
from node.core.query import make_params
from node.core.record import BEHAVIORS, parse_draft
from node.core.routing import check_rules, parse_rules, route
from node.core.types import Decision, ValidationError
from node.core.watch import Watch, WatchIndex, check_watch, judge, record_match
from node.wire import records_pb2

PLATE_KEY = entities.match_keys("plate", "7ABC123")[0]


def body(**kw: object) -> records_pb2.RecordBody:
    b = records_pb2.RecordBody(origin="o", record_id="r", kind=records_pb2.SAR,
                               title=str(kw.get("title", "Van at the substation")),
                               narrative="seen twice at night", labels=["infra"],
                               behaviors=list(kw.get("behaviors", ["SURVL"])))  # type: ignore[arg-type]
    if kw.get("plate", True):
        b.entities.add(type="plate", value="7ABC123", keys=[PLATE_KEY])
    return b


def test_record_match_is_the_search_rule() -> None:
    b = body()
    assert record_match(make_params(entity_pairs=["plate=7abc-123"]), b) == (True, True)
    assert record_match(make_params(entity_pairs=["plate=XYZ"]), b) == (False, False)
    assert record_match(make_params(text="substation night"), b) == (True, True)
    assert record_match(make_params(text="substation bomb"), b) == (True, False)
    assert record_match(make_params(behaviors=["photo"]), b) == (True, False)
    assert record_match(make_params(kinds=["BOLO"]), b) == (False, False)
    assert record_match(make_params(labels=["infra"], behaviors=["SURVL"]), b) == (True, True)


@settings(max_examples=200, deadline=None)
@given(decision=st.sampled_from(list(Decision)), text=st.sampled_from(["", "van", "bomb"]),
       codes=st.lists(st.sampled_from(BEHAVIORS), max_size=2),
       by_entity=st.booleans(), labelled=st.booleans())
def test_no_pointer_without_an_entity_match_and_content_filters_never_decide_one(
        decision: Decision, text: str, codes: list[str], by_entity: bool,
        labelled: bool) -> None:
    params = make_params(text=text, entity_pairs=["plate=7ABC123"] if by_entity else [],
                         labels=["infra"] if labelled else [], behaviors=codes)
    got = judge(decision, params, body())
    if decision is not Decision.FULL:
        # Only an entity match discovers what the owner may not read, whatever the
        # text, labels or codes asked.
        expect = decision if by_entity and decision >= Decision.NOTIFY_ONLY else Decision.DENY
        assert got is expect
    else:
        assert got in (Decision.FULL, Decision.DENY)
        if not (text or codes or labelled):
            assert got is Decision.FULL


def test_index_finds_every_watch_that_can_match() -> None:
    keyed = Watch("a", "u", make_params(entity_pairs=["plate=7ABC123"]), False, 0, 1)
    other = Watch("b", "u", make_params(entity_pairs=["phone=555-123-4567"]), False, 0, 1)
    text = Watch("c", "u", make_params(text="van"), False, 0, 1)
    idx = WatchIndex([keyed, other, text])
    assert {w.id for w in idx.candidates(frozenset({PLATE_KEY}))} == {"a", "c"}


def test_network_watches_take_entities_only() -> None:
    check_watch(make_params(entity_pairs=["plate=7ABC123"], behaviors=["SURVL"]), True)
    with pytest.raises(ValidationError, match="needs at least one --entity"):
        check_watch(make_params(text="van"), True)
    with pytest.raises(ValidationError, match="not text or labels"):
        check_watch(make_params(entity_pairs=["plate=7ABC123"], text="van"), True)
    with pytest.raises(ValidationError, match="a watch needs"):
        check_watch(make_params(), False)


def test_behaviour_codes_are_checked_with_the_list() -> None:
    with pytest.raises(ValidationError, match=r"unknown behavior 'LOITER'.*AVIATION.*WPNS"):
        parse_draft({"kind": "SAR", "title": "t", "part23": {"justification": "j"},
                     "behaviors": ["survl", "loiter"]})
    d = parse_draft({"kind": "SAR", "title": "t", "part23": {"justification": "j"},
                     "behaviors": ["survl", "SURVL", "photo"]})
    assert d.behaviors == ("SURVL", "PHOTO")
    assert len(BEHAVIORS) == 16


TIP = {"kind": "TIP", "title": "t", "labels": ["nexus:terrorism"],
       "part23": {"justification": "j"}, "policy": {"audience": ["nysic"]}}


def test_routing_widens_never_narrows() -> None:
    rules = parse_rules([{"name": "jttf", "when": {"kind": "tip", "label": "nexus:terrorism"},
                          "add_audience": ["jttf"]},
                         {"when": {"behavior": "wpns"}, "add_audience": ["atf"]}])
    assert rules[1].name == "routing-2" and rules[1].behavior == "WPNS"
    routed, names = route(rules, parse_draft(TIP))
    assert names == ("jttf",) and routed.audience == ("nysic", "jttf")
    _, names = route(rules, parse_draft({**TIP, "labels": []}))
    assert names == ()
    members = parse_draft({**TIP, "policy": {"audience": ["members"]}})
    routed, names = route(rules, members)
    assert names == ("jttf",) and routed.audience == ("members",)


@pytest.mark.parametrize("items,message", [
    ([{"when": {}, "add_audience": ["x"]}], "'when' must name"),
    ([{"when": {"colour": "red"}, "add_audience": ["x"]}], "unknown condition 'colour'"),
    ([{"when": {"kind": "MEMO"}, "add_audience": ["x"]}], "unknown kind 'MEMO'"),
    ([{"when": {"behavior": "NOPE"}, "add_audience": ["x"]}], "unknown behavior 'NOPE'"),
    ([{"when": {"kind": "TIP"}, "add_audience": []}], "add_audience must be"),
    ([{"when": {"kind": "TIP"}, "add_audience": ["members"]}], "cannot be 'members'"),
    ([{"name": "a", "when": {"kind": "TIP"}, "add_audience": ["x"]},
      {"name": "a", "when": {"kind": "SAR"}, "add_audience": ["x"]}], "two \\[\\[routing\\]\\]"),
])
def test_bad_rules_are_refused_with_the_reason(items: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_rules(items)


def test_rules_name_only_known_centers_and_groups() -> None:
    rules = parse_rules([{"name": "r", "when": {"kind": "TIP"}, "add_audience": ["jttf"]}])
    with pytest.raises(ValidationError, match="'r': unknown center 'jttf'"):
        check_rules(rules, {"nysic"}, {})
    check_rules(rules, {"nysic", "jttf"}, {})
    grouped = parse_rules([{"name": "g", "when": {"kind": "TIP"},
                            "add_audience": ["jttf:all"]}])
    with pytest.raises(ValidationError, match="unknown group 'jttf:all'"):
        check_rules(grouped, {"nysic"}, {})
    check_rules(grouped, {"nysic"}, {"jttf:all": ("nysic",)})


def test_triggers_queue_changes_only_while_watched_and_erase_stale_hit_content(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    from node.storage import watches as watch_tx
    from node.storage.db import immediate, open_sync

    conn = open_sync(tmp_path / "node.db", create=True)
    with immediate(conn):
        watch_tx.set_self(conn, "o")

    def record(version: int, state: str = "active") -> None:
        with immediate(conn):
            conn.execute(
                "INSERT INTO records (origin, record_id, version, seq, kind, created_ms, "
                "expires_ms, review_due_ms, labels, state) VALUES ('o', 'r', ?, ?, 'SAR', 1, "
                "9, 9, ' ', ?) ON CONFLICT (origin, record_id) DO UPDATE SET "
                "version = excluded.version, seq = excluded.seq, state = excluded.state",
                (version, version, state))

    def queued() -> int:
        return conn.execute("SELECT count(*) FROM watch_queue").fetchone()[0]

    record(1)
    assert queued() == 0  # no watch: ingest pays nothing
    with immediate(conn):
        watch_tx.add_watch(conn, Watch("w", "u", make_params(text="van"), True, 0, 10**15))
        watch_tx.add_hit(conn, watch_tx.Hit(0, "w", "u", 1, "o", "o", "r", 1, "FULL",
                                            b"payload", b"sig", "k"), 10)
    record(2)
    assert queued() == 1
    payload = conn.execute("SELECT payload FROM watch_hits").fetchone()[0]
    assert payload is None  # a newer version erased the older one's content
    with immediate(conn):
        watch_tx.add_hit(conn, watch_tx.Hit(0, "w", "u", 1, "o", "o", "r", 2, "FULL",
                                            b"payload2", b"sig", "k"), 10)
    record(3, "purged")
    assert conn.execute("SELECT count(*) FROM watch_hits WHERE payload IS NOT NULL"
                        ).fetchone()[0] == 0
    conn.close()


def test_standing_queries_queue_only_this_centers_own_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from node.storage import watches as watch_tx
    from node.storage.db import immediate, open_sync

    conn = open_sync(tmp_path / "node.db", create=True)
    with immediate(conn):
        watch_tx.set_self(conn, "o")
        w = Watch("w", "mallory", make_params(entity_pairs=["plate=7ABC123"]), True, 0, 10**15)
        watch_tx.replace_standing(conn, "peer", 1, [watch_tx.Standing("peer", w, (), 0)])
        for origin in ("x", "o"):
            conn.execute(
                "INSERT INTO records (origin, record_id, version, seq, kind, created_ms, "
                "expires_ms, review_due_ms, labels) VALUES (?, 'r', 1, 1, 'SAR', 1, 9, 9, ' ')",
                (origin,))
    rows = conn.execute("SELECT r.origin FROM watch_queue q JOIN records r ON r.id = q.rec"
                        ).fetchall()
    assert rows == [("o",)]
    conn.close()
