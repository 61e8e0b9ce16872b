"""What the system holds, as pandas DataFrames: tasks, runs, logs, nodes, delayed tasks, lateness.

Columns are typed for ``groupby`` and plotting: times are tz-aware in the system's cron zone,
statuses and kinds are categoricals with every possible value (so a count shows the zeros),
counts are integers and durations float seconds. Runs come from Prefect page by page and
stop at ``limit``, so asking for the last hour of a busy system does not load its year.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from uuid import UUID

import pandas as pd

from schedulemaster.coordination import wire
from schedulemaster.deployments import chain, plan, quartz
from schedulemaster.deployments.tasks import (NODE_QUEUE_PREFIX, STATUS_NAMES, TAG, UPCOMING_TAG, Status, TaskRecord,
                                              record_of, upcoming_run_id)
from schedulemaster.notebook.connection import Connection, current, prefect_errors
from schedulemaster.notebook.legacy_client import LegacyNotFound
from schedulemaster.notebook.lookup import HasId, read_spec, task_id_of
from schedulemaster.timeutil import parse_span

TASK_STATUSES = [STATUS_NAMES[s] for s in (Status.Stop, Status.Running, Status.Paused)]
TASK_TYPES = ["plugin", "http"]
RUN_KINDS = ["firing", "run-once", "child", "start", "imported", "other"]
RUN_STATES = ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED", "PAUSED",
              "CANCELLING"]
DELAYED_STATUSES = {0: "voided", 1: "created", 2: "ready", 3: "succeeded", 4: "failed"}
PAGE = 200

TASK_COLUMNS = ["task_id", "title", "type", "status", "cron", "run_loop", "start_date", "end_date",
                "executors", "failover", "keepers", "nexts", "params", "url", "method", "module", "class_name",
                "created", "last_run", "next_run", "total_runs", "remark", "unschedulable"]
RUN_COLUMNS = ["run_id", "task_id", "task", "name", "kind", "state", "message", "node", "scheduled",
               "started", "ended", "duration_s", "lateness_s", "status_code", "tags"]
NODE_COLUMNS = ["name", "status", "enabled", "last_seen", "seconds_since_seen", "priority", "max_concurrency",
                "running_firings", "host", "started", "created", "pool"]
NODE_STATUSES = {0: "offline", 1: "idle", 2: "running"}  # the original's 下线, 空闲, 运行
DELAYED_COLUMNS = ["delayed_id", "source_app", "topic", "content_key", "status", "due", "pattern", "created",
                   "executed", "finished", "next_attempt", "attempts", "failed_retries", "notify_url",
                   "data_type", "executors", "created_by", "remark"]
LATENESS_COLUMNS = ["task_id", "task", "firings", "p50_s", "p95_s", "p99_s", "max_s"]


def _conn(conn: Connection | None) -> Connection:
    return conn or current()


def _since(value: str | timedelta | datetime | None, tz: str) -> datetime | None:
    """``"1h"`` / a timedelta (that long ago) / a datetime (naive = the system's zone)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        from zoneinfo import ZoneInfo

        return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(tz))
    return datetime.now(timezone.utc) - parse_span(value, "since")


def _times(series: pd.Series, tz: str) -> pd.Series:
    # one unit whatever the values (pandas picks seconds for an all-empty column)
    parsed = pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
    return parsed.astype("datetime64[us, UTC]").dt.tz_convert(tz)


def _local_times(series: pd.Series, tz: str) -> pd.Series:
    """The legacy API's wall times in ``tz`` ('yyyy-MM-dd HH:mm:ss', or ISO with a T where
    the original serialized a nullable DateTime) as aware timestamps."""
    parsed = pd.to_datetime(series, errors="coerce", format="ISO8601").astype("datetime64[us]")
    return parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")


def _category(series: pd.Series, values: list[str]) -> pd.Series:
    return pd.Categorical(series, categories=values)


