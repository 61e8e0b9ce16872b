"""When a task fires: Quartz cron for RunLoop tasks, one shot at StartDate otherwise,
bounded by StartDate / EndDate, in the task's time zone. Shared by the legacy API
(NextRunTime, next fire times) and the executor nodes (what to fire next)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from schedulemaster.deployments import quartz

#: A one-shot task whose instant passed less than this long ago still fires (Quartz's
#: default misfire threshold is 60 s); cron instants that were missed are skipped.
ONE_SHOT_GRACE = timedelta(seconds=60)


def local_to_utc(value: str | None, tz: str) -> datetime | None:
    """Spec dates are naive local ISO strings in the task's zone."""
    if not value:
        return None
    d = datetime.fromisoformat(value)
    if d.tzinfo is None:
        d = d.replace(tzinfo=ZoneInfo(tz))
    return d.astimezone(timezone.utc)


def one_shot_instant(spec: dict[str, Any]) -> datetime | None:
    tz = spec.get("TimeZone") or "UTC"
    start = local_to_utc(spec.get("StartDate"), tz)
    started = local_to_utc(spec.get("StartedAt"), tz)
    if start is None or (started is not None and start < started):
        return started
    return start


def next_fire(spec: dict[str, Any], after: datetime) -> datetime | None:
    """The first instant strictly after ``after`` (aware) at which the task fires, or None."""
    tz = spec.get("TimeZone") or "UTC"
    end = local_to_utc(spec.get("EndDate"), tz)
    if not spec.get("RunLoop"):
        at = one_shot_instant(spec)
        return at if at is not None and at > after and (end is None or at <= end) else None
    cron = quartz.parse(spec.get("CronExpression") or "")
    start = local_to_utc(spec.get("StartDate"), tz)
    if start is not None and start > after:
        after = start - timedelta(microseconds=1)
    nxt = cron.next_after(after, tz)
    if nxt is None or (end is not None and nxt > end):
        return None
    return nxt


def upcoming(spec: dict[str, Any], count: int, after: datetime) -> list[datetime]:
    out: list[datetime] = []
    t = after
    while len(out) < count:
        nxt = next_fire(spec, t)
        if nxt is None or (out and nxt <= out[-1]):
            break
        out.append(nxt)
        if not spec.get("RunLoop"):
            break
        t = nxt
    return out
