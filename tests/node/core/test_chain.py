"""node.core.chain.classify: where an incoming log entry fits, or why it does not."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.chain import Held, Incoming, Verdict, classify


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


A1, A2, A3 = h("a1"), h("a2"), h("a3")
B2 = h("b2")


def test_first_signed_entry_appends():
    out = classify(Incoming(1, A1, True), head=0, at_seq=None, before=None)
    assert out.verdict is Verdict.APPEND


def test_next_signed_entry_linking_to_held_appends():
    out = classify(Incoming(2, A2, True, prev=A1), 1, None, Held(A1, True))
    assert out.verdict is Verdict.APPEND


def test_placeholder_appends_without_link():
    out = classify(Incoming(2, A2, False), 1, None, Held(A1, True))
    assert out.verdict is Verdict.APPEND


def test_signed_after_placeholder_with_right_link_appends():
    out = classify(Incoming(3, A3, True, prev=A2), 2, None, Held(A2, False))
    assert out.verdict is Verdict.APPEND


def test_same_entry_again_is_duplicate():
    assert classify(Incoming(2, A2, True, prev=A1), 2, Held(A2, True),
                    Held(A1, True)).verdict is Verdict.DUPLICATE
    assert classify(Incoming(2, A2, False), 2, Held(A2, False),
                    Held(A1, True)).verdict is Verdict.DUPLICATE
    # A placeholder for an entry we hold signed tells us nothing new.
    assert classify(Incoming(2, A2, False), 2, Held(A2, True),
                    Held(A1, True)).verdict is Verdict.DUPLICATE


def test_signed_entry_for_held_placeholder_upgrades():
    out = classify(Incoming(2, A2, True, prev=A1), 3, Held(A2, False), Held(A1, True))
    assert out.verdict is Verdict.UPGRADE
    first = classify(Incoming(1, A1, True), 3, Held(A1, False), None)
    assert first.verdict is Verdict.UPGRADE


def test_upgrade_with_wrong_link_is_refused():
    out = classify(Incoming(2, A2, True, prev=B2), 3, Held(A2, False), Held(A1, False))
    assert out.verdict is Verdict.REWIND  # the unsigned seq 1 was a hop's fake
    fork = classify(Incoming(2, A2, True, prev=B2), 3, Held(A2, False), Held(A1, True))
    assert fork.verdict is Verdict.FORK


def test_two_signed_entries_at_one_seq_are_a_fork():
    out = classify(Incoming(2, B2, True, prev=A1), 2, Held(A2, True), Held(A1, True))
    assert out.verdict is Verdict.FORK
    assert "seq 2" in out.reason


def test_signed_entry_linking_to_different_signed_predecessor_is_a_fork():
    out = classify(Incoming(3, A3, True, prev=B2), 2, None, Held(A2, True))
    assert out.verdict is Verdict.FORK
    assert "links to a different seq 2" in out.reason


def test_gap_rejected():
    out = classify(Incoming(4, h("a4"), True, prev=A3), 2, None, None)
    assert out.verdict is Verdict.REJECT
    assert "gap" in out.reason
    assert "next expected 3" in out.reason
    placeholder = classify(Incoming(5, h("a5"), False), 2, None, None)
    assert placeholder.verdict is Verdict.REJECT


def test_wrong_link_after_placeholder_rewinds():
    """A placeholder is a hint: the origin's entry contradicting it never breaks
    the chain for good (it used to be rejected, forever)."""
    out = classify(Incoming(3, A3, True, prev=B2), 2, None, Held(A2, False))
    assert out.verdict is Verdict.REWIND
    assert "placeholder at seq 2 contradicted" in out.reason


def test_an_erased_position_keeps_its_evidence():
    """Content erased (superseded, recalled, purged) keeps the signature: another
    signed entry there is a fork, never a replacement; the same one is no news
    (or content to fill in, which the caller may refuse)."""
    erased = Held(A2, True, content=False)
    other = classify(Incoming(2, B2, True, prev=A1), 2, erased, Held(A1, True))
    assert other.verdict is Verdict.FORK
    same = classify(Incoming(2, A2, True, prev=A1), 2, erased, Held(A1, True))
    assert same.verdict is Verdict.UPGRADE
    assert classify(Incoming(2, A2, False), 2, erased, Held(A1, True)).verdict is (
        Verdict.DUPLICATE)
    # After an erased position the chain still links (a fork if it does not).
    assert classify(Incoming(3, A3, True, prev=B2), 2, None, erased).verdict is Verdict.FORK


def test_an_origin_stub_counts_as_signed_without_a_link():
    stub = Incoming(2, A2, True, prev=None)
    assert classify(stub, 2, Held(B2, False), Held(A1, True)).verdict is Verdict.REPLACE
    assert classify(stub, 2, Held(B2, True), Held(A1, True)).verdict is Verdict.FORK
    assert classify(stub, 1, None, Held(A1, False)).verdict is Verdict.APPEND


def test_placeholder_contradicting_held_rejected():
    out = classify(Incoming(2, B2, False), 2, Held(A2, True), Held(A1, True))
    assert out.verdict is Verdict.REJECT
    assert "contradicts" in out.reason
    # Hint against hint: the newer one is kept (neither is authority).
    out = classify(Incoming(2, B2, False), 2, Held(A2, False), Held(A1, True))
    assert out.verdict is Verdict.REPLACE
    # A signed entry against a different placeholder is not proof of a fork: the
    # placeholder came from a peer, the signature from the origin, so the signed
    # entry replaces it (a malicious peer's fake placeholder must not block the
    # origin's real entry forever).
    out = classify(Incoming(2, B2, True, prev=A1), 2, Held(A2, False), Held(A1, True))
    assert out.verdict is Verdict.REPLACE
    # ...but only if it links to the signed entry held before it.
    out = classify(Incoming(2, B2, True, prev=B2), 2, Held(A2, False), Held(A1, True))
    assert out.verdict is Verdict.FORK


def test_malformed_items_rejected():
    assert classify(Incoming(0, A1, True), 0, None, None).verdict is Verdict.REJECT
    assert classify(Incoming(1, b"short", True), 0, None, None).verdict is Verdict.REJECT
    seq1_with_prev = classify(Incoming(1, A1, True, prev=A2), 0, None, None)
    assert seq1_with_prev.verdict is Verdict.REJECT
    missing_before = classify(Incoming(2, A2, True, prev=A1), 1, None, None)
    assert missing_before.verdict is Verdict.REJECT


# ---------------------------------------------------------------------- properties

def build_chain(salt: int, n: int) -> list[tuple[bytes, bytes]]:
    """(hash, prev) for seq 1..n."""
    out, prev = [], b""
    for seq in range(1, n + 1):
        digest = h(f"{salt}/{seq}")
        out.append((digest, prev))
        prev = digest
    return out


def feed(item: Incoming, held: dict[int, Held]):
    head = max(held, default=0)
    return classify(item, head, held.get(item.seq), held.get(item.seq - 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.booleans(), min_size=1, max_size=40))
def test_prop_valid_chain_appends_then_duplicates(salt, signed_flags):
    chain = build_chain(salt, len(signed_flags))
    items = [Incoming(seq, digest, signed, prev if signed else b"")
             for seq, ((digest, prev), signed) in enumerate(zip(chain, signed_flags,
                                                                  strict=True), start=1)]
    held: dict[int, Held] = {}
    for item in items:
        assert feed(item, held).verdict is Verdict.APPEND, item
        held[item.seq] = Held(item.hash, item.signed)
    for item in items:
        assert feed(item, held).verdict is Verdict.DUPLICATE, item


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.booleans(), min_size=1, max_size=40))
def test_prop_placeholders_upgrade_to_signed(salt, signed_flags):
    chain = build_chain(salt, len(signed_flags))
    held = {seq: Held(digest, False) for seq, (digest, _) in enumerate(chain, start=1)}
    for seq, ((digest, prev), signed) in enumerate(zip(chain, signed_flags, strict=True),
                                                   start=1):
        if signed:
            assert feed(Incoming(seq, digest, True, prev), held).verdict is Verdict.UPGRADE
            held[seq] = Held(digest, True)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 20), st.integers(2, 10), st.booleans())
def test_prop_beyond_head_never_appends(salt, n, skip, signed):
    chain = build_chain(salt, n + skip)
    held = {seq: Held(d, True) for seq, (d, _) in enumerate(chain[:n], start=1)}
    seq = n + skip
    digest, prev = chain[seq - 1]
    assert feed(Incoming(seq, digest, signed, prev), held).verdict is Verdict.REJECT


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 20), st.data())
def test_prop_other_signed_entry_at_held_seq_is_fork(salt, n, data):
    chain = build_chain(salt, n)
    held = {seq: Held(d, True) for seq, (d, _) in enumerate(chain, start=1)}
    seq = data.draw(st.integers(1, n))
    other = h(f"other/{salt}/{seq}")
    prev = chain[seq - 2][0] if seq > 1 else b""
    assert feed(Incoming(seq, other, True, prev), held).verdict is Verdict.FORK