def _pages(conn: Connection, read: Callable[[int, int], list[Any]], size: int = PAGE) -> Iterator[list[Any]]:
    """Prefect's offset-paged reads: ``read(limit, offset)`` page after page until a short
    one, its HTTP errors as ``PrefectUnavailable``."""
    offset = 0
    while True:
        with prefect_errors(conn.prefect_url):
            page = read(size, offset)
        yield page
        if len(page) < size:
            return
        offset += size


# ---- tasks ------------------------------------------------------------------------------

def task_records(conn: Connection | None = None) -> dict[str, TaskRecord]:
    """Every task by id, as its deployment says (spec and status), read through the master's
    task endpoint (Prefect's deployment list builds a full response per deployment: seconds
    for a thousand tasks)."""
    return {str(row.id): rec for row, rec in _task_rows(_conn(conn), stats=False)}


def _task_page(conn: Connection, stats: bool, before: wire.PageMark | None) -> list[wire.TaskRow]:
    body = wire.TasksRequest(limit=wire.MAX_TASKS, stats=stats, before=before).model_dump(mode="json")
    return wire.TasksPage.model_validate_json(conn.master_post(wire.TASKS_READ_PATH, body)).rows


def _task_rows(conn: Connection, stats: bool) -> Iterator[tuple[wire.TaskRow, TaskRecord]]:
    """Each task's row and record, MAX_TASKS per call (with its run numbers when ``stats``),
    each page the tasks older than the last row of the one before.

    The first page is asked for at once and each next one as soon as the page before has
    arrived, in a thread: a busy master answers a page in ~150 ms, and meanwhile this
    process turns the page before into records and rows instead of waiting."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="sm-task-pages")
    return _rows_of_pages(conn, stats, pool, pool.submit(_task_page, conn, stats, None))


def _rows_of_pages(conn: Connection, stats: bool, pool, pending) -> Iterator[tuple[wire.TaskRow, TaskRecord]]:
    try:
        while True:
            page = pending.result()
            full = len(page) == wire.MAX_TASKS
            if full:
                pending = pool.submit(_task_page, conn, stats, wire.PageMark(created=page[-1].created, id=page[-1].id))
            for row in page:
                if (rec := record_of(row)) is not None:
                    yield row, rec
            if not full:
                return
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def tasks(conn: Connection | None = None) -> pd.DataFrame:
    """Every task: its definition, status and run counts (QueryList's numbers), in one read
    per thousand tasks; the next run is computed here, as QueryList does on the master."""
    import json

    conn = _conn(conn)
    now = datetime.now(timezone.utc)
    task_rows = _task_rows(conn, stats=True)  # its first page is on its way meanwhile
    nodes = (conn.legacy.call("GET", "Node/QueryList") or {}).get("rows") or []
    known = {r.get("NodeName") for r in nodes}
    live = {r.get("NodeName") for r in nodes if r.get("Status") == 2}  # 运行: online and enabled
    disabled = {r.get("NodeName") for r in nodes if not r.get("Enabled")}
    rows = []
    for row, rec in task_rows:
        s = rec.spec
        try:
            params = {p["ParamKey"]: p["ParamValue"] for p in json.loads(s.CustomParamsJson)}
        except (ValueError, TypeError, KeyError):
            params = {}
        try:
            next_run = plan.next_fire(s, now) if rec.status == Status.Running else None
        except quartz.CronError:
            next_run = None
        rows.append({
            "task_id": str(rec.id), "title": s.Title, "type": "plugin" if s.is_plugin else "http",
            "status": STATUS_NAMES[int(rec.status)], "cron": s.CronExpression,
            "run_loop": s.RunLoop, "start_date": s.StartDate, "end_date": s.EndDate,
            "executors": list(s.Executors), "failover": s.FailoverPolicy,
            "keepers": list(s.Keepers), "nexts": list(s.Nexts), "params": params,
            "url": s.Http.RequestUrl if s.Http else None, "method": s.Http.Method if s.Http else None,
            "module": s.AssemblyName, "class_name": s.ClassName,
            "created": s.CreateTime, "last_run": row.last_run, "next_run": next_run,
            "total_runs": int(row.total_runs or 0), "remark": s.Remark,
            "unschedulable": chain.why_unschedulable(list(s.Executors), known, live, disabled)
            if rec.status == Status.Running else None})
    df = pd.DataFrame(rows, columns=TASK_COLUMNS)
    tz = conn.timezone
    for col in ("start_date", "end_date", "created"):
        df[col] = _local_times(df[col], tz)
    for col in ("last_run", "next_run"):  # aware UTC instants
        df[col] = _times(df[col], tz)
    df["type"] = _category(df["type"], TASK_TYPES)
    df["status"] = _category(df["status"], TASK_STATUSES)
    df["run_loop"] = df["run_loop"].astype(bool)
    df["total_runs"] = df["total_runs"].astype("int64")
    for col in ("task_id", "title", "cron", "url", "method", "module", "class_name", "remark", "unschedulable"):
        df[col] = df[col].astype("string")
    return df.sort_values("title", ignore_index=True)


# ---- runs -------------------------------------------------------------------------------

def _kind(run: Any) -> str:
    tags = set(run.tags or [])
    if "sm:imported" in tags:
        return "imported"
    if "sm:start" in tags:
        return "start"
    if "sm:run-once" in tags:
        return "run-once"
    fire = (run.parameters or {}).get("fire")
    if "sm:next" in tags or run.parent_task_run_id is not None or (fire is not None and fire.get("parent")):
        return "child"  # run after its parent: on another node (sm:next) or on the parent's
    if fire is not None:
        return "firing"
    return "other"


#: kinds a tag alone identifies, filtered on the server; the others are filtered here
KIND_TAGS = {"imported": "sm:imported", "start": "sm:start", "run-once": "sm:run-once"}


def iter_runs(task: HasId | str | None = None, since: Any = None, until: Any = None, kind: str | None = None,
              state: str | None = None, page_size: int = PAGE,
              conn: Connection | None = None) -> Iterator[list[Any]]:
    """Pages of Prefect flow runs of tasks, newest scheduled instant first."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowFilter,
                                                FlowFilterTags, FlowRunFilter, FlowRunFilterExpectedStartTime,
                                                FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType,
                                                FlowRunFilterTags)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    conn = _conn(conn)
    if kind is not None and kind not in RUN_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
    if state is not None and str(state).upper() not in RUN_STATES:
        raise ValueError(f"state must be one of {', '.join(RUN_STATES)} (any case), got {state!r}")
    if not isinstance(page_size, int) or not 1 <= page_size <= 200:
        raise ValueError("page_size must be 1..200 (Prefect's limit per request)")
    task_id = task_id_of(task, conn)
    after, before = _since(since, conn.timezone), _since(until, conn.timezone)
    run_filter = FlowRunFilter(
        # a task's stand-in for its next fire time (schedulemaster/master/upcoming.py) is no run
        # of it: left out here for one task, below for all
        id=FlowRunFilterId(not_any_=[upcoming_run_id(task_id)]) if task_id else None,
        expected_start_time=FlowRunFilterExpectedStartTime(after_=after, before_=before) if after or before else None,
        tags=FlowRunFilterTags(all_=[KIND_TAGS[kind]]) if kind in KIND_TAGS else None,
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(str(state).upper())]))
        if state else None)
    dep_filter = DeploymentFilter(id=DeploymentFilterId(any_=[UUID(task_id)])) if task_id else None
    client = conn.prefect()
    flows = FlowFilter(tags=FlowFilterTags(all_=[TAG]))  # each task's own flow (deployments/tasks.py)

    def read(limit: int, offset: int) -> list[Any]:
        return client.read_flow_runs(flow_filter=flows, deployment_filter=dep_filter, flow_run_filter=run_filter,
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit, offset=offset)

    for page in _pages(conn, read, page_size):
        page = [r for r in page if UPCOMING_TAG not in (r.tags or [])]
        if kind is not None and kind not in KIND_TAGS:
            page = [r for r in page if _kind(r) == kind]
        if page:
            yield page


