"""Time: the one clock and the parsers for durations and dates the CLI accepts."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from node.core.types import ValidationError

_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000,
          "y": 365 * 86_400_000}
YEAR_MS = _UNITS["y"]
DAY_MS = _UNITS["d"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_duration_ms(text: str) -> int:
    """'90d', '5s', '250ms', '1y' -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)\s*", text or "")
    if not m:
        raise ValidationError(f"invalid duration {text!r}: use e.g. 500ms, 5s, 30d, 1y")
    value, unit = float(m.group(1)), m.group(2)
    return int(value) if unit == "ms" else int(value * _UNITS[unit])


def parse_instant_ms(text: str, now: int | None = None) -> int:
    """An ISO date/time ('2026-01-31', '2026-01-31T12:00Z') or an age ('30d' ago)."""
    text = (text or "").strip()
    if re.fullmatch(r"\d+(?:\.\d+)?(ms|s|m|h|d|w|y)", text):
        return (now if now is not None else now_ms()) - parse_duration_ms(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"invalid date {text!r}: use YYYY-MM-DD, an ISO time, or an age such as 30d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def iso(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
