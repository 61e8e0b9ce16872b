"""Flow runs that are already over (or stand for a task's next fire time), written into
Prefect's tables a batch at a time.

Why by hand: Prefect has no bulk path for finished runs. ``models.flow_runs.create_flow_run``
with a state reads the deployment (for the labels), inserts the run, reads it back with its
work queue and pool, locks it, passes the state through orchestration, reads the flow, the
deployment and the work queue again for the state-change event, and writes the state: about
ten round trips per run, several times slower than nodes fire under load (bench/record.py
measures both ways; the README has the figures). A run created directly in a terminal state goes through none of Prefect's
orchestration *rules* (``force``), only its bookkeeping transforms (the run's state type,
name and timestamp; its end time), so this module writes the same
columns in a few statements per batch: the runs, their states, the runs' state ids, and the
same ``prefect.flow-run.<State>`` events Prefect's InstrumentFlowRunStateTransitions emits
(built by Prefect's own ``flow_run_state_change_event``; only the lookups it does per run are
done here once per deployment). tests/master/test_bulk_runs.py checks the rows and the event against
what ``create_flow_run`` writes for the same input, so a Prefect upgrade that changes either
shows up there (the project pins prefect==3.8.8).
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from uuid import UUID

from schedulemaster.deployments import run_counts
from schedulemaster.sqlite_rows import insert_rows

log = logging.getLogger("schedulemaster.record")

# On SQLite each write of a batch is one statement: schedulemaster/sqlite_rows.py says why.

#: what create_flow_run leaves out of the run's row (computed fields; the state is its own row)
_NOT_COLUMNS = {"created", "state", "estimated_run_time", "estimated_start_time_delta"}


async def insert_runs(session, runs: list, labels: dict[UUID, dict]) -> list:
    """Insert `runs` (``schemas.core.FlowRun`` with a terminal ``state``, or a Scheduled one
    whose expected and next start times are set, and an idempotency key) in the open
    transaction of `session`; `labels` maps a deployment id to its labels. Completed runs are
    counted for their tasks: a caller writing them awaits ``run_counts.ensure()`` before its
    transaction.
    Returns the runs inserted: one whose (flow, idempotency key) already has a run is skipped,
    as Prefect's create_flow_run does."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.types._datetime import now

    if not runs:
        return []
    db = provide_database_interface()
    created = now("UTC")
    rows = []
    for run in runs:
        state = run.state
        row = run.model_dump_for_orm(exclude=_NOT_COLUMNS, exclude_unset=True)
        # models.deployments.with_system_labels_for_deployment_flow_run
        row["labels"] = (labels.get(run.deployment_id) or {}) | {
            "prefect.flow.id": str(run.flow_id), "prefect.deployment.id": str(run.deployment_id),
        } | (run.labels or {})
        # GlobalFlowPolicy's transforms for a run entering its state (a terminal one: its end)
        row.update(id=run.id, created=created, state_type=state.type, state_name=state.name,
                   state_timestamp=state.timestamp, end_time=state.timestamp if state.is_final() else None)
        rows.append(row)
    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite:
        # one statement, no RETURNING (schedulemaster/sqlite_rows.py): the runs already there are
        # found first, which is exact because the caller holds SQLite's write lock
        there = set((await session.execute(sa.select(db.FlowRun.flow_id, db.FlowRun.idempotency_key).where(
            db.FlowRun.flow_id.in_({run.flow_id for run in runs}),
            db.FlowRun.idempotency_key.in_([run.idempotency_key for run in runs])))).tuples())
        new = [(run, row) for run, row in zip(runs, rows) if (run.flow_id, run.idempotency_key) not in there]
        done = [run for run, _ in new]
        await insert_rows(session, db.FlowRun.__table__, [row for _, row in new])
    else:
        insert = db.queries.insert(db.FlowRun).on_conflict_do_nothing(
            index_elements=db.orm.flow_run_unique_upsert_columns).returning(db.FlowRun.id)
        inserted = set((await session.execute(insert, rows)).scalars())
        done = [run for run in runs if run.id in inserted]
    if not done:
        return []
    # each task's successful runs and its last one (deployments/run_counts.py; the caller ensured the table)
    await run_counts.add(session, run_counts.tally(done))
    states = []
    for run in done:
        # what orchestration stamps on a flow run's state (and a subflow's: its parent task run)
        run.state.state_details.flow_run_id = run.id
        run.state.state_details.task_run_id = run.parent_task_run_id
        payload = run.state.model_dump_for_orm()
        payload.pop("data", None)  # finished firings carry no result
        states.append({**payload, "flow_run_id": run.id})
    table = db.FlowRun.__table__
    if sqlite:
        await insert_rows(session, db.FlowRunState.__table__, states)
        await session.execute(sa.update(table).where(table.c.id.in_([run.id for run in done])).values(
            # typed binds: a bare uuid.UUID would be bound as SQLAlchemy's own Uuid (hex
            # without dashes), not as Prefect's UUID column type
            state_id=sa.case(*[(table.c.id == run.id, sa.literal(run.state.id, table.c.state_id.type))
                               for run in done]),
            updated=created))
        return done
    await session.execute(sa.insert(db.FlowRunState), states)
    # `updated` given, so SQLAlchemy applies no onupdate default: Prefect's SQLite now()
    # expression cannot go into an executemany
    await session.execute(sa.update(db.FlowRun), [
        {"id": run.id, "state_id": run.state.id, "updated": created} for run in done])
    return done


