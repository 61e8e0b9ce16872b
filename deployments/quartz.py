"""Quartz cron expressions: parse them and compute the instants Quartz fires at.

Written by hand because no maintained Python library speaks the Quartz dialect: croniter
(and Prefect's vendored copy) puts seconds *last*, numbers day-of-week 0-6 from Sunday,
rejects ``W`` and misreads a 6-field Quartz string silently (docs/prefect-facts.md, Cron). Fire
times are computed on the wall clock of a time zone, the way Quartz.NET does:

* a wall time that does not exist (spring-forward gap) fires at the same UTC instant the
  standard offset gives it, i.e. shifted forward by the gap (Python's ``fold=0``);
* a wall time that happens twice (fall-back) fires once, at its standard-time occurrence
  (``TimeZoneInfo.GetUtcOffset`` returns the standard offset for ambiguous times; ``fold=1``).
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

__all__ = ["CronError", "QuartzCron", "parse"]

MAX_YEAR = 2099
FIELD_NAMES = ("seconds", "minutes", "hours", "day-of-month", "month", "day-of-week", "year")
_BOUNDS = {
    "seconds": (0, 59),
    "minutes": (0, 59),
    "hours": (0, 23),
    "day-of-month": (1, 31),
    "month": (1, 12),
    "day-of-week": (1, 7),
    "year": (1970, MAX_YEAR),
}
_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], start=1)}


class CronError(ValueError):
    """An expression Quartz would refuse; ``field`` names the bad field (1-based position)."""

    def __init__(self, expression: str, message: str, field_index: int | None = None):
        self.expression = expression
        self.field_index = field_index
        self.field = FIELD_NAMES[field_index] if field_index is not None else None
        where = f" in field {field_index + 1} ({self.field})" if field_index is not None else ""
        super().__init__(f"invalid cron expression '{expression}'{where}: {message}")


@dataclass(frozen=True)
class _DaySpec:
    """What a day-of-month or day-of-week field asks for, beyond a plain set of numbers."""

    values: frozenset[int] = frozenset()
    any: bool = False  # '?' (no specific value)
    last: bool = False  # dom 'L' / dow 'nL' (with values = {n})
    last_offset: int = 0  # dom 'L-n'
    nearest_weekday: bool = False  # dom 'nW' / 'LW'
    nth: int = 0  # dow 'n#k'


@dataclass(frozen=True)
class QuartzCron:
    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    years: tuple[int, ...]
    dom: _DaySpec
    dow: _DaySpec
    _month_cache: dict = field(default_factory=dict, compare=False, repr=False)

    # ---- evaluation -----------------------------------------------------------------
    def next_after(self, after: datetime, tz: tzinfo | str = "UTC") -> datetime | None:
        """The first fire instant strictly after ``after`` (aware), as an aware datetime in ``tz``."""
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        after_utc = after.astimezone(timezone.utc)
        wall_after = after_utc.astimezone(zone).replace(tzinfo=None, microsecond=0)
        two_h = timedelta(hours=2)
        if (after_utc - two_h).astimezone(zone).utcoffset() == (after_utc + two_h).astimezone(zone).utcoffset():
            # No offset change nearby: wall order is instant order.
            wall = wall_after + timedelta(seconds=1)
            while (cand := self._next_wall(wall)) is not None:
                inst = _localize(cand, zone)
                if inst > after_utc:
                    return inst
                wall = cand + timedelta(seconds=1)
            return None
        # Near a DST change a wall time *earlier* than wall_after can map to a later
        # instant (fold), so scan from an hour before and keep the earliest instant > after.
        wall = wall_after - timedelta(hours=1)
        horizon = wall_after + timedelta(hours=1)
        best: datetime | None = None
        while (cand := self._next_wall(wall)) is not None:
            if best is not None and cand > horizon:
                break
            inst = _localize(cand, zone)
            if inst > after_utc and (best is None or inst < best):
                best = inst
            wall = cand + timedelta(seconds=1)
        return best

    def next_fires(self, count: int, after: datetime, tz: tzinfo | str = "UTC") -> list[datetime]:
        out: list[datetime] = []
        t = after
        while len(out) < count:
            nxt = self.next_after(t, tz)
            if nxt is None:
                break
            out.append(nxt)
            t = nxt
        return out

    def _next_wall(self, t: datetime) -> datetime | None:
        """Smallest naive wall time >= t that matches every field."""
        while True:
            if t.year > MAX_YEAR:
                return None
            if t.year not in self.years:
                ny = _first_at_least(self.years, t.year + 1)
                if ny is None:
                    return None
                t = datetime(ny, 1, 1)
                continue
            if t.month not in self.months:
                nm = _first_at_least(self.months, t.month + 1)
                t = datetime(t.year, nm, 1) if nm else datetime(t.year + 1, 1, 1)
                continue
            days = self._days(t.year, t.month)
            if t.day not in days:
                nd = _first_at_least(days, t.day + 1)
                t = datetime(t.year, t.month, nd) if nd else _next_month(t)
                continue
            if t.hour not in self.hours:
                nh = _first_at_least(self.hours, t.hour + 1)
                t = t.replace(hour=nh, minute=0, second=0) if nh is not None else _next_day(t)
                continue
            if t.minute not in self.minutes:
                nmin = _first_at_least(self.minutes, t.minute + 1)
                t = (t.replace(minute=nmin, second=0) if nmin is not None
                     else _next_hour(t))
                continue
            if t.second not in self.seconds:
                ns = _first_at_least(self.seconds, t.second + 1)
                t = t.replace(second=ns) if ns is not None else _next_minute(t)
                continue
            return t

    def _days(self, year: int, month: int) -> tuple[int, ...]:
        key = (year, month)
        cached = self._month_cache.get(key)
        if cached is None:
            cached = tuple(sorted(self._compute_days(year, month)))
            if len(self._month_cache) > 256:
                self._month_cache.clear()
            self._month_cache[key] = cached
        return cached

    def _compute_days(self, year: int, month: int) -> set[int]:
        ndays = calendar.monthrange(year, month)[1]
        if not self.dom.any:
            spec = self.dom
            if spec.last:
                last = ndays - spec.last_offset
                if spec.nearest_weekday:
                    return {_nearest_weekday(year, month, ndays, ndays)}
                return {last} if last >= 1 else set()
            if spec.nearest_weekday:
                (d,) = tuple(spec.values)
                return {_nearest_weekday(year, month, min(d, ndays), ndays)} if d <= ndays else set()
            return {d for d in spec.values if d <= ndays}
        spec = self.dow
        # Quartz day-of-week 1 = Sunday; Python weekday() 0 = Monday.
        py_days = {(q + 5) % 7 for q in spec.values}
        first_wd = date(year, month, 1).weekday()
        matches = [d for d in range(1, ndays + 1) if (first_wd + d - 1) % 7 in py_days]
        if spec.last:
            return {matches[-1]} if matches else set()
        if spec.nth:
            return {matches[spec.nth - 1]} if len(matches) >= spec.nth else set()
        return set(matches)


def _localize(wall: datetime, zone: tzinfo) -> datetime:
    """Attach ``zone`` the Quartz.NET way (see module docstring)."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    # Round-tripping through UTC tells a gap (no such wall time) from a fold (twice).
    if first.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) != wall:
        # gap: the offset before the jump, i.e. the wall time shifted forward by the gap
        return first.astimezone(timezone.utc).astimezone(zone)
    return second  # fold: the later (standard-time) occurrence