def runs(task: HasId | str | None = None, since: Any = None, until: Any = None, *, kind: str | None = None,
         state: str | None = None, limit: int = 10_000, conn: Connection | None = None) -> pd.DataFrame:
    """Runs of every task (or of ``task``: a Task, a title or an id), newest first.

    ``since`` / ``until``: ``"1h"``, a timedelta or a datetime, on the scheduled instant.
    ``kind``: firing (the node's scheduled firings), run-once, child (after its parent),
    start (a plugin's Start), imported (history from the original), other (runs started
    from the UI). ``state``: COMPLETED, FAILED, ... At most ``limit`` rows
    are read, a page of 200 at a time.
    """
    conn = _conn(conn)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive whole number, got {limit!r}")
    titles: dict[str, str] | None = None
    rows: list[dict[str, Any]] = []
    seen: set[UUID] = set()
    # kinds filtered here need full pages whatever the limit; the server's own filters do not
    page_size = min(PAGE, limit) if kind is None or kind in KIND_TAGS else PAGE
    for page in iter_runs(task, since, until, kind, state, page_size, conn):
        if titles is None:
            titles = _titles(conn, task_id_of(task, conn))
        for r in page:
            if r.id in seen:  # offset paging repeats a row when runs are recorded meanwhile
                continue
            seen.add(r.id)
            fire = (r.parameters or {}).get("fire") or {}
            started = r.start_time
            scheduled = r.expected_start_time
            lateness = fire.get("lateness_ms")
            lateness_s = lateness / 1000 if lateness is not None else \
                (started - scheduled).total_seconds() if started and scheduled else None
            rows.append({
                "run_id": str(r.id), "task_id": str(r.deployment_id) if r.deployment_id else None,
                "task": titles.get(str(r.deployment_id)), "name": r.name, "kind": _kind(r),
                "state": r.state.type.value if r.state else None, "message": (r.state.message if r.state else None),
                "node": fire.get("node") or _node_of_queue(r.work_queue_name), "scheduled": scheduled,
                "started": started, "ended": r.end_time,
                "duration_s": r.total_run_time.total_seconds() if r.total_run_time is not None else None,
                "lateness_s": lateness_s, "status_code": fire.get("status_code"), "tags": list(r.tags or [])})
            if len(rows) >= limit:
                break
        if len(rows) >= limit:
            break
    return _runs_frame(rows, conn.timezone)


