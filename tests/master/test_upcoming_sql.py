"""The stand-ins' writes (schedulemaster/master/upcoming.py) on both databases Prefect runs on:
a stand-in is moved in place while Scheduled, and one Prefect marked Late (its master was too
busy to move it in time) is written anew, where moving it once failed every later write. In
process against Prefect's own schema, no live system."""

from __future__ import annotations

import pytest

from helpers import run_on_prefect_db

SCRIPT = r'''
import asyncio, os, sys, tempfile, uuid
from datetime import datetime, timedelta, timezone
os.environ["PREFECT_HOME"] = tempfile.mkdtemp()
os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = sys.argv[1]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
from schedulemaster import prefect_patches
prefect_patches.apply()
import sqlalchemy as sa
from prefect.server import models, schemas
from prefect.server.database import provide_database_interface
from prefect.server.schemas.states import Late
from prefect.utilities.callables import parameter_schema
from schedulemaster.deployments.spec import spec_of
from schedulemaster.deployments.tasks import Status, TaskRepository, upcoming_run_id
from schedulemaster.flows.task_flow import run_task
from schedulemaster.master.upcoming import Upcoming


async def main():
    db = provide_database_interface()
    await db.create_db()
    async with db.session_context(begin_transaction=True) as s:
        await models.workers.create_work_pool(session=s, work_pool=schemas.actions.WorkPoolCreate(
            name="schedulemaster", type="schedulemaster-node"))
    repo = TaskRepository()
    a = uuid.uuid4()
    await repo.create(a, spec_of({"Id": str(a), "Title": "every minute", "MetaType": 2, "RunLoop": True,
                                  "CronExpression": "0 * * * * ?", "TimeZone": "UTC",
                                  "Http": {"RequestUrl": "http://127.0.0.1:9/x", "Method": "POST"}}),
                      "schedulemaster", parameter_schema(run_task).model_dump_for_openapi(), Status.Running)
    up = Upcoming(repo)
    shown = (await up._running([a]))[a]
    rid = upcoming_run_id(a)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=1)

    async def show(at):
        shown.at = at
        await up._write([shown], [])
        async with db.session_context() as s:
            run = (await s.execute(sa.select(db.FlowRun).where(db.FlowRun.id == rid))).scalar_one()
            states = (await s.execute(sa.select(sa.func.count()).select_from(db.FlowRunState)
                                      .where(db.FlowRunState.flow_run_id == rid))).scalar_one()
        return run.expected_start_time, run.state_name, states

    assert await show(t0) == (t0, "Scheduled", 1)
    assert await show(t0 + timedelta(minutes=1)) == (t0 + timedelta(minutes=1), "Scheduled", 1)
    # Prefect's MarkLateRuns: a second state row, still of type SCHEDULED
    async with db.session_context(begin_transaction=True) as s:
        await models.flow_runs.set_flow_run_state(session=s, flow_run_id=rid, state=Late(), force=True)
    async with db.session_context() as s:
        assert (await s.execute(sa.select(db.FlowRun.state_name).where(db.FlowRun.id == rid))).scalar_one() == "Late"
    assert await show(t0 + timedelta(minutes=2)) == (t0 + timedelta(minutes=2), "Scheduled", 1)
    assert await show(t0 + timedelta(minutes=3)) == (t0 + timedelta(minutes=3), "Scheduled", 1)
    print("ok")


asyncio.run(main())
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_stand_in_marked_late_is_written_anew(dialect, tmp_path):
    run_on_prefect_db(SCRIPT, dialect, tmp_path, "sm_upcoming")
