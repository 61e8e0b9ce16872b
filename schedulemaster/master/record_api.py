"""The master's endpoint that writes executor nodes' firings into Prefect as flow runs.

Why not Prefect's own ``POST /deployments/{id}/create_flow_run/bulk``: on SQLite it opens a
DEFERRED transaction that reads the deployment first and writes afterwards, so whenever
another writer commits in between, SQLite refuses the upgrade (SQLITE_BUSY_SNAPSHOT, no
retry) and every run of the batch comes back "database is locked". Under 20 firings/s that
refused most batches and the node's backlog grew without bound. Here one batch is one
IMMEDIATE transaction (the write lock first, then the reads), so nothing is refused. The
runs of a transaction are written together (schedulemaster/master/bulk_runs.py: the same rows, state
rows and state-change events Prefect's ``create_flow_run`` writes, in a few statements
instead of ~10 round trips per run, and the log lines in one statement).

A run gets the firing's real times: ``expected_start_time`` = the scheduled instant,
``start_time`` = when the request left, the terminal state stamped when it ended; the
run's idempotency key is the firing id, so recording a firing twice leaves one run.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Callable

from fastapi import APIRouter, Body, FastAPI, HTTPException, Request, Response

from schedulemaster.coordination.wire import (MAX_RECORDS, ChangesRequest, ChangeToken, FiringRecord, KnownTask,
                                              RecordResult, RunFailure, TaskColumns, TasksPage, TasksRequest,
                                              TaskTrouble, TaskVersion, TaskVersions, VersionsRequest, WorkToken,
                                              tasks_page_json)
from schedulemaster.deployments import run_counts
from schedulemaster.deployments.spec import TaskSpec, spec_or_none
from schedulemaster.deployments.tasks import HTTP_TAG, NODE_TAG, TaskRepository
from schedulemaster.master import bulk_runs
from schedulemaster.master.coordination_api import node_caller
from schedulemaster.master.firing_alarms import FiringAlarms
from schedulemaster.master.new_runs import NewRuns
from schedulemaster.master.task_trouble import Troubles
from schedulemaster.master.task_changes import TaskChanges
from schedulemaster.store import claims
from schedulemaster.timeutil import utcnow

TRANSACTION_SIZE = 50  # firings per IMMEDIATE transaction (see record_firings)


#: called for each firing whose task's alarm policy says to tell (firing_alarms.py) with (task
#: spec, when, message, detail, run id); the master's keeper mailer. It must not block: it only queues.
OnFailure = Callable[[TaskSpec, datetime, str, str, str], None]
#: called with the firings a call wrote (the master's metrics); must not block
OnRecorded = Callable[[list[FiringRecord]], None]


async def record_firings(records: list[FiringRecord], on_failure: OnFailure | None = None,
                         run_events: str = "all", on_recorded: OnRecorded | None = None,
                         alarms: FiringAlarms | None = None) -> RecordResult:
    """Write the firings as flow runs of their tasks' deployments, TRANSACTION_SIZE per transaction.

    SQLite has one write lock, and Prefect's own services (marking deployments ready,
    worker health) give up after waiting 60 s for it: a transaction must hold it briefly.
    Written in bulk (bulk_runs.py) a firing costs a few milliseconds, so TRANSACTION_SIZE
    firings hold the lock a fraction of a second and every other writer gets in between.
    ``run_events``: "all" publishes each run's state-change event, "failed" only failed runs'.
    ``on_recorded``: told the firings written (not those already there), once committed.
    """
    recorded, unknown = 0, []
    for i in range(0, len(records), TRANSACTION_SIZE):
        part = await _record_transaction(records[i:i + TRANSACTION_SIZE], on_failure, run_events, on_recorded,
                                         alarms)
        recorded += part.recorded
        unknown += part.unknown_tasks
    return RecordResult(recorded=recorded, unknown_tasks=sorted(set(unknown)))


def run_tags(r: FiringRecord) -> list[str]:
    """The firing's own tags beside its task's: its node, and an answer outside 2xx."""
    tags = []
    if node := str(r.fire.get("node") or "")[:100]:
        tags.append(NODE_TAG + node)
    code = r.fire.get("status_code")
    if isinstance(code, int) and not 200 <= code < 300:
        tags.append(f"{HTTP_TAG}{code}")
    return tags


#: a firing in one of these states never began: its run has no start time
NEVER_STARTED = ("Skipped", "Missed")


def final_state(r: FiringRecord):
    """The run's final state: Completed, Failed, or Cancelled for a firing that did not run to
    its end (FiringRecord.not_run: the run's name and message say why, and its ``fire``
    parameter). Not a state of its own name: Prefect's UI lists runs by known state names
    ("All except scheduled" is a list of them), and a run in a "Skipped" state was not shown."""
    from prefect.server import schemas

    if r.not_run:  # its message begins with why ("skipped: ...", "missed 3 firing(s) ...")
        return schemas.states.Cancelled(message=run_message(r), timestamp=r.finished)
    return (schemas.states.Completed if r.ok else schemas.states.Failed)(message=run_message(r), timestamp=r.finished)


def run_message(r: FiringRecord) -> str:
    """The run's state message: where and how late it fired, then what the firing said."""
    lateness = r.fire.get("lateness_ms")
    where = [str(r.fire.get("node") or "")[:100],
             f"{lateness / 1000:.2f} s late" if isinstance(lateness, (int, float)) and not r.not_run else "",
             f"attempt {r.attempt}" + ("" if r.last_attempt else ", retried") if r.attempt > 1 or not r.last_attempt else ""]
    return " · ".join([p for p in where if p] + [r.message])[:2000]


