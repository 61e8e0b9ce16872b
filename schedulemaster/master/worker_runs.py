"""A task's run for a node's worker (RunOnce), written by the master in its own process.

Through Prefect's API (``create_flow_run_from_deployment`` to itself, after reading the live
nodes, the disabled list and the nodes' priorities to pick the owner's queue) a RunOnce spent
about 140 ms before its run existed. Here the run goes into the task's own work queue, where
only the node that owns the task takes it (schedulemaster/node/worker.py, as for a run started
from the UI: every node decides ownership from its own view, no reads needed), written with
the rows and the state-change event Prefect's ``create_flow_run`` writes (master/bulk_runs.py),
and the nodes are told at once (master/new_runs.py).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from schedulemaster.master import bulk_runs
from schedulemaster.master.new_runs import NewRuns
from schedulemaster.timeutil import utcnow


class WorkerRuns:
    def __init__(self, new_runs: NewRuns | None = None):
        self.new_runs = new_runs

    async def create(self, task_id: uuid.UUID, *, name: str, tags: list[str], parameters: dict[str, Any]) -> uuid.UUID:
        """A Scheduled run of the task, due now, in its deployment's queue; its id. Raises
        LookupError when the task is gone."""
        import sqlalchemy as sa
        from prefect.server import schemas
        from prefect.server.database import provide_database_interface

        db = provide_database_interface()
        D = db.Deployment
        now = utcnow()
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            dep = (await session.execute(sa.select(
                D.flow_id, D.version, D.tags, D.labels, D.work_queue_name, D.work_queue_id,
                D.job_variables, db.WorkPool.name.label("pool")).select_from(D)
                .outerjoin(db.WorkQueue, db.WorkQueue.id == D.work_queue_id)
                .outerjoin(db.WorkPool, db.WorkPool.id == db.WorkQueue.work_pool_id).where(D.id == task_id))).first()
            if dep is None:
                raise LookupError(f"task {task_id} not found")
            run = schemas.core.FlowRun(
                name=name, flow_id=dep.flow_id, deployment_id=task_id, deployment_version=dep.version,
                parameters=parameters, tags=[*(dep.tags or []), *tags], auto_scheduled=False,
                work_queue_name=dep.work_queue_name, work_queue_id=dep.work_queue_id,
                job_variables=dep.job_variables or {}, expected_start_time=now, next_scheduled_start_time=now,
                state=schemas.states.Scheduled(scheduled_time=now))
            inserted = await bulk_runs.insert_runs(session, [run], {task_id: dep.labels or {}})
            events = await bulk_runs.state_change_events(session, inserted)
        await bulk_runs.emit(events)  # after the commit, as record_api does
        if self.new_runs is not None:  # the run handed to the woken nodes as the API would answer it
            self.new_runs.created(json.dumps({**run.model_dump(mode="json"), "work_pool_name": dep.pool})
                                  if inserted else None)
        return run.id


__all__ = ["WorkerRuns"]
