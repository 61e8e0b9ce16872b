"""Run by tests/master/test_bulk_runs.py in its own process (Prefect's settings are read once per
process): the same finished firing written by Prefect's ``create_flow_run`` and by the
master's record path (schedulemaster/master/bulk_runs.py), on the database in PREFECT_API_DATABASE_CONNECTION_URL.
Prints one JSON object: both versions of the run's row, its state rows, its event, its logs."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone


async def main() -> dict:
    import sqlalchemy as sa
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface
    from prefect.server.events.clients import PrefectServerEventsClient

    from schedulemaster.coordination import wire
    from schedulemaster.master import record_api

    emitted = []

    async def capture(self, event):
        emitted.append(event)

    PrefectServerEventsClient.emit = capture  # what orchestration and bulk_runs publish

    db = provide_database_interface()
    await db.create_db()
    async with db.session_context(begin_transaction=True) as s:
        flow = await models.flows.create_flow(s, schemas.core.Flow(name="parity-flow", tags=["ft"]))
        pool = await models.workers.create_work_pool(s, schemas.actions.WorkPoolCreate(
            name="parity-pool", type="schedulemaster"))
        dep = await models.deployments.create_deployment(s, schemas.core.Deployment(
            name="parity-task", flow_id=flow.id, tags=["sm:http", "t1"], labels={"team": "ops"}, version="7",
            work_queue_name="default", work_queue_id=pool.default_queue_id, parameters={"task": {
                "Id": "x", "Title": "x", "MetaType": 2, "Http": {"RequestUrl": "http://127.0.0.1:9/"}}}))
    failures = []
    at = datetime(2026, 12, 1, 8, 0, 0, tzinfo=timezone.utc)

    def record(fid: str, ok: bool, parent: str | None = None) -> wire.FiringRecord:
        return wire.FiringRecord(
            task_id=dep.id, firing_id=fid, name=f"run-{fid}", scheduled=at, started=at + timedelta(seconds=1),
            finished=at + timedelta(seconds=3), ok=ok, message="" if ok else "HTTP 500",
            fire={"node": "w1", "firing_id": fid}, parent_firing_id=parent,
            logs=[{"level": 20, "message": "POST /x\x00 (a NUL byte from the receiver)", "timestamp": at + timedelta(seconds=1)},
                  {"level": 40, "message": "HTTP 500", "timestamp": at + timedelta(seconds=3)}])

    out = {}
    await record_api.record_firings([record("parent", True)])
    for case, ok, parent in (("completed", True, None), ("failed", False, None), ("child", True, "parent")):
        ours = record(f"ours-{case}", ok, parent)
        emitted.clear()
        result = await record_api.record_firings(
            [ours, ours], lambda spec, when, msg, detail, run_id: failures.append((spec, msg, detail)))
        ours_events = [e.model_dump(mode="json") for e in emitted]
        # Prefect's own path for the same firing, as the master wrote it before bulk_runs
        ref = record(f"ref-{case}", ok, parent)
        emitted.clear()
        async with db.session_context(begin_transaction=True) as s:
            row = (await s.execute(sa.select(db.Deployment).where(db.Deployment.id == dep.id))).scalar_one()
            link = await record_api._link_to_parent(s, row, ref) if parent else None
            run = await models.flow_runs.create_flow_run(s, schemas.core.FlowRun(
                parent_task_run_id=link, name=ref.name, flow_id=dep.flow_id, deployment_id=dep.id,
                deployment_version=dep.version, parameters={"fire": ref.fire},
                tags=[*dep.tags, *record_api.run_tags(ref)],
                idempotency_key=ref.firing_id, work_queue_name=dep.work_queue_name,
                work_queue_id=dep.work_queue_id, expected_start_time=ref.scheduled,
                next_scheduled_start_time=ref.scheduled, start_time=ref.started,
                total_run_time=ref.finished - ref.started,
                state=(schemas.states.Completed if ok else schemas.states.Failed)(
                    message=record_api.run_message(ref), timestamp=ref.finished)))
            await models.logs.create_logs(s, [schemas.actions.LogCreate(
                name="schedulemaster.node", level=e.level, message=e.message, timestamp=e.timestamp,
                flow_run_id=run.id) for e in ref.logs])
        ref_events = [e.model_dump(mode="json") for e in emitted]
        out[case] = {"recorded": result.recorded, "ours": await snapshot(db, ours.firing_id, ours_events),
                     "prefect": await snapshot(db, ref.firing_id, ref_events)}
    # a parent and its Next in the same call (a node sends them one after the other):
    # the child's run still hangs under a task run of the parent's run
    await record_api.record_firings([record("batch-parent", True), record("batch-child", True, "batch-parent")])
    async with db.session_context() as s:
        child_link = (await s.execute(sa.select(db.FlowRun.parent_task_run_id).where(
            db.FlowRun.idempotency_key == "batch-child"))).scalar_one()
        link_run = child_link and (await s.execute(sa.select(db.TaskRun.flow_run_id).where(
            db.TaskRun.id == child_link))).scalar_one()
        parent_run = (await s.execute(sa.select(db.FlowRun.id).where(
            db.FlowRun.idempotency_key == "batch-parent"))).scalar_one()
    out["same_call_child_linked"] = link_run is not None and link_run == parent_run
    # a batch as nodes send it: many firings per transaction (executemany statements)
    many = [record(f"many-{k}", k % 3 != 0) for k in range(120)]
    out["many"] = {"recorded": (await record_api.record_firings(many)).recorded,
                   "snapshots": [await snapshot(db, r.firing_id, []) for r in many[:3]]}
    # SM_RUN_EVENTS=failed: every firing a run, only the failed ones an event
    emitted.clear()
    quiet = [record(f"quiet-{k}", k != 1) for k in range(3)]
    out["failed_only"] = {"recorded": (await record_api.record_firings(quiet, run_events="failed")).recorded,
                          "runs": sum([(await snapshot(db, r.firing_id, []))["runs"] for r in quiet]),
                          "events": [e.event for e in emitted]}
    out["stand_in"] = await stand_in_both_ways(db, dep)
    out["persisted_events"] = await persisted_events_both_ways(db)
    out["failure_mails"] = [[spec.Title, msg, detail] for spec, msg, detail in failures]
    return out


async def stand_in_both_ways(db, dep) -> dict:
    """A task's stand-in for its next fire time (schedulemaster/master/upcoming.py), written
    and then moved to a later instant by the master, and written at that instant by Prefect's
    create_flow_run: their run and state rows."""
    import uuid

    from prefect.server import models

    from schedulemaster.deployments.spec import spec_of
    from schedulemaster.master.upcoming import Shown, Upcoming, stand_in

    first = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=30)
    task = Shown(dep.id, dep.flow_id, dep.version, dep.labels, spec_of(dep.parameters["task"]), first)
    await Upcoming()._write([task], [])  # written anew
    task.at = at = first + timedelta(minutes=30)
    await Upcoming()._write([task], [])  # moved in place: the same rows as written at `at`
    ref = stand_in(task, at)
    ref = ref.model_copy(update={"id": uuid.uuid4(), "idempotency_key": "ref-upcoming",
                                 "state": ref.state.model_copy(update={"id": uuid.uuid4()})})
    async with db.session_context(begin_transaction=True) as s:
        await models.flow_runs.create_flow_run(s, ref)
    return {"ours": await snapshot(db, stand_in(task, at).idempotency_key, []),
            "prefect": await snapshot(db, "ref-upcoming", [])}


async def persisted_events_both_ways(db) -> list | None:
    """SQLite: the same event stored by Prefect's event writer and by the master's patched one
    (schedulemaster/prefect_patches.py, #5): their rows in events and event_resources."""
    import uuid

    import sqlalchemy as sa
    from prefect.server.events.schemas.events import Event
    from prefect.server.events.storage import database
    from prefect.types._datetime import now

    from schedulemaster import prefect_patches

    if db.dialect.name != "sqlite":
        return None
    original = database._write_sqlite_events
    event = Event(id=uuid.uuid4(), occurred=now("UTC"), event="prefect.flow-run.Completed", payload={"k": [1, 2.0, None]},
                  resource={"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}", "prefect.resource.name": "r"},
                  related=[{"prefect.resource.id": f"prefect.flow.{uuid.uuid4()}", "prefect.resource.role": "flow",
                            "prefect.resource.name": "f"}, {"prefect.resource.id": "prefect.tag.t1",
                                                            "prefect.resource.role": "tag"}])
    copies = [event.model_copy(update={"id": uuid.uuid4()}).receive() for _ in range(2)]
    prefect_patches._sqlite_events_without_compiling()
    try:
        # ours is given the same event again (a redelivery) and stores it once; Prefect's own
        # writer, given a batch of only stored events, inserts an empty row (values([])), so once
        for write, copy, times in zip((original, database._write_sqlite_events), copies, (1, 2)):
            for _ in range(times):
                async with db.session_context(begin_transaction=True) as s:
                    await write(s, [copy])
    finally:
        database._write_sqlite_events = original
    out = []
    async with db.session_context() as s:
        for copy in copies:
            rows = [dict(r) for r in (await s.execute(sa.select(db.Event.__table__).where(
                db.Event.id == copy.id))).mappings()]
            resources = [dict(r) for r in (await s.execute(sa.select(db.EventResource.__table__).where(
                db.EventResource.event_id == copy.id).order_by(db.EventResource.resource_id))).mappings()]
            for row in rows + resources:
                for key in ("id", "event_id", "created", "updated", "recorded", "received"):
                    row.pop(key, None)
            out.append(json.loads(json.dumps({"events": rows, "resources": resources}, default=str)))
    return out


async def snapshot(db, firing_id: str, events: list) -> dict:
    import sqlalchemy as sa

    async with db.session_context() as s:
        runs = (await s.execute(sa.select(db.FlowRun.__table__).where(
            db.FlowRun.idempotency_key == firing_id))).mappings().all()
        run = dict(runs[0])
        states = (await s.execute(sa.select(db.FlowRunState.__table__).where(
            db.FlowRunState.flow_run_id == run["id"]))).mappings().all()
        logs = (await s.execute(sa.select(db.Log.__table__).where(
            db.Log.flow_run_id == run["id"]).order_by(db.Log.timestamp))).mappings().all()
    return json.loads(json.dumps({"runs": len(runs), "run": run, "states": [dict(x) for x in states],
                                  "events": events, "logs": [dict(x) for x in logs]}, default=str))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
