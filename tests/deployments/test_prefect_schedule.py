"""The inactive Prefect schedule a task's deployment shows: exact, or none at all."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from schedulemaster.deployments.prefect_schedule import croniter_expression, display_schedule
from schedulemaster.deployments.spec import TaskSpec

NOW = datetime(2026, 6, 1, 3, 4, 5, tzinfo=timezone.utc)


def spec(**fields) -> TaskSpec:
    return TaskSpec(Id="t", Title="t", MetaType=2, Http={"RequestUrl": "http://127.0.0.1:9/"}, **fields)


@pytest.mark.parametrize("quartz, prefect", [
    ("0/2 * * * * ?", "* * * * * 0/2"),          # seconds move to the end
    ("33 0/8 * * * ?", "0/8 * * * * 33"),        # the silent misreading docs/prefect-facts.md warns of
    ("0 15 10 ? * MON-FRI", "15 10 * * 1,2,3,4,5 0"),
    ("0 0 12 ? * 2,4,6", "0 12 * * 1,3,5 0"),    # Quartz 1 = Sunday, croniter 0 = Sunday
    ("0 0 12 ? * 1/2", "0 12 * * 0,2,4,6 0"),
    ("0 15 10 L * ?", "15 10 L * * 0"),
    ("0 0 2 * * ? *", "0 2 * * * 0"),
])
def test_conversion_to_croniter_order(quartz, prefect):
    assert croniter_expression(quartz) == prefect
    shown = display_schedule(spec(RunLoop=True, CronExpression=quartz, TimeZone="Asia/Shanghai"), NOW)
    assert shown is not None and shown.active is False and shown.slug == f"quartz {quartz}"
    assert shown.schedule.cron == prefect and shown.schedule.timezone == "Asia/Shanghai"


@pytest.mark.parametrize("quartz", [
    "0 15 10 15W * ?", "0 15 10 LW * ?", "0 15 10 L-3 * ?",   # no W or offsets in croniter
    "0 15 10 ? * 6L", "0 15 10 ? * 6#3",                       # nor last / nth weekday
    "0 0 2 * * ? 2027",                                        # nor a year
    "not a cron", "",
])
def test_no_schedule_where_the_dialects_differ(quartz):
    assert display_schedule(spec(RunLoop=True, CronExpression=quartz, TimeZone="UTC"), NOW) is None


def test_the_self_check_refuses_a_conversion_that_fires_differently():
    # 02:30 does not exist on 2026-03-08 in New York: Quartz fires at 03:30, Prefect's
    # croniter does not; the two evaluators disagree, so the deployment shows nothing.
    ny = spec(RunLoop=True, CronExpression="0 30 2 * * ?", TimeZone="America/New_York")
    assert croniter_expression(ny.CronExpression) == "30 2 * * * 0"
    assert display_schedule(ny, datetime(2026, 3, 1, tzinfo=timezone.utc)) is None
    assert display_schedule(ny, datetime(2026, 6, 1, tzinfo=timezone.utc)) is not None


def test_one_shot_tasks_have_no_schedule():
    assert display_schedule(spec(RunLoop=False, CronExpression="0/2 * * * * ?",
                                 StartDate="2026-07-01 00:00:00", TimeZone="UTC"), NOW) is None
