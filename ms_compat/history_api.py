"""Run history as the original's console showed it, read from what Prefect recorded.

* traces (``scheduletraces``): one row per run of a task: node, start, end, elapsed
  seconds, result (0 running, 1 success, 2 failed);
* a trace's log lines (``QueryTraceDetail``): category (1 Info, 2 Warn, 3 Error), time, message;
* the system log (``systemlogs``, its issue #56: filter by task, trace, category and date).

No second copy: the rows are Prefect's flow runs and logs, read in the master process
with one joined query each (Prefect's HTTP log filter cannot filter by deployment).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request

from schedulemaster.deployments.tasks import upcoming_run_id
from schedulemaster.ms_compat import responses as R
from schedulemaster.ms_compat.binding import F, FormValues, page_bounds

TRACES = [F("id", "guid", required=True), F("result", "int"), F("startDate", "date"), F("endDate", "date"),
          F("pageNumber", "int"), F("pageSize", "int")]
TRACE_LOGS = [F("id", "guid", required=True), F("traceId", "guid", required=True)]
SYSTEM_LOGS = [F("taskId", "guid"), F("traceId", "guid"), F("category", "int"), F("startDate", "date"),
               F("endDate", "date"), F("pageNumber", "int"), F("pageSize", "int")]
MAX_PAGE = 1000

#: a trace's Result: 0 going on, 1 succeeded, 2 failed (the original's), 3 did not run to its
#: end: cancelled, or skipped or missed by its task's policy (``State`` says which)
RESULT_STATES = {0: ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"), 1: ("COMPLETED",),
                 2: ("FAILED", "CRASHED"), 3: ("CANCELLED",)}
CATEGORY_LEVELS = {1: (0, 29), 2: (30, 39), 3: (40, 100)}


def category_of(level: int) -> int:
    return 3 if level >= 40 else 2 if level >= 30 else 1


def result_of(state_type: str | None) -> int:
    for result, types in RESULT_STATES.items():
        if state_type in types:
            return result
    return 0


class History:
    def __init__(self, tz: str):
        from prefect.server.database import provide_database_interface

        self.db = provide_database_interface()
        self.tz = ZoneInfo(tz)

    def _utc(self, local: datetime | None) -> datetime | None:
        return None if local is None else local.replace(tzinfo=self.tz).astimezone(timezone.utc)

    def _local(self, value: datetime | None) -> str | None:
        return None if value is None else R.fmt_date(value.astimezone(self.tz))

    async def traces(self, task_id: uuid.UUID, result: int | None, start: datetime | None,
                     end: datetime | None, page: int, size: int) -> dict[str, Any]:
        import sqlalchemy as sa

        fr = self.db.FlowRun
        # its stand-in for the next fire time (schedulemaster/master/upcoming.py) is no trace
        where = [fr.deployment_id == task_id, fr.id != upcoming_run_id(task_id)]
        if result in RESULT_STATES:
            where.append(fr.state_type.in_(RESULT_STATES[result]))
        if start is not None:
            where.append(fr.expected_start_time >= self._utc(start))
        if end is not None:
            where.append(fr.expected_start_time <= self._utc(end))
        async with self.db.session_context() as session:
            total = (await session.execute(sa.select(sa.func.count()).select_from(fr).where(*where))).scalar_one()
            rows = (await session.execute(
                sa.select(fr.id, fr.name, fr.state_type, fr.state_name, fr.start_time, fr.end_time, fr.expected_start_time,
                          fr.parameters, fr.work_queue_name, fr.tags, fr.labels)
                .where(*where).order_by(fr.expected_start_time.desc())
                .offset((page - 1) * size).limit(size))).all()
        out = []
        for r in rows:
            fire = (r.parameters or {}).get("fire") or {}
            if "sm:start" in (r.tags or []):
                kind = "start"
            elif fire:
                kind = "firing"
            else:
                kind = "run-once" if "sm:run-once" in (r.tags or []) else "run"
            # a firing's record names its node; a run a node took from a queue carries the
            # worker's label (a RunOnce from the shared queue says nothing else)
            node = (fire.get("node") or (r.labels or {}).get("prefect.worker.name")
                    or ((r.work_queue_name or "")[5:] if (r.work_queue_name or "").startswith("node-") else None))
            elapsed = ((r.end_time - r.start_time).total_seconds()
                       if r.start_time is not None and r.end_time is not None else 0.0)
            out.append({"TraceId": str(r.id), "ScheduleId": str(task_id), "Node": node, "Kind": kind,
                        "Name": r.name, "ScheduledTime": self._local(r.expected_start_time),
                        "StartTime": self._local(r.start_time), "EndTime": self._local(r.end_time),
                        "ElapsedTime": round(elapsed, 3), "Result": result_of(r.state_type),
                        "State": fire.get("not_run") or r.state_name})
        return {"total": total, "rows": out}

    async def logs(self, task_id: uuid.UUID | None, trace_id: uuid.UUID | None, category: int | None,
                   start: datetime | None, end: datetime | None, page: int, size: int) -> dict[str, Any]:
        import sqlalchemy as sa

        log, fr = self.db.Log, self.db.FlowRun
        where = [log.flow_run_id.is_not(None)]
        if trace_id is not None:
            where.append(log.flow_run_id == trace_id)
        if task_id is not None:
            where.append(fr.deployment_id == task_id)
        if category in CATEGORY_LEVELS:
            low, high = CATEGORY_LEVELS[category]
            where += [log.level >= low, log.level <= high]
        if start is not None:
            where.append(log.timestamp >= self._utc(start))
        if end is not None:
            where.append(log.timestamp <= self._utc(end))
        joined = sa.select(log.id).join(fr, log.flow_run_id == fr.id).where(*where)
        async with self.db.session_context() as session:
            total = (await session.execute(sa.select(sa.func.count()).select_from(joined.subquery()))).scalar_one()
            rows = (await session.execute(
                sa.select(log.level, log.message, log.timestamp, log.flow_run_id, fr.deployment_id)
                .join(fr, log.flow_run_id == fr.id).where(*where)
                .order_by(log.timestamp.desc()).offset((page - 1) * size).limit(size))).all()
        return {"total": total, "rows": [
            {"Category": category_of(r.level), "Message": r.message, "CreateTime": self._local(r.timestamp),
             "ScheduleId": str(r.deployment_id) if r.deployment_id else None, "TraceId": str(r.flow_run_id)}
            for r in rows]}


def add_history_routes(app: FastAPI, guarded, tz_of) -> None:
    state: dict[str, History] = {}

    def history() -> History:
        if "h" not in state:
            state["h"] = History(tz_of())
        return state["h"]

    def query(request: Request) -> FormValues:
        return FormValues(request.query_params.multi_items())

    @app.get("/api/task/querytraces")
    async def query_traces(request: Request):
        async def act(m, _user):
            page, size = page_bounds(m["pageNumber"], m["pageSize"], 20)
            data = await history().traces(m["id"], m["result"], m["startDate"], m["endDate"], page, size)
            return R.ok("请求数据成功", data)

        return await guarded(request, TRACES, query(request), act)

    @app.get("/api/task/querytracelogs")
    async def query_trace_logs(request: Request):
        async def act(m, _user):
            data = await history().logs(m["id"], m["traceId"], None, None, None, 1, MAX_PAGE)
            return R.ok("请求数据成功", list(reversed(data["rows"])))

        return await guarded(request, TRACE_LOGS, query(request), act)

    @app.get("/api/system/querylogs")
    async def query_system_logs(request: Request):
        async def act(m, _user):
            page, size = page_bounds(m["pageNumber"], m["pageSize"], 20)
            data = await history().logs(m["taskId"], m["traceId"], m["category"], m["startDate"], m["endDate"],
                                        page, size)
            return R.ok("请求数据成功", data)

        return await guarded(request, SYSTEM_LOGS, query(request), act)