def _titles(conn: Connection, task_id: str | None) -> dict[str, str]:
    """Task titles by id: of the one task asked about (one read, not every deployment: a
    notebook polls a task's runs), else of all."""
    if task_id is None:
        return {tid: rec.spec.Title for tid, rec in task_records(conn).items()}

    try:
        return {task_id: read_spec(conn, task_id).Title}
    except LegacyNotFound:  # deleted: its runs remain, untitled
        return {}


def _node_of_queue(queue: str | None) -> str | None:
    return queue[len(NODE_QUEUE_PREFIX):] if queue and queue.startswith(NODE_QUEUE_PREFIX) else None


def _runs_frame(rows: list[dict[str, Any]], tz: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for col in ("scheduled", "started", "ended"):
        df[col] = _times(df[col], tz)
    df["kind"] = _category(df["kind"], RUN_KINDS)
    df["state"] = _category(df["state"], RUN_STATES)
    for col in ("duration_s", "lateness_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["status_code"] = pd.to_numeric(df["status_code"], errors="coerce").astype("Int64")
    for col in ("run_id", "task_id", "task", "name", "message", "node"):
        df[col] = df[col].astype("string")
    return df


def logs(run: str | UUID | pd.Series, conn: Connection | None = None, limit: int = 10_000) -> pd.DataFrame:
    """A run's log lines (time, level, logger, message), oldest first."""
    import logging

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    conn = _conn(conn)
    run_id = run["run_id"] if isinstance(run, pd.Series) else run
    try:
        run_uuid = UUID(str(run_id))
    except ValueError:
        raise ValueError(f"not a run id: {run_id!r}") from None
    client = conn.prefect()
    of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_uuid]))
    rows: list[dict[str, Any]] = []
    for page in _pages(conn, lambda n, offset: client.read_logs(log_filter=of_run, limit=n, offset=offset,
                                                                sort=LogSort.TIMESTAMP_ASC)):
        rows += [{"time": entry.timestamp, "level": logging.getLevelName(entry.level), "logger": entry.name,
                  "message": entry.message} for entry in page]
        if len(rows) >= limit:
            break
    df = pd.DataFrame(rows[:limit], columns=["time", "level", "logger", "message"])
    df["time"] = _times(df["time"], conn.timezone)
    levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    df["level"] = _category(df["level"], levels + sorted(set(df["level"].dropna()) - set(levels)))
    df["message"] = df["message"].astype("string")
    df["logger"] = df["logger"].astype("string")
    return df