async def insert_logs(session, logs: list[dict]) -> None:
    """Insert log lines (dicts of name, level, message, timestamp, flow_run_id) as Prefect's
    ``models.logs.create_logs`` does, without its three pydantic models per line."""
    import uuid

    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.logs import messaging
    from prefect.settings.context import get_current_settings
    from prefect.types._datetime import now

    if not logs:
        return
    db = provide_database_interface()
    created = now("UTC")
    rows = [{**line, "id": uuid.uuid4(), "created": created, "updated": created, "task_run_id": None,
             # what create_logs strips (PostgreSQL refuses a NUL in text)
             "name": line["name"].replace("\x00", ""), "message": line["message"].replace("\x00", "")}
            for line in logs]
    if session.get_bind().dialect.name == "sqlite":  # schedulemaster/sqlite_rows.py
        await insert_rows(session, db.Log.__table__, rows)
    else:
        await session.execute(sa.insert(db.Log.__table__), rows)
    if get_current_settings().server.logs.stream_publishing_enabled:  # off unless configured
        from prefect.server.schemas.core import Log

        await messaging.publish_logs([Log(**row) for row in rows])


async def state_change_events(session, runs: list) -> list:
    """The ``prefect.flow-run.<State>`` event of each inserted run, as Prefect builds it, with the
    flow, deployment, work queue and pool read once per deployment instead of once per run."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.models import events as prefect_events

    db = provide_database_interface()
    rows = await session.execute(
        sa.select(db.Deployment.id, db.Deployment.name, db.Deployment.tags,
                  db.Flow.id.label("flow_id"), db.Flow.name.label("flow_name"), db.Flow.tags.label("flow_tags"),
                  db.WorkQueue.id.label("queue_id"), db.WorkQueue.name.label("queue_name"),
                  db.WorkPool.id.label("pool_id"), db.WorkPool.name.label("pool_name"),
                  db.WorkPool.type.label("pool_type"))
        .join(db.Flow, db.Flow.id == db.Deployment.flow_id)
        .outerjoin(db.WorkQueue, db.WorkQueue.id == db.Deployment.work_queue_id)
        .outerjoin(db.WorkPool, db.WorkPool.id == db.WorkQueue.work_pool_id)
        .where(db.Deployment.id.in_({run.deployment_id for run in runs})))
    parts = {}
    for r in rows:
        queue = SimpleNamespace(id=r.queue_id, name=r.queue_name) if r.queue_id else None
        pool = SimpleNamespace(id=r.pool_id, name=r.pool_name, type=r.pool_type) if r.pool_id else None
        parts[r.id] = (SimpleNamespace(id=r.flow_id, name=r.flow_name, tags=r.flow_tags),
                       SimpleNamespace(id=r.id, name=r.name, tags=r.tags), queue, pool)
    parent_ids = {run.parent_task_run_id for run in runs if run.parent_task_run_id}
    parents = {}
    if parent_ids:  # a Next's run hangs under a task run of its parent's run
        parents = {r.id: r for r in await session.execute(
            sa.select(db.TaskRun.id, db.TaskRun.name, db.TaskRun.tags).where(db.TaskRun.id.in_(parent_ids)))}
    events = []
    for run in runs:
        if run.deployment_id not in parts:
            continue
        # Prefect's event builder looks these up per run unless its cache has them
        prefect_events._flow_run_resource_data_cache[run.id] = prefect_events._as_resource_data(
            run, *parts[run.deployment_id], parents.get(run.parent_task_run_id))
        events.append(await prefect_events.flow_run_state_change_event(
            session=session, occurred=run.state.timestamp, flow_run=run, initial_state_id=None,
            initial_state=None, validated_state_id=run.state.id, validated_state=run.state))
    return events


#: Prefect's in-memory messaging drops a message for a consumer already this far behind
#: (``Subscription``: a queue of 10,000, not configurable); see ``_room_for``
CONSUMER_QUEUE = 10_000
ROOM_WAIT_SECONDS = 30.0


async def _room_for(count: int) -> None:
    """Wait until every consumer of Prefect's events topic has room for ``count`` more.

    With the embedded (in-memory) messaging a consumer that falls 10,000 events behind loses
    the next ones with a warning each: seen at 10,000 tasks (167 firings/s with an event each,
    the master's CPU saturated), 157,237 warnings in a few minutes. Waiting here slows the
    recording, whose firings wait safely on the nodes, instead. Bounded: after
    ROOM_WAIT_SECONDS it publishes anyway. Other brokers (Redis) have their own limits."""
    from prefect.server.utilities.messaging import memory

    topic = memory.Topic._topics.get("events")
    if topic is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ROOM_WAIT_SECONDS
    while (behind := max((sub._queue.qsize() for sub in topic._subscriptions), default=0)) + count \
            > CONSUMER_QUEUE * 0.8:
        if loop.time() > deadline:
            log.warning("Prefect's event consumers are %d events behind after %.0f s; publishing %d more",
                        behind, ROOM_WAIT_SECONDS, count)
            return
        await asyncio.sleep(0.2)


async def emit(events: list) -> None:
    """Publish events as Prefect's orchestration does (its in-process messaging), once its
    consumers have room for them. The runs are committed by now: a publishing failure is
    logged, it does not fail the recording (the node would only send the same firings again)."""
    from prefect.server.events.clients import PrefectServerEventsClient

    if not events:
        return
    await _room_for(len(events))
    try:
        async with PrefectServerEventsClient() as client:
            for event in events:
                await client.emit(event)
    except Exception as exc:
        log.warning("%d flow-run state events not published: %s", len(events), exc)


__all__ = ["emit", "insert_runs", "insert_logs", "state_change_events"]
