"""The stand-ins' writes (schedulemaster/master/upcoming.py) on both databases Prefect runs on:
a stand-in is moved in place while Scheduled, and one Prefect marked Late (its master was too
busy to move it in time) is written anew, where moving it once failed every later write. In
process against Prefect's own schema, no live system."""

from __future__ import annotations

import pytest

from helpers import PREFECT_DB_SCRIPT, run_on_prefect_db

SCRIPT = PREFECT_DB_SCRIPT + r'''
from prefect.server.schemas.states import Late
from schedulemaster.deployments.tasks import upcoming_run_id
from schedulemaster.master.upcoming import Upcoming


async def main():
    db = await new_db()
    repo = TaskRepository()
    a = uuid.uuid4()
    await repo.create(a, http_spec("every minute"), "schedulemaster", TASK_SCHEMA, Status.Running)
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
