"""The Prefect schedule a task's deployment shows: the Quartz cron in Prefect's own cron dialect.

Executor nodes compute every fire time themselves (deployments/quartz.py): Prefect's
scheduler creates one flow run per firing ahead of time, which a 1,200-firings-a-minute
load cannot afford (docs/prefect-facts.md, What a run costs the server). The deployment still carries the schedule so
the UI says when a task fires, switched on exactly while the task is Running
(deployments/tasks.py); Prefect's scheduler passes task deployments by (prefect_patches #8).

Prefect's cron (its vendored croniter) puts seconds *last*, numbers days of the week 0-6
from Sunday where Quartz uses 1-7, and has no ``W`` or year. The conversion therefore
moves the seconds, writes the days of the week as the Quartz parser understood them, and
then *checks itself*: the converted schedule must give the same next fire times as the
Quartz evaluator, or the deployment gets no Prefect schedule at all (its description and
QueryTaskDetail still give the fire times). A wrong schedule in the UI would be worse than none.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from schedulemaster.deployments.quartz import CronError, parse
from schedulemaster.deployments.spec import TaskSpec

SLUG = "quartz"  # + the expression: "quartz 0/10 * * * * ?"
CHECK_COUNT = 40  # fire times compared between the two evaluators
_PLAIN = re.compile(r"^[0-9A-Za-z*,/\-?]+$")


def croniter_expression(quartz: str) -> str | None:
    """Quartz → Prefect cron text, or None where the dialects differ (W, L in dow, #, year)."""
    try:
        parsed = parse(quartz)
    except CronError:
        return None
    fields = quartz.split()
    if len(fields) == 7:
        if fields[6] != "*":
            return None
        fields = fields[:6]
    sec, minute, hour, dom, month, dow = fields
    if not all(_PLAIN.match(f) for f in fields):
        return None
    if parsed.dom.nearest_weekday or parsed.dom.last_offset or parsed.dow.last or parsed.dow.nth:
        return None
    if parsed.dom.last and dom.upper() != "L":
        return None
    dom = "*" if dom == "?" else dom
    if dow in ("?", "*"):
        dow = "*"
    else:  # the parsed Quartz days (1 = Sunday) as croniter numbers (0 = Sunday)
        dow = ",".join(str(d - 1) for d in sorted(parsed.dow.values))
    return " ".join((minute, hour, dom, month, dow, sec))


def display_schedule(spec: TaskSpec, now: datetime | None = None):
    """The ``DeploymentScheduleCreate`` for a task (inactive: the repository switches it on
    while the task runs), or None when none is exact."""
    from prefect.server.schemas.actions import DeploymentScheduleCreate
    from prefect.server.schemas.schedules import CronSchedule

    if not spec.RunLoop or not spec.CronExpression:
        return None
    tz = spec.TimeZone
    start = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    expr = _exact_expression(spec.CronExpression, tz, start.replace(second=0))
    if expr is None:
        return None
    # The UI lists a schedule by its slug: let it say what fires, and that the node fires it.
    return DeploymentScheduleCreate(schedule=CronSchedule(cron=expr, timezone=tz), active=False,
                                    slug=f"{SLUG} {spec.CronExpression}")


@lru_cache(maxsize=2048)
def _exact_expression(quartz: str, tz: str, minute: datetime) -> str | None:
    """The Prefect cron text when it gives the same CHECK_COUNT fire times as Quartz from this
    minute on, else None. Cached per minute: comparing 2 × 40 fire times was a third of the
    cost of creating a task, and an import (or a client) creates many with the same cron."""
    from prefect.server.schemas.schedules import CronSchedule

    expr = croniter_expression(quartz)
    if expr is None:
        return None
    try:
        schedule = CronSchedule(cron=expr, timezone=tz)
        theirs = [d.astimezone(timezone.utc) for d in
                  schedule._get_dates_generator(n=CHECK_COUNT, start=minute + timedelta(seconds=1))]
    except Exception:  # croniter refused it: no exact Prefect schedule
        return None
    ours = parse(quartz).next_fires(CHECK_COUNT, minute, tz)
    return expr if [d.astimezone(timezone.utc) for d in ours] == theirs else None
