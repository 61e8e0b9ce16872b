"""Each task's successful runs and its last one, kept as counters (deployments/run_counts.py):
filled once from the runs an older version wrote, counted where runs are written over, read in
one indexed query, gone with the task. In-process against Prefect's own schema, on SQLite and
PostgreSQL (the upsert is dialect-specific)."""

from __future__ import annotations

import pytest

from helpers import PREFECT_DB_SCRIPT, run_on_prefect_db

SCRIPT = PREFECT_DB_SCRIPT + r'''
from schedulemaster.deployments import run_counts
from schedulemaster.master import bulk_runs

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def run(dep, flow_id, state, at):
    st = getattr(schemas.states, state)(timestamp=at)
    return schemas.core.FlowRun(flow_id=flow_id, deployment_id=dep, name=f"r-{uuid.uuid4().hex[:6]}", state=st,
                                idempotency_key=str(uuid.uuid4()), expected_start_time=at)


async def main():
    db = await new_db()
    async with db.session_context(begin_transaction=True) as s:
        flow = await models.flows.create_flow(session=s, flow=schemas.core.Flow(name="f"))
        a, b, gone = [(await models.deployments.create_deployment(session=s, deployment=schemas.core.Deployment(
            name=n, flow_id=flow.id))).id for n in ("a", "b", "gone")]
    # runs an older version wrote (no counters yet): two Completed and one Failed of a
    async with db.session_context(begin_transaction=True) as s:
        await bulk_runs.insert_runs(s, [run(a, flow.id, "Failed", T0)], {})  # no Completed: no table needed
        for at in (T0 + timedelta(minutes=1), T0 + timedelta(minutes=5)):
            await models.flow_runs.create_flow_run(session=s, flow_run=run(a, flow.id, "Completed", at))
    repo = TaskRepository()
    stats = await repo.run_stats_of([a, b])
    assert stats == {a: (2, T0 + timedelta(minutes=5))}, stats  # filled from flow_run, once
    await run_counts.ensure()
    # written over by the recording path: counted in its transaction, the latest end kept
    async with db.session_context(begin_transaction=True) as s:
        await bulk_runs.insert_runs(s, [run(a, flow.id, "Completed", T0 + timedelta(minutes=3)),
                                        run(b, flow.id, "Completed", T0), run(b, flow.id, "Completed", T0 + timedelta(hours=1)),
                                        run(b, flow.id, "Cancelled", T0 + timedelta(hours=2)),
                                        run(gone, flow.id, "Completed", T0)], {})
    stats = await repo.run_stats_of([a, b, gone])
    assert stats == {a: (3, T0 + timedelta(minutes=5)), b: (2, T0 + timedelta(hours=1)),
                     gone: (1, T0)}, stats
    # a run already written is not counted again (its idempotency key)
    again = run(b, flow.id, "Completed", T0 + timedelta(hours=3))
    async with db.session_context(begin_transaction=True) as s:
        assert len(await bulk_runs.insert_runs(s, [again], {})) == 1
    async with db.session_context(begin_transaction=True) as s:
        assert await bulk_runs.insert_runs(s, [again], {}) == []
    assert (await repo.run_stats_of([b]))[b] == (3, T0 + timedelta(hours=3))
    # a task deleted: its counters go
    await repo.delete(gone, [])
    assert await repo.run_stats_of([gone]) == {}
    print("ok")


asyncio.run(main())
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_run_counts(dialect, tmp_path):
    run_on_prefect_db(SCRIPT, dialect, tmp_path, "sm_counts")


def test_only_an_accepted_completed_state_counts():
    from schedulemaster.master.completed_runs import accepted_completed

    assert accepted_completed('{"status": "ACCEPT", "state": {"type": "COMPLETED"}}')
    for text in ('{"status": "REJECT", "state": {"type": "COMPLETED"}}', '{"status": "ACCEPT", "state": '
                 '{"type": "RUNNING"}}', '{"status": "ACCEPT"}', "[]", "{not json", "", None,
                 '{"status": "ACCEPT", "state": "COMPLETED"}'):
        assert not accepted_completed(text), text
