"""When a task fires: Quartz cron for RunLoop tasks, one shot at StartDate otherwise,
bounded by StartDate / EndDate, in the task's time zone. Shared by the legacy API
(NextRunTime, next fire times) and the executor nodes (what to fire next)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from schedulemaster.deployments import quartz
from schedulemaster.deployments.spec import TaskSpec

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


def one_shot_instant(spec: TaskSpec) -> datetime | None:
    start = local_to_utc(spec.StartDate, spec.TimeZone)
    started = local_to_utc(spec.StartedAt, spec.TimeZone)
    if start is None or (started is not None and start < started):
        return started
    return start


def next_fire(spec: TaskSpec, after: datetime, *, ignore_end: bool = False) -> datetime | None:
    """The first instant strictly after ``after`` (aware) at which the task fires, or None;
    ``ignore_end``: as if the task had no EndDate."""
    tz = spec.TimeZone
    end = None if ignore_end else local_to_utc(spec.EndDate, tz)
    if not spec.RunLoop:
        at = one_shot_instant(spec)
        return at if at is not None and at > after and (end is None or at <= end) else None
    cron = quartz.parse(spec.CronExpression or "")
    start = local_to_utc(spec.StartDate, tz)
    if start is not None and start > after:
        after = start - timedelta(microseconds=1)
    nxt = cron.next_after(after, tz)
    if nxt is None or (end is not None and nxt > end):
        return None
    return nxt


def upcoming(spec: TaskSpec, count: int, after: datetime) -> list[datetime]:
    out: list[datetime] = []
    t = after
    while len(out) < count:
        nxt = next_fire(spec, t)
        if nxt is None or (out and nxt <= out[-1]):
            break
        out.append(nxt)
        if not spec.RunLoop:
            break
        t = nxt
    return out


def instants_between(spec: TaskSpec, after: datetime, until: datetime, limit: int) -> tuple[list[datetime], bool]:
    """The task's instants in (``after``, ``until``], at most ``limit`` of them, and whether
    that is all of them (False: there are more, not counted)."""
    out: list[datetime] = []
    at = after
    while True:
        at = next_fire(spec, at)
        if at is None or at > until:
            return out, True
        if len(out) >= limit:
            return out, False
        out.append(at)
        if not spec.RunLoop:
            return out, True
