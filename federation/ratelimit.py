"""Per-peer request rate limit, pure: a token bucket fed an explicit clock.

A request costs one token unless told otherwise: a byte budget is the same bucket
with the request's size as its cost."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    per_minute: float
    tokens: float = -1.0
    updated: float = field(default=0.0)

    def allow(self, now: float, cost: float = 1.0) -> bool:
        if self.tokens < 0:  # first use: a full bucket
            self.tokens, self.updated = self.per_minute, now
        self.tokens = min(self.per_minute,
                          self.tokens + (now - self.updated) * self.per_minute / 60.0)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class RateLimits:
    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.setdefault(key, TokenBucket(self.per_minute))
        bucket.per_minute = self.per_minute
        return bucket.allow(now, cost)


class LogLimit:
    """At most ``per_minute`` log lines per key (a peer), the rest counted: a peer
    that calls as fast as it likes must not write the log as fast as it likes. A
    line that is written carries how many were held back since the one before."""

    def __init__(self, per_minute: float = 1.0) -> None:
        self.lines = RateLimits(per_minute)
        self.held: dict[str, int] = {}

    def take(self, key: str, now: float) -> int | None:
        """The count held back before this line, if this line may be written;
        None if not (it is counted instead)."""
        if self.lines.allow(key, now):
            return self.held.pop(key, 0)
        self.held[key] = self.held.get(key, 0) + 1
        return None
