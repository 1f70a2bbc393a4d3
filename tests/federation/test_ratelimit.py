"""The per-peer token bucket, fed an explicit clock."""

from federation.ratelimit import RateLimits, TokenBucket


def test_a_request_costs_one_token_and_the_bucket_refills_per_minute() -> None:
    bucket = TokenBucket(per_minute=2)
    assert bucket.allow(0.0) and bucket.allow(0.0)
    assert not bucket.allow(0.0)
    assert bucket.allow(30.0)  # half a minute: one token back
    assert not bucket.allow(30.0)


def test_a_byte_budget_charges_each_request_its_size() -> None:
    budget = RateLimits(per_minute=1000)
    assert budget.allow("peer", 0.0, 600)
    assert not budget.allow("peer", 0.0, 600)  # 400 left: refused, nothing taken
    assert budget.allow("peer", 0.0, 400)
    assert budget.allow("other", 0.0, 1000)  # each key its own bucket
    assert not budget.allow("peer", 6.0, 200)  # 6 s refill 100 bytes
    assert budget.allow("peer", 12.0, 200)


def test_a_log_limit_writes_one_line_a_minute_per_key_and_counts_the_rest() -> None:
    from federation.ratelimit import LogLimit

    lines = LogLimit()
    assert lines.take("peer", 0.0) == 0  # the first line is written
    assert [lines.take("peer", t) for t in (1.0, 2.0, 30.0)] == [None, None, None]
    assert lines.take("other", 2.0) == 0  # each peer its own minute
    assert lines.take("peer", 61.0) == 3  # the next line says how many were held back
    assert lines.take("peer", 62.0) is None
