"""The master's endpoint that writes executor nodes' firings into Prefect as flow runs.

Why not Prefect's own ``POST /deployments/{id}/create_flow_run/bulk``: on SQLite it opens a
DEFERRED transaction that reads the deployment first and writes afterwards, so whenever
another writer commits in between, SQLite refuses the upgrade (SQLITE_BUSY_SNAPSHOT, no
retry) and every run of the batch comes back "database is locked". Under 20 firings/s that
refused most batches and the node's backlog grew without bound. Here one batch is one
IMMEDIATE transaction (the write lock first, then the reads), through the same
``prefect.server.models`` functions the API uses, so nothing is refused and every run still
goes through Prefect's orchestration (state rows, events, the UI).

A run gets the firing's real times: ``expected_start_time`` = the scheduled instant,
``start_time`` = when the request left, the terminal state stamped when it ended; the
run's idempotency key is the firing id, so recording a firing twice leaves one run.
"""

from __future__ import annotations

import base64
import hmac
from datetime import datetime, timedelta
from uuid import UUID

from fastapi import APIRouter, Body, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

MAX_BATCH = 1000
MAX_LOGS_PER_FIRING = 50


class FiringLog(BaseModel):
    level: int = Field(ge=0, le=100)
    message: str = Field(max_length=20_000)
    timestamp: datetime


class FiringRecord(BaseModel):
    task_id: UUID
    firing_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    scheduled: datetime
    started: datetime
    finished: datetime
    ok: bool
    message: str = Field(default="", max_length=2000)
    fire: dict = Field(default_factory=dict)
    logs: list[FiringLog] = Field(default_factory=list, max_length=MAX_LOGS_PER_FIRING)


class RecordResult(BaseModel):
    recorded: int
    unknown_tasks: list[UUID]


async def record_firings(records: list[FiringRecord]) -> RecordResult:
    """Write the firings as flow runs of their tasks' deployments, in one transaction."""
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    recorded, unknown = 0, set()
    async with db.session_context(begin_transaction=True, with_for_update=True) as session:
        deployments = {}
        for task_id in {r.task_id for r in records}:
            deployments[task_id] = await models.deployments.read_deployment(
                session=session, deployment_id=task_id)
        logs = []
        for r in records:
            dep = deployments.get(r.task_id)
            if dep is None:
                unknown.add(r.task_id)
                continue
            final = (schemas.states.Completed if r.ok else schemas.states.Failed)(
                message=r.message, timestamp=r.finished)
            run = await models.flow_runs.create_flow_run(session, schemas.core.FlowRun(
                name=r.name, flow_id=dep.flow_id, deployment_id=dep.id,
                deployment_version=dep.version, parameters={"fire": r.fire},
                tags=list(dep.tags or []), idempotency_key=r.firing_id,
                work_queue_name=dep.work_queue_name, work_queue_id=dep.work_queue_id,
                expected_start_time=r.scheduled, next_scheduled_start_time=r.scheduled,
                start_time=r.started,
                total_run_time=max(r.finished - r.started, timedelta(0)),
                state=final))
            recorded += 1
            logs += [schemas.actions.LogCreate(
                name="schedulemaster.node", level=entry.level, message=entry.message,
                timestamp=entry.timestamp, flow_run_id=run.id) for entry in r.logs]
        if logs:
            await models.logs.create_logs(session, logs)
    return RecordResult(recorded=recorded, unknown_tasks=sorted(unknown))


def create_record_app(auth_string: str | None = None) -> FastAPI:
    """Mounted at ``/api/schedulemaster`` on the master's Prefect server (same port, same auth)."""
    app = FastAPI(title="ScheduleMaster recording", openapi_url=None, docs_url=None, redoc_url=None)
    router = APIRouter()

    @router.post("/firings")
    async def post_firings(request: Request,
                           records: list[FiringRecord] = Body(..., max_length=MAX_BATCH)) -> RecordResult:
        if auth_string and not _authorized(request, auth_string):
            raise HTTPException(401, "Unauthorized")
        return await record_firings(records)

    app.include_router(router)
    return app


def _authorized(request: Request, auth_string: str) -> bool:
    """The same HTTP basic check Prefect's server applies when PREFECT_SERVER_API_AUTH_STRING is set."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:]).decode()
    except ValueError:
        return False
    return hmac.compare_digest(given.encode(), auth_string.encode())


__all__ = ["FiringRecord", "RecordResult", "create_record_app", "record_firings"]