# ---- nodes ------------------------------------------------------------------------------

def _workers(conn: Connection) -> list[Any]:
    client = conn.prefect()
    return [w for page in _pages(conn, lambda limit, offset: client.read_workers_for_work_pool(
        conn.work_pool, limit=limit, offset=offset)) for w in page]


def node_names(conn: Connection | None = None) -> set[str]:
    return {w.name for w in _workers(_conn(conn))}


def nodes(conn: Connection | None = None) -> pd.DataFrame:
    """The executor nodes (``/api/Node/QueryList``): status offline (下线), idle (空闲: alive but
    disabled) or running (运行), whether enabled, when each was last seen, its priority (its
    weight in routing) and max concurrency, the firings it holds now (claimed, not yet
    recorded), its host and when its current process started."""
    conn = _conn(conn)
    body = conn.legacy.call("GET", "Node/QueryList") or {}
    now = pd.Timestamp.now(tz=conn.timezone)
    rows = [{"name": r.get("NodeName"), "status": NODE_STATUSES.get(r.get("Status"), "offline"),
             "enabled": bool(r.get("Enabled")), "last_seen": r.get("LastUpdateTime"),
             "priority": r.get("Priority"), "max_concurrency": r.get("MaxConcurrency"),
             "running_firings": r.get("RunningFirings") or 0, "host": r.get("MachineName"),
             "started": r.get("StartTime"), "created": r.get("CreateTime"), "pool": conn.work_pool}
            for r in body.get("rows") or []]
    df = pd.DataFrame(rows, columns=[c for c in NODE_COLUMNS if c != "seconds_since_seen"])
    df["status"] = _category(df["status"], list(NODE_STATUSES.values()))
    df["enabled"] = df["enabled"].astype(bool)
    for col in ("last_seen", "started", "created"):
        df[col] = _local_times(df[col], conn.timezone)
    for col in ("priority", "max_concurrency", "running_firings"):
        df[col] = df[col].astype("Int64")  # a node known to Prefect only has no priority yet
    df["host"] = df["host"].astype("string")
    df.insert(4, "seconds_since_seen", (now - df["last_seen"]).dt.total_seconds().astype("float64"))
    df["name"] = df["name"].astype("string")
    df["pool"] = df["pool"].astype("string")
    return df.sort_values("name", ignore_index=True)


# ---- delayed tasks ----------------------------------------------------------------------

def _delayed_status(status: str | int | None) -> int | None:
    if status is None:
        return None
    if isinstance(status, int) and not isinstance(status, bool) and status in DELAYED_STATUSES:
        return status
    by_name = {v: k for k, v in DELAYED_STATUSES.items()}
    if isinstance(status, str) and status.lower() in by_name:
        return by_name[status.lower()]
    raise ValueError(f"status must be one of {', '.join(DELAYED_STATUSES.values())} (or 0-4), got {status!r}")