async def _record_transaction(records: list[FiringRecord], on_failure: OnFailure | None,
                              run_events: str, on_recorded: OnRecorded | None = None,
                              alarms: FiringAlarms | None = None) -> RecordResult:
    import sqlalchemy as sa
    from prefect.server import schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    recorded, unknown, firings = 0, set(), {}
    await run_counts.ensure()  # before the transaction (its own would wait on this one's lock)
    async with db.session_context(begin_transaction=True, with_for_update=True) as session:
        # Only the columns a run needs, one query per batch: reading each task's whole
        # deployment (models.deployments.read_deployment) parsed its parameters and schema
        # JSON through pydantic and cost more than creating the run.
        rows = await session.execute(sa.select(
            db.Deployment.id, db.Deployment.flow_id, db.Deployment.version, db.Deployment.tags,
            db.Deployment.labels, db.Deployment.work_queue_name, db.Deployment.work_queue_id,
        ).where(db.Deployment.id.in_({r.task_id for r in records})))
        deployments = {row.id: row for row in rows}
        done = await _recorded_firing_ids(session, list(deployments.values()), records)
        todo = []
        for r in records:
            dep = deployments.get(r.task_id)
            if dep is None:
                unknown.add(r.task_id)
                continue
            recorded += 1
            if r.firing_id in done:
                continue  # a retried call whose first attempt committed (or the same firing
            done.add(r.firing_id)  # twice): no second copy of its log lines, no second mail
            todo.append((r, dep))
        labels = {d.id: d.labels for d in deployments.values()}
        inserted = []
        # A Next's run hangs under its parent's run (_link_to_parent), so a parent in this
        # batch is written before its children: one bulk insert per generation.
        while todo:
            waiting = {r.firing_id for r, _ in todo}
            ready = [(r, dep) for r, dep in todo if r.parent_firing_id not in waiting] or todo
            taken = {r.firing_id for r, _ in ready}
            todo = [(r, dep) for r, dep in todo if r.firing_id not in taken]
            runs = []
            for r, dep in ready:
                final = final_state(r)
                link = await _link_to_parent(session, dep, r) if r.parent_firing_id else None
                run = schemas.core.FlowRun(
                    parent_task_run_id=link,
                    name=r.name, flow_id=dep.flow_id, deployment_id=dep.id,
                    deployment_version=dep.version, parameters={"fire": r.fire},
                    tags=[*(dep.tags or []), *run_tags(r)], idempotency_key=r.firing_id,
                    work_queue_name=dep.work_queue_name, work_queue_id=dep.work_queue_id,
                    expected_start_time=r.scheduled, next_scheduled_start_time=r.scheduled,
                    start_time=None if r.not_run in NEVER_STARTED else r.started,
                    total_run_time=timedelta(0) if r.not_run in NEVER_STARTED else max(r.finished - r.started, timedelta(0)),
                    state=final)
                runs.append(run)
                firings[run.id] = r
            inserted += await bulk_runs.insert_runs(session, runs, labels)
        await bulk_runs.insert_logs(session, [
            {"name": "schedulemaster.node", "level": entry.level, "message": entry.message,
             "timestamp": entry.timestamp, "flow_run_id": run.id} for run in inserted for entry in firings[run.id].logs])
        events = await bulk_runs.state_change_events(
            session, inserted if run_events == "all" else [run for run in inserted if not firings[run.id].ok])
        # whether the keepers hear of a firing is its task's alarm policy (firing_alarms.py):
        # only the records that might alarm need the task's spec
        maybe = {run.deployment_id for run in inserted if FiringAlarms.may_alarm(firings[run.id])}
        specs = {}
        if maybe and on_failure is not None:
            specs = {tid: spec_or_none((params or {}).get("task")) for tid, params in (await session.execute(
                sa.select(db.Deployment.id, db.Deployment.parameters).where(db.Deployment.id.in_(maybe)))).all()}
    await bulk_runs.emit(events)  # after the commit: no event for a write that was rolled back
    if on_recorded is not None:
        on_recorded([firings[run.id] for run in inserted])
    if on_failure is not None:
        run_of = {firings[run.id].firing_id: run.id for run in inserted}  # one run per firing id
        for alarm in (alarms or FiringAlarms()).decide([firings[run.id] for run in inserted], specs):
            r = alarm.record
            detail = "\n".join(entry.message for entry in r.logs if entry.level >= 40)
            on_failure(specs[r.task_id], r.finished, alarm.message, detail, str(run_of[r.firing_id]))
    return RecordResult(recorded=recorded, unknown_tasks=sorted(unknown))


