"""Prefect's services that look at every deployment every few seconds read through an index,
so an idle system with 10,000 stopped tasks does not pay for each of them (issue 22), and
they still pick the same deployments. In a fresh process against a new Prefect database, both
databases; the query plans are SQLite's (PostgreSQL plans a table this small by its size)."""

from __future__ import annotations

import pytest

from helpers import PREFECT_DB_SCRIPT, run_on_prefect_db

SCRIPT = PREFECT_DB_SCRIPT + r'''
from prefect.server.services import foreman, scheduler
from schedulemaster.deployments.tasks import ENTRYPOINT
from schedulemaster.master import prefect_indexes

statements = []


def capture(conn, cursor, statement, parameters, context, executemany):
    statements.append((statement, parameters))


async def deployment(s, db, flow_id, name, entrypoint, updated, polled=None):
    d = await models.deployments.create_deployment(session=s, deployment=schemas.core.Deployment(
        name=name, flow_id=flow_id, entrypoint=entrypoint, paused=False,
        schedules=[schemas.core.DeploymentSchedule(
            schedule=schemas.schedules.IntervalSchedule(interval=timedelta(hours=1)), active=True)]))
    await s.execute(sa.update(db.Deployment).where(db.Deployment.id == d.id).values(
        updated=updated, last_polled=polled, status="READY"))
    return d.id


async def plan(db, select_words: str) -> str:
    """SQLite's plan of the last statement captured that starts with ``select_words``."""
    statement, params = next(sp for sp in reversed(statements) if sp[0].lstrip().startswith(select_words))
    async with db.session_context() as s:
        conn = await s.connection()
        rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        return " | ".join(str(r[-1]) for r in rows)


async def main():
    db = await new_db()
    sqlite = db.dialect.name == "sqlite"
    sa.event.listen((await db.engine()).sync_engine, "before_cursor_execute", capture)
    now = datetime.now(timezone.utc)
    async with db.session_context(begin_transaction=True) as s:
        flow = await models.flows.create_flow(session=s, flow=schemas.core.Flow(name="plain"))
        recent = await deployment(s, db, flow.id, "recent", "flows/x.py:f", now)
        await deployment(s, db, flow.id, "old", "flows/x.py:f", now - timedelta(hours=1))
        await deployment(s, db, flow.id, "task", ENTRYPOINT, now)
        stale = await deployment(s, db, flow.id, "polled long ago", "flows/x.py:f", now - timedelta(hours=1),
                                 polled=now - timedelta(hours=1))
        fresh = await deployment(s, db, flow.id, "polled now", "flows/x.py:f", now - timedelta(hours=1), polled=now)

    # the scheduler's look at recently updated deployments: the same answer, through the index
    async with db.session_context() as s:
        picked = set((await s.execute(scheduler._get_select_recent_deployments_to_schedule_query(db, 100, 5))).scalars())
    assert picked == {recent}, picked
    if sqlite:
        recent_plan = await plan(db, "SELECT deployment.id")
        assert "ix_deployment__updated" in recent_plan and "SCAN deployment" not in recent_plan, recent_plan

    # the foreman's look at deployments not polled lately: the same answer, through our index
    await prefect_indexes.ensure()
    await prefect_indexes.ensure()  # again at the next start: nothing to do, no error
    await foreman._mark_deployments_as_not_ready(db=db, deployment_last_polled_timeout_seconds=60)
    if sqlite:
        foreman_plan = await plan(db, "SELECT deployment.id")
        assert "ix_sm_deployment__last_polled" in foreman_plan and "SCAN deployment" not in foreman_plan, foreman_plan
    async with db.session_context() as s:
        status = dict((await s.execute(sa.select(db.Deployment.id, db.Deployment.status))).all())
    assert str(status.pop(stale)).endswith("NOT_READY") and str(status.pop(fresh)).endswith("READY"), status
    assert all(not str(v).endswith("NOT_READY") for v in status.values()), status  # never polled: unchanged
    async with db.session_context() as s:
        if sqlite:
            names = (await s.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index'"))).scalars()
        else:
            names = (await s.execute(sa.text("SELECT indexname FROM pg_indexes"))).scalars()
        assert "ix_sm_deployment__last_polled" in set(names)
    print("ok")


asyncio.run(main())
'''


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_prefects_deployment_scans_read_through_an_index_and_pick_the_same(dialect, tmp_path):
    run_on_prefect_db(SCRIPT, dialect, tmp_path, "sm_scans")