def delayed(status: str | int | None = None, topic: str | None = None, content_key: str | None = None,
            source_app: str | None = None, since: Any = None, limit: int = 10_000,
            conn: Connection | None = None) -> pd.DataFrame:
    """Delayed tasks (DelayTask/QueryList), newest first; ``since`` filters on creation."""
    conn = _conn(conn)
    code = _delayed_status(status)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive whole number, got {limit!r}")
    start = _since(since, conn.timezone)
    query: dict[str, Any] = {"status": code, "topic": topic, "contentKey": content_key, "sourceApp": source_app}
    if start is not None:
        from zoneinfo import ZoneInfo

        query["startDate"] = start.astimezone(ZoneInfo(conn.timezone)).strftime("%Y-%m-%d %H:%M:%S")
    rows, seen = [], set()
    for r in conn.legacy.iter_delayed(page_size=min(500, limit), **query):
        if r.get("Id") in seen:  # newest first: one created meanwhile shifts the pages by one
            continue
        seen.add(r.get("Id"))
        rows.append({"delayed_id": r.get("Id"), "source_app": r.get("SourceApp"), "topic": r.get("Topic"),
                     "content_key": r.get("ContentKey"), "status": DELAYED_STATUSES.get(r.get("Status")),
                     "due": r.get("DelayAbsoluteTime"), "pattern": r.get("DelayPattern"),
                     "created": r.get("CreateTime"), "executed": r.get("ExecuteTime"),
                     "finished": r.get("FinishTime"), "next_attempt": r.get("NextAttemptTime"),
                     "attempts": r.get("Attempts") or 0, "failed_retries": r.get("FailedRetrys") or 0,
                     "notify_url": r.get("NotifyUrl"), "data_type": r.get("NotifyDataType"),
                     "executors": list(r.get("Executors") or []), "created_by": r.get("CreateUserName"),
                     "remark": r.get("Remark")})
        if len(rows) >= limit:
            break
    df = pd.DataFrame(rows, columns=DELAYED_COLUMNS)
    for col in ("due", "created", "executed", "finished", "next_attempt"):
        df[col] = _local_times(df[col], conn.timezone)
    df["status"] = _category(df["status"], list(DELAYED_STATUSES.values()))
    for col in ("attempts", "failed_retries"):
        df[col] = df[col].astype("int64")
    for col in ("delayed_id", "source_app", "topic", "content_key", "pattern", "notify_url", "data_type",
                "created_by", "remark"):
        df[col] = df[col].astype("string")
    return df


# ---- lateness ---------------------------------------------------------------------------

def lateness(since: Any = "1h", task: HasId | str | None = None, limit: int = 100_000,
             conn: Connection | None = None) -> pd.DataFrame:
    """Per task, how late its scheduled firings started: p50/p95/p99/max seconds over the
    firings scheduled since ``since`` (lateness = started - scheduled, measured on the node)."""
    df = runs(task=task, since=since, kind="firing", limit=limit, conn=conn)
    if df.empty:
        return pd.DataFrame({"task_id": pd.Series(dtype="string"), "task": pd.Series(dtype="string"),
                             "firings": pd.Series(dtype="int64"),
                             **{c: pd.Series(dtype="float64") for c in LATENESS_COLUMNS[3:]}})
    grouped = df.groupby(["task_id", "task"], observed=True, dropna=False)["lateness_s"]
    out = grouped.agg(firings="count", p50_s=lambda s: s.quantile(0.50), p95_s=lambda s: s.quantile(0.95),
                      p99_s=lambda s: s.quantile(0.99), max_s="max").reset_index()
    out["firings"] = out["firings"].astype("int64")
    return out.sort_values("p99_s", ascending=False, ignore_index=True)[LATENESS_COLUMNS]


def plot_lateness(since: Any = "1h", task: HasId | str | None = None, ax: Any = None,
                  conn: Connection | None = None):
    """A box plot of firing lateness per task (matplotlib Axes)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_lateness needs matplotlib: pip install matplotlib") from None
    df = runs(task=task, since=since, kind="firing", conn=conn)
    # a deleted task's runs outlive it without a title: label them by id
    label = df["task"].fillna("(deleted) " + df["task_id"].fillna("?").str.slice(0, 8))
    groups = [(name, g["lateness_s"].dropna().to_numpy()) for name, g in df.groupby(label, sort=True)]
    groups = [(name, values) for name, values in groups if len(values)]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, max(2.0, 0.8 + 0.4 * len(groups))))
    if not groups:
        ax.set_title(f"no firings since {since}")
        return ax
    ax.boxplot([values for _, values in groups], orientation="horizontal",
               tick_labels=[str(name) for name, _ in groups])
    ax.set_xlabel("lateness (s): started - scheduled")
    ax.set_title(f"firing lateness since {since}")
    return ax