async def _recorded_firing_ids(session, deployments, records: list[FiringRecord]) -> set[str]:
    """The firing ids of this batch that already have a run (one query for the batch)."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    flow_ids = {d.flow_id for d in deployments}
    if not flow_ids:
        return set()
    rows = await session.execute(sa.select(db.FlowRun.idempotency_key).where(
        db.FlowRun.flow_id.in_(flow_ids), db.FlowRun.idempotency_key.in_([r.firing_id for r in records])))
    return set(rows.scalars())


async def _link_to_parent(session, dep, r: FiringRecord):
    """A Next's run hangs under its parent's run in the UI: a task run in the parent's flow
    run (named after the child) is the child run's ``parent_task_run_id``, as Prefect links
    a subflow. None when the parent's run is not recorded (then the child stands alone)."""
    import sqlalchemy as sa
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    # the parent's runs are on its own flow (its task id); an older node does not say which
    # task that is, and a parent of an older version may still be on this run's flow
    flows = [f for f in (r.parent_task_id, dep.flow_id) if f is not None]
    parent_run = (await session.execute(sa.select(db.FlowRun.id).where(   # the (flow, key) index
        db.FlowRun.flow_id.in_(flows), db.FlowRun.idempotency_key == r.parent_firing_id).limit(1))).scalar()
    if parent_run is None:
        return None
    task_run = await models.task_runs.create_task_run(session, schemas.core.TaskRun(
        flow_run_id=parent_run, task_key=f"next-{r.task_id}", dynamic_key=r.firing_id,
        name=f"next → {r.name}", start_time=r.scheduled, end_time=r.scheduled,
        state=schemas.states.Completed(message=f"triggered {r.firing_id}", timestamp=r.scheduled)))
    return task_run.id


async def report_failure(failure: RunFailure, on_failure: OnFailure | None) -> bool:
    from prefect.server import models
    from prefect.server.database import provide_database_interface

    async with provide_database_interface().session_context() as session:
        dep = await models.deployments.read_deployment(session=session, deployment_id=failure.task_id)
    if dep is None:
        return False
    spec = spec_or_none((dep.parameters or {}).get("task"))
    if on_failure is not None and spec is not None:
        on_failure(spec, failure.when, failure.message, failure.detail, str(failure.run_id))
    return True


