"""What a task does with instants nobody fired at their time: one plan for every way a node
finds itself behind (it took the task over from a dead node, no node was live, or its own
timer stalled), so the MisfirePolicy means the same thing in each.

Instants within the task's threshold fire now, late. Older ones go by the policy: ``skip``
records them missed, ``once`` fires the newest of them and records the rest missed, ``all``
fires each, at most ``MAX_CATCH_UP`` (the newest), and records the rest missed. A gap is
counted up to ``MAX_COUNTED`` instants; beyond that the count says "10000+".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from schedulemaster.deployments import plan
from schedulemaster.deployments.policy import MAX_CATCH_UP
from schedulemaster.deployments.spec import TaskSpec

#: instants one gap may count before saying "at least" (a day of a one-second cron is 86,400)
MAX_COUNTED = 10_000


@dataclass
class MisfirePlan:
    fire: list[datetime] = field(default_factory=list)    # fired now, oldest first
    missed: list[datetime] = field(default_factory=list)  # recorded as one Missed run
    complete: bool = True  # False: the gap had more instants than were counted


def plan_gap(spec: TaskSpec, since: datetime, now: datetime) -> MisfirePlan:
    """The task's instants in (``since``, ``now``] as its MisfirePolicy says to treat them;
    raises quartz.CronError for a cron that cannot be read."""
    pol = spec.Policy
    horizon = now - pol.threshold
    # counted apart: a long gap's first MAX_COUNTED instants must not hide the timely ones
    late, complete = plan.instants_between(spec, since, horizon, MAX_COUNTED)
    timely, all_timely = plan.instants_between(spec, max(since, horizon), now, MAX_COUNTED)
    complete = complete and all_timely
    fire = timely
    if late and pol.MisfirePolicy == "once":
        newest = late[-1] if complete else (newest_instants(spec, since, horizon, 1) or late)[-1]
        fire, late = [newest, *timely], [at for at in late if at != newest]
    elif late and pol.MisfirePolicy == "all":
        fire = (late + timely if complete else newest_instants(spec, since, now, MAX_CATCH_UP))[-MAX_CATCH_UP:]
        late = [at for at in late if at < fire[0]]
    if len(fire) > MAX_CATCH_UP:
        late, fire = late + fire[:-MAX_CATCH_UP], fire[-MAX_CATCH_UP:]
    return MisfirePlan(fire, late, complete)


def newest_instants(spec: TaskSpec, since: datetime, until: datetime, n: int) -> list[datetime]:
    """The task's last ``n`` instants in (``since``, ``until``]. Quartz has no "previous fire
    time", so windows back from ``until`` are searched, nearest first (a long gap's first
    instants are what ``plan.instants_between`` counts, not its last)."""
    found: list[datetime] = []
    for window in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), timedelta(days=31)):
        start = max(since, until - window)
        found, _ = plan.instants_between(spec, start, until, MAX_COUNTED)
        if len(found) >= n or start == since:
            break
    return found[-n:]
