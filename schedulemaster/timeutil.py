"""Time helpers shared by every process: aware UTC everywhere, naive UTC only where a table of
the original's stores it (the delayed tasks, the import's ledger) and named so; and the one
grammar for durations ("30", "90s", "5m", "2h", "7d"), bounded at ten years."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

#: the longest delay or span anything accepts: longer is a mistake, not a delay
MAX_SPAN_SECONDS = 10 * 365 * 86400
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(timezone.utc)


def utcnow_naive() -> datetime:
    """Now in UTC without a zone: only for columns the original's schema keeps naive."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def parse_span(value: str | int | float | timedelta, what: str = "duration") -> timedelta:
    """``30``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"`` or a timedelta, as a timedelta; ValueError
    naming ``what`` for anything else, negative, or over ten years."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{what} must be seconds or a text like '30s', '5m', '1h', '7d', got {value!r}")
    if isinstance(value, (int, float)):
        if not 0 <= value <= MAX_SPAN_SECONDS:
            raise ValueError(f"{what} must be seconds from 0 to ten years or a text like '30s', got {value!r}")
        return timedelta(seconds=value)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{what} {value!r} must be seconds or a text like '30s', '5m', '1h', '7d'")
    unit = m.group(2).lower() if m.group(2) else None
    seconds = float(m.group(1)) * _UNITS[unit]
    if seconds > MAX_SPAN_SECONDS:
        raise ValueError(f"{what} {value!r} is longer than ten years ({MAX_SPAN_SECONDS // 86400}d)")
    return timedelta(seconds=seconds)
