"""A relayed answer's completeness (federation/query_fanout.py, Relayed.judge):
complete only when every part its center counted arrived."""

from __future__ import annotations

from federation.query_fanout import AnswerCap, Outcome, Relayed


def judged(parts: set[int], counts: set[int]) -> Outcome:
    r = Relayed(("hub",), AnswerCap(10, 1 << 20, 11), Outcome("answered", via=["hub"]),
                parts, counts)
    r.judge()
    return r.outcome


def test_every_counted_part_arrived_is_complete() -> None:
    o = judged({0, 1, 2}, {3})
    assert (o.status, o.completeness, o.parts, o.parts_expected) == (
        "answered", "complete", 3, 3)
    assert o.as_dict()["completeness"] == "complete"


def test_a_dropped_tail_part_is_incomplete_and_named() -> None:
    o = judged({0, 1}, {3})
    assert (o.status, o.completeness, o.parts, o.parts_expected) == (
        "incomplete", "parts missing", 2, 3)
    assert "1 of 3 answer parts did not arrive" in o.reason and "parts 2" in o.reason
    o = judged({0, 2}, {3})  # one in the middle
    assert o.status == "incomplete" and "parts 1" in o.reason


def test_parts_without_a_count_are_never_complete() -> None:
    # A center of an older release: its parts carry no count.
    o = judged({0}, {0})
    assert (o.status, o.completeness) == ("incomplete", "unknown")
    assert "completeness unknown" in o.reason


def test_a_timeout_keeps_its_status_and_says_what_was_missing() -> None:
    r = Relayed(("hub",), AnswerCap(10, 1 << 20, 11), Outcome("timed out"), {0}, {2})
    r.judge()
    assert (r.outcome.status, r.outcome.completeness) == ("timed out", "parts missing")


def test_a_huge_signed_count_costs_nothing_to_judge() -> None:
    # The count is the answering center's word: 2**32 - 1 must not be listed.
    o = judged({0, 1}, {2**32 - 1})
    assert o.status == "incomplete" and "parts 2, 3, 4" in o.reason
    assert o.parts_expected == 2**32 - 1
