"""federation.backoff: exponential backoff with full jitter, reset on contact."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.backoff import Backoff


def test_grows_exponentially_until_capped():
    b = Backoff(base_s=1.0, cap_s=8.0, rng=random.Random(1))
    ceilings = [1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        d = b.next_delay()
        assert ceiling / 2 <= d <= ceiling
    assert b.attempts == len(ceilings)


def test_reset_returns_to_base():
    b = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(2))
    for _ in range(10):
        b.next_delay()
    assert b.next_delay() > 0.5
    b.reset()
    assert b.attempts == 0
    assert 0.25 <= b.next_delay() <= 0.5


def test_jitter_varies():
    b = Backoff(base_s=1.0, cap_s=1.0, rng=random.Random(3))
    assert len({b.next_delay() for _ in range(20)}) > 1


def test_many_attempts_do_not_overflow():
    b = Backoff(base_s=0.25, cap_s=30.0, attempts=10_000, rng=random.Random(4))
    assert 15.0 <= b.next_delay() <= 30.0


@settings(max_examples=300, deadline=None)
@given(st.floats(0.01, 5.0), st.floats(0.01, 120.0), st.integers(0, 60), st.integers(0, 2**32))
def test_prop_delay_within_jitter_window(base, cap, attempts, seed):
    b = Backoff(base_s=base, cap_s=cap, attempts=attempts, rng=random.Random(seed))
    ceiling = min(cap, base * 2 ** min(attempts, 20))
    d = b.next_delay()
    assert ceiling / 2 <= d <= ceiling
    assert d <= cap
    assert b.attempts == attempts + 1


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 5.0), st.floats(0.01, 120.0), st.integers(1, 40), st.integers(0, 2**32))
def test_prop_reset_on_contact_starts_over(base, cap, n, seed):
    b = Backoff(base_s=base, cap_s=cap, rng=random.Random(seed))
    for _ in range(n):
        b.next_delay()
    b.reset()
    first = min(cap, base)
    assert first / 2 <= b.next_delay() <= first
    assert b.attempts == 1