def create_record_app(on_failure: OnFailure | None = None, packages=None, store_engine=None,
                      coordination: APIRouter | None = None, run_events: str = "all",
                      changes: TaskChanges | None = None, on_recorded: OnRecorded | None = None,
                      new_runs: NewRuns | None = None, troubles: Troubles | None = None) -> FastAPI:
    """Mounted at ``/schedulemaster`` inside Prefect's own API app on the master, so Prefect's
    auth middleware (PREFECT_SERVER_API_AUTH_STRING) guards it like every Prefect endpoint:
    nodes record firings and report failures here, fetch plugin packages, and (through
    ``coordination``, schedulemaster/master/coordination_api.py) register and claim firings."""
    app = FastAPI(title="ScheduleMaster recording", openapi_url=None, docs_url=None, redoc_url=None)
    router = APIRouter()
    # One batch of records at a time, whichever node sent it: recording is the master's
    # heaviest work, and nodes' claims (which firings wait for) must get the CPU in between.
    recording = asyncio.Semaphore(1)
    caller = node_caller(store_engine) if store_engine is not None else None
    alarms = FiringAlarms()  # failures in a row, per task, across every node's records
    changes = changes or TaskChanges()

    @router.post("/firings")
    async def post_firings(request: Request,
                           records: list[FiringRecord] = Body(..., max_length=MAX_RECORDS)) -> RecordResult:
        # Only a registered node records firings: a run in Prefect counts as a task's history.
        if caller is not None and await caller(request) is None:
            raise HTTPException(403, "only a registered node records firings (its token is missing or wrong)")
        async with recording:
            result = await record_firings(records, on_failure, run_events, on_recorded, alarms)
        if store_engine is not None:  # a recorded firing's claim is done (schedulemaster/store/claims.py)
            await asyncio.to_thread(claims.finish, store_engine, [r.firing_id for r in records], "recorded")
        return result

    @router.post("/tasks/versions")
    async def task_versions(body: VersionsRequest) -> TaskVersions:
        """What changed in the task book (schedulemaster/node/firing.py keeps it in sync)."""
        as_of = utcnow()
        count, rows, token = await TaskRepository().versions(body.since)
        return TaskVersions(as_of=as_of, count=count, tasks=[TaskVersion(id=i, updated=u) for i, u in rows],
                            token=token)

    @router.post("/tasks/changes")
    async def task_changes(body: ChangesRequest) -> ChangeToken:
        """Answers when the task book changed, or after the wait asked for (task_changes.py)."""
        return ChangeToken(token=await changes.wait(body.token, body.wait))

    @router.post("/work/wait")
    async def work_wait(body: ChangesRequest) -> WorkToken:
        """Answers when a flow run a worker may take was created, or after the wait asked for
        (new_runs.py), with the runs created since: the node takes its own at once."""
        if new_runs is None:
            await asyncio.sleep(body.wait)
            return WorkToken(token="")
        token = await new_runs.wait(body.token, body.wait)
        return WorkToken(token=token, runs=new_runs.runs_since(body.token) if token != body.token else [])

    @router.post("/tasks/trouble")
    async def task_trouble(request: Request, body: TaskTrouble) -> dict:
        """A node says it cannot load a task's plugin, or can again (task_trouble.py)."""
        node = await caller(request) if caller is not None else body.node
        if node is None or node != body.node:
            raise HTTPException(403, "only the node itself says what it cannot load (its token is missing or wrong)")
        if troubles is not None:
            troubles.report(body.task_id, body.node, body.message)
        return {}

    @router.post("/tasks/read", response_model=TasksPage)
    async def read_tasks(body: TasksRequest) -> Response:
        """Task deployments' own columns (the node's sync, the notebook's task list)."""
        repo = TaskRepository()
        before = (body.before.created, body.before.id) if body.before is not None else None
        total, rows = await repo.rows(body.ids, body.offset, body.limit, parameters_text=True, before=before)
        # from a plain dict of each row: read from the Row (as attributes or its mapping), each
        # absent stats field costs a KeyError raised and handled inside SQLAlchemy (py-spy)
        page = [(TaskColumns.model_validate(dict(row._mapping)), row.parameters) for row in rows]
        if body.stats:
            stats = await repo.run_stats_of([columns.id for columns, _text in page])
            for columns, _text in page:
                columns.total_runs, columns.last_run = stats.get(columns.id, (0, None))
        return Response(tasks_page_json(total, page), media_type="application/json")

    @router.post("/failures")
    async def post_failure(failure: RunFailure) -> KnownTask:
        return KnownTask(known_task=await report_failure(failure, on_failure))

    @router.api_route("/plugins/{name}", methods=["GET", "HEAD"])
    async def get_package(name: str):
        from fastapi.responses import FileResponse

        path = packages.path(name) if packages is not None else None
        if path is None:
            raise HTTPException(404, f"no plugin package named {name[:200]!r}")
        return FileResponse(path, filename=path.name, media_type="application/zip")

    app.include_router(router)
    if coordination is not None:
        app.include_router(coordination)
    return app


__all__ = ["create_record_app", "record_firings"]
