"""node.audit: the hash-chained audit log finds edits, deletions and truncation."""

from __future__ import annotations

import struct
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.audit import GENESIS, AuditEntry, canonical, entry_hash, head_message, verify_chain

ACTIONS = ("publish", "query", "view", "disseminate", "peer.add", "user.add")


def make_chain(n: int, t0: int = 1_767_225_600_000) -> list[AuditEntry]:
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        actor, action = f"user{seq % 3}", ACTIONS[seq % len(ACTIONS)]
        detail = canonical({"n": seq, "record": f"r{seq}", "note": "é"})
        digest = entry_hash(prev, seq, t0 + seq, actor, action, detail)
        out.append(AuditEntry(seq, t0 + seq, actor, action, detail, prev, digest))
        prev = digest
    return out


def head(chain: list[AuditEntry]) -> tuple[int, bytes]:
    return (chain[-1].seq, chain[-1].hash) if chain else (0, GENESIS)


def test_intact_chain_passes():
    chain = make_chain(10)
    assert verify_chain(chain, *head(chain)) == []


def test_empty_chain_passes():
    assert verify_chain([], 0, b"") == []


def test_edited_entry_is_named():
    chain = make_chain(10)
    chain[4] = replace(chain[4], detail=canonical({"n": 5, "record": "other"}))
    problems = verify_chain(chain, *head(make_chain(10)))
    assert any(p.startswith("entry 5 ") and "edited" in p for p in problems), problems


def test_edited_and_rehashed_entry_breaks_next_link():
    chain = make_chain(10)
    e = chain[4]
    actor = "mallory"
    digest = entry_hash(e.prev, e.seq, e.ts_ms, actor, e.action, e.detail)
    chain[4] = replace(e, actor=actor, hash=digest)
    problems = verify_chain(chain, *head(make_chain(10)))
    assert any(p.startswith("entry 6:") and "link" in p for p in problems), problems


def test_deleted_middle_entry_is_found():
    chain = make_chain(10)
    signed = head(chain)
    del chain[5]  # seq 6
    problems = verify_chain(chain, *signed)
    assert any("6..6" in p and "missing" in p for p in problems), problems
    assert any(p.startswith("entry 7:") for p in problems), problems


def test_deleted_first_entry_is_found():
    chain = make_chain(4)
    signed = head(chain)
    problems = verify_chain(chain[1:], *signed)
    assert any("1..1" in p and "missing" in p for p in problems), problems


def test_truncated_tail_is_found():
    chain = make_chain(10)
    signed = head(chain)
    problems = verify_chain(chain[:7], *signed)
    assert any("8..10" in p and "truncated" in p for p in problems), problems


def test_tail_entry_replaced_wholesale_does_not_match_signed_head():
    chain = make_chain(5)
    signed = head(chain)
    e = chain[-1]
    detail = canonical({"forged": True})
    chain[-1] = replace(e, detail=detail,
                        hash=entry_hash(e.prev, e.seq, e.ts_ms, e.actor, e.action, detail))
    problems = verify_chain(chain, *signed)
    assert any(p.startswith("entry 5:") and "signed head" in p for p in problems), problems


def test_entries_beyond_signed_head_are_flagged():
    chain = make_chain(6)
    problems = verify_chain(chain, 4, chain[3].hash)
    assert any("5..6" in p and "not covered" in p for p in problems), problems


def test_canonical_is_order_independent_and_compact():
    assert canonical({"b": 1, "a": "é"}) == canonical({"a": "é", "b": 1}) == '{"a":"é","b":1}'


def test_entry_hash_fields_are_length_prefixed():
    # "ab"+"c" and "a"+"bc" must not collide.
    assert entry_hash(GENESIS, 1, 1, "ab", "c", "") != entry_hash(GENESIS, 1, 1, "a", "bc", "")


def test_head_message():
    assert head_message(7, b"\x01" * 32) == struct.pack(">Q", 7) + b"\x01" * 32


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 30), st.data())
def test_prop_any_single_edit_is_named(n, data):
    chain = make_chain(n)
    signed = head(chain)
    i = data.draw(st.integers(0, n - 1))
    field = data.draw(st.sampled_from(["actor", "action", "detail", "ts_ms"]))
    e = chain[i]
    new = e.ts_ms + 1 if field == "ts_ms" else getattr(e, field) + "x"
    chain[i] = replace(e, **{field: new})
    problems = verify_chain(chain, *signed)
    assert any(p.startswith(f"entry {e.seq} ") for p in problems), problems


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 30), st.data())
def test_prop_any_deletion_is_found(n, data):
    chain = make_chain(n)
    signed = head(chain)
    i = data.draw(st.integers(0, n - 1))
    del chain[i]
    assert verify_chain(chain, *signed) != []
