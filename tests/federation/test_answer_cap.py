"""federation.query_fanout.AnswerCap: what one peer may send for one query (pure)."""

from __future__ import annotations

from federation.query_fanout import AnswerCap, Merger
from node.wire import federation_pb2, records_pb2


def _answer(records: int, pointers: int = 0, size: int = 10) -> federation_pb2.QueryAnswer:
    return federation_pb2.QueryAnswer(
        records=[records_pb2.Envelope(payload=b"x" * size) for _ in range(records)],
        pointers=[federation_pb2.Pointer(record_id="p") for _ in range(pointers)])


def test_records_and_pointers_beyond_the_limit_are_cut_and_counted():
    cap = AnswerCap(items=5, bytes_left=10**6, messages_left=10)
    assert cap.take(_answer(3)) is not None and not cap.cut
    kept = cap.take(_answer(2, 3))
    assert kept is not None and (len(kept.records), len(kept.pointers)) == (2, 0)
    assert cap.cut and cap.dropped == 3 and "limit" in cap.reason


def test_bytes_and_messages_are_capped():
    cap = AnswerCap(items=100, bytes_left=_answer(2).ByteSize() + 1, messages_left=10)
    assert cap.take(_answer(2)) is not None
    assert cap.take(_answer(2)) is None and cap.dropped == 2 and "max_answer_bytes" in cap.reason
    cap = AnswerCap(items=100, bytes_left=10**6, messages_left=2)
    assert cap.take(_answer(0)) is not None and cap.take(_answer(0)) is not None
    assert cap.take(_answer(1)) is None and cap.cut and cap.dropped == 1


def test_merger_newest_version_wins_and_full_beats_a_pointer():
    m = Merger()
    pointer = {"origin": "b", "record_id": "r", "access": "POINTER"}
    full = {"origin": "b", "record_id": "r", "access": "FULL"}
    assert m.admit({**pointer, "version": 1})
    assert not m.admit({**pointer, "version": 1, "contact": "subject is clear"})
    assert m.admit({**full, "version": 1})
    assert not m.admit({**pointer, "version": 1})
    assert not m.admit({**full, "version": 1})
    assert m.admit({**pointer, "version": 2})