def _nearest_weekday(year: int, month: int, day: int, ndays: int) -> int:
    wd = date(year, month, day).weekday()
    if wd == 5:  # Saturday -> Friday, unless that leaves the month
        return day - 1 if day > 1 else day + 2
    if wd == 6:  # Sunday -> Monday, unless that leaves the month
        return day + 1 if day < ndays else day - 2
    return day


def _first_at_least(values, minimum: int):
    for v in values:
        if v >= minimum:
            return v
    return None


def _next_month(t: datetime) -> datetime:
    return datetime(t.year + 1, 1, 1) if t.month == 12 else datetime(t.year, t.month + 1, 1)


def _next_day(t: datetime) -> datetime:
    return datetime.combine(t.date() + timedelta(days=1), datetime.min.time())


def _next_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0) + timedelta(hours=1)


def _next_minute(t: datetime) -> datetime:
    return t.replace(second=0) + timedelta(minutes=1)


# ---- parsing ------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def parse(expression: str) -> QuartzCron:
    """Parse a Quartz cron expression (6 or 7 fields) or raise :class:`CronError`.

    Cached: the node plans every task's next instant after each firing, and a shared parsed
    expression also shares its per-month day cache."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronError(str(expression), "the expression is empty")
    if len(expression) > 200:
        raise CronError(expression[:60] + "...", "the expression is too long")
    parts = expression.upper().split()
    if len(parts) not in (6, 7):
        raise CronError(expression, f"expected 6 or 7 fields (seconds minutes hours day-of-month "
                                    f"month day-of-week [year]), got {len(parts)}")
    sec = _parse_numeric(expression, parts[0], 0)
    minute = _parse_numeric(expression, parts[1], 1)
    hour = _parse_numeric(expression, parts[2], 2)
    dom = _parse_dom(expression, parts[3])
    month = _parse_numeric(expression, parts[4], 4, names=_MONTHS)
    dow = _parse_dow(expression, parts[5])
    year = _parse_numeric(expression, parts[6], 6) if len(parts) == 7 else tuple(range(1970, MAX_YEAR + 1))
    if dom.any == dow.any:
        raise CronError(expression, "exactly one of day-of-month and day-of-week must be '?' "
                                    "(Quartz does not support specifying both)",
                        5 if not dow.any else 3)
    return QuartzCron(expression, sec, minute, hour, month, year, dom, dow)


def _parse_numeric(expr: str, text: str, idx: int, names: dict[str, int] | None = None) -> tuple[int, ...]:
    name = FIELD_NAMES[idx]
    if text == "?":
        raise CronError(expr, "'?' is only allowed in day-of-month and day-of-week", idx)
    values: set[int] = set()
    for item in text.split(","):
        values |= _parse_item(expr, item, idx, names)
    if not values:
        raise CronError(expr, f"no values in {name}", idx)
    return tuple(sorted(values))


def _parse_item(expr: str, item: str, idx: int, names: dict[str, int] | None) -> set[int]:
    lo, hi = _BOUNDS[FIELD_NAMES[idx]]
    if item == "":
        raise CronError(expr, "empty list element", idx)
    step = 1
    if "/" in item:
        base, _, step_text = item.partition("/")
        if not step_text.isdigit():
            raise CronError(expr, f"'{item}': the increment after '/' must be a number", idx)
        step = int(step_text)
        if step < 1 or step > hi:
            raise CronError(expr, f"'{item}': increment {step} out of range 1-{hi}", idx)
        if base in ("*", ""):
            start, end = lo, hi
        elif "-" in base:
            start, end = _parse_range(expr, base, idx, names)
        else:
            start, end = _value(expr, base, idx, names), hi
    elif item == "*":
        start, end = lo, hi
    elif "-" in item:
        start, end = _parse_range(expr, item, idx, names)
    else:
        v = _value(expr, item, idx, names)
        return {v}
    if start <= end:
        return set(range(start, end + 1, step))
    # Quartz wraps ranges like 22-2 (hours) or FRI-MON around the end of the field.
    span = list(range(start, hi + 1)) + list(range(lo, end + 1))
    return set(span[::step])


def _parse_range(expr: str, text: str, idx: int, names) -> tuple[int, int]:
    a, _, b = text.partition("-")
    return _value(expr, a, idx, names), _value(expr, b, idx, names)


def _value(expr: str, text: str, idx: int, names: dict[str, int] | None) -> int:
    lo, hi = _BOUNDS[FIELD_NAMES[idx]]
    if names and text in names:
        return names[text]
    if not text.isdigit():
        raise CronError(expr, f"'{text}' is not a valid value", idx)
    v = int(text)
    if not lo <= v <= hi:
        raise CronError(expr, f"value {v} out of range {lo}-{hi}", idx)
    return v


def _parse_dom(expr: str, text: str) -> _DaySpec:
    idx = 3
    if text == "?":
        return _DaySpec(any=True)
    if text in ("L", "LW"):
        return _DaySpec(last=True, nearest_weekday=text == "LW")
    if text.startswith("L-"):
        off = text[2:]
        if not off.isdigit() or not 0 <= int(off) <= 30:
            raise CronError(expr, f"'{text}': the offset after 'L-' must be 0-30", idx)
        return _DaySpec(last=True, last_offset=int(off))
    if text.endswith("W"):
        day = text[:-1]
        if not day.isdigit() or not 1 <= int(day) <= 31:
            raise CronError(expr, f"'{text}': 'W' needs a single day 1-31 before it", idx)
        return _DaySpec(values=frozenset({int(day)}), nearest_weekday=True)
    if any(c in text for c in "LW#"):
        raise CronError(expr, f"'{text}': 'L', 'W' cannot be combined with lists or ranges", idx)
    return _DaySpec(values=frozenset(_parse_numeric(expr, text, idx)))


def _parse_dow(expr: str, text: str) -> _DaySpec:
    idx = 5
    if text == "?":
        return _DaySpec(any=True)
    if text == "L":
        return _DaySpec(values=frozenset({7}))  # 'L' alone means 7 = Saturday
    if "#" in text:
        day, _, nth = text.partition("#")
        if not nth.isdigit() or not 1 <= int(nth) <= 5:
            raise CronError(expr, f"'{text}': the number after '#' must be 1-5", idx)
        return _DaySpec(values=frozenset({_value(expr, day, idx, _DAYS)}), nth=int(nth))
    if text.endswith("L"):
        return _DaySpec(values=frozenset({_value(expr, text[:-1], idx, _DAYS)}), last=True)
    if "L" in text:
        raise CronError(expr, f"'{text}': 'L' and '#' cannot be combined with lists or ranges", idx)
    if "W" in text.replace("WED", ""):
        raise CronError(expr, f"'{text}': 'W' is only allowed in day-of-month", idx)
    return _DaySpec(values=frozenset(_parse_numeric(expr, text, idx, names=_DAYS)))
