"""A ScheduleMaster task *is* a Prefect deployment: this module maps one onto the other.

* id          = deployment id (chosen by us: created in-process through prefect.server.models,
                because Prefect's HTTP API never lets a client pick a deployment id);
* Title       = deployment name (suffixed with the short id when another task has the title);
* Status      = the ``sm:stopped`` tag (Stop) or else the deployment's ``paused`` flag
                (Paused / Running), so pausing in the Prefect UI pauses the task too;
* everything else of the task (cron, dates, HTTP options, params, keepers, nexts,
  executors, creator) = the deployment's ``task`` parameter, which every run carries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from schedulemaster.deployments import run_counts
from schedulemaster.deployments.prefect_schedule import display_schedule
from schedulemaster.deployments.spec import TaskSpec, spec_of, spec_or_none

TAG = "schedulemaster"
STOPPED_TAG = "sm:stopped"
#: the flow of a deleted task (kept with its runs)
DELETED_TAG = "sm:deleted"
EXECUTOR_TAG = "sm:executor:"
FLOW_NAME = "schedulemaster-task"
ENTRYPOINT = "schedulemaster.flows.task_flow.run_task"
DEFAULT_QUEUE = "default"
# Task deployments sit in a queue no worker polls: every poll of a queue makes Prefect
# rewrite `last_polled` on *every* deployment in it (mark_deployments_ready, under SQLite's
# write lock), which with 1,000 tasks polled each second locked the database for a minute.
# Runs that need a worker (RunOnce) are created in `default` or `node-<name>` instead.
TASKS_QUEUE = "tasks"
NODE_QUEUE_PREFIX = "node-"
#: what happens to a firing whose node died while running it (the FailoverPolicy field)
POLICIES = ("retry-elsewhere", "fail")
DEFAULT_POLICY = "retry-elsewhere"
#: the run label naming the node process (its incarnation) that took a worker-path run
INCARNATION_LABEL = "schedulemaster.incarnation"
#: a firing's run tags: the node that fired it, and an HTTP answer outside 2xx (counted a
#: success unless Http_FailOnNon2xx), so both read in Prefect's run lists at a glance
NODE_TAG = "node:"
HTTP_TAG = "http:"
#: what a run's name holds: the task's title first (lists and a parent's run graph read by
#: title), then what the run is
RUN_NAME_TITLE = 80
#: the tag of a task's stand-in run: its next fire time as a Scheduled run, where Prefect's UI
#: looks for what comes next (schedulemaster/master/upcoming.py); no firing, never run
UPCOMING_TAG = "sm:upcoming"


def upcoming_run_id(task_id: uuid.UUID | str) -> uuid.UUID:
    """The id of a task's stand-in run (one per task, rewritten as its next instant moves):
    fixed, so every run list can leave it out by id."""
    return uuid.uuid5(uuid.UUID(str(task_id)), UPCOMING_TAG)


def run_name(title: str, what: str) -> str:
    """``<title> · <what>``, e.g. ``orders sync · 2026-12-07 08:00:00`` or ``orders sync · run once``;
    each part cut at RUN_NAME_TITLE characters (``what`` may hold another task's title)."""
    def cut(text: str) -> str:
        return text if len(text) <= RUN_NAME_TITLE else text[:RUN_NAME_TITLE - 1] + "…"

    return f"{cut(title.strip() or 'task')} · {cut(what)}"


class Status(IntEnum):
    Deleted = -1
    Stop = 0
    Running = 1
    Paused = 2


#: each status as the notebook API and the CLI name it
STATUS_NAMES = {Status.Deleted: "deleted", Status.Stop: "stopped", Status.Running: "running", Status.Paused: "paused"}


@dataclass
class TaskRecord:
    id: uuid.UUID
    name: str
    spec: TaskSpec
    status: Status
    created: datetime
    updated: datetime


def status_of(deployment: Any) -> Status:
    if STOPPED_TAG in (deployment.tags or []):
        return Status.Stop
    return Status.Paused if deployment.paused else Status.Running


def record_of(deployment: Any) -> TaskRecord | None:
    """The task a deployment is, or None when it is not one (or its spec does not validate:
    logged, and the task is left out rather than failing every list)."""
    from pydantic import ValidationError

    raw = (deployment.parameters or {}).get("task")
    if TAG not in (deployment.tags or []) or not isinstance(raw, dict):
        return None
    try:
        spec = spec_of(raw)
    except ValidationError as exc:
        logging.getLogger("schedulemaster.tasks").warning(
            "deployment %s is tagged %s but its task spec is invalid: %s", deployment.id, TAG,
            str(exc).splitlines()[0])
        return None
    return TaskRecord(deployment.id, deployment.name, spec, status_of(deployment),
                      deployment.created, deployment.updated)


def _schedule_changed(previous: TaskSpec | None, spec: TaskSpec) -> bool:
    """Whether the deployment's display schedule (deployments/prefect_schedule.py) may differ."""
    return previous is None or ((previous.RunLoop, previous.CronExpression, previous.TimeZone)
                                != (spec.RunLoop, spec.CronExpression, spec.TimeZone))


#: a task's status in words among its tags, so Prefect's deployments list and the task's page
#: say it (the ``sm:stopped`` tag is also what makes a task Stopped: ``status_of``)
STATUS_TAGS = {Status.Running: "sm:running", Status.Paused: "sm:paused", Status.Stop: STOPPED_TAG}


def with_status(tags: list[str], status: Status) -> list[str]:
    """``tags`` with ``status`` in words right after the project's tag, and no other status word."""
    rest = [t for t in tags if t not in STATUS_TAGS.values() and t != TAG]
    return [TAG, *([STATUS_TAGS[status]] if status in STATUS_TAGS else []), *rest]


def tags_for(spec: TaskSpec, status: Status) -> list[str]:
    return with_status([f"{EXECUTOR_TAG}{e}" for e in spec.Executors], status)


def description_for(spec: TaskSpec) -> str:
    kind = "plugin" if spec.is_plugin else "HTTP"
    when = (f"Quartz cron `{spec.CronExpression}`" if spec.RunLoop
            else f"once at {spec.StartDate or 'start'}")
    lines = [f"ScheduleMaster {kind} task · {when} ({spec.TimeZone}) · schedule owned by the "
             f"executor nodes (the next fire time is the task's Upcoming run; more: QueryTaskDetail or "
             f"`schedulemaster cron`)",
             f"Policies: {spec.Policy.summary()} · failover {spec.FailoverPolicy}"]
    if spec.Remark:
        lines.insert(0, spec.Remark)
    return "\n\n".join(lines)


_NAME_BAD = re.compile(r"[/%&><]")


def clean_name(title: str) -> str:
    """Prefect refuses '/', '%', '&', '>' and '<' in deployment names."""
    name = _NAME_BAD.sub("_", title).strip()
    return name or "task"


# ---- in-process access (the legacy API runs inside the Prefect server process) ----------

#: {(database interface, flow id, work queue id): related resources of a deployment event}
_RELATED = None
#: {(database interface, title filter): ((deployments, newest updated), tasks)}: TaskRepository._task_count
_TASK_COUNTS: dict[tuple[int, str | None], tuple[tuple, int]] = {}
_QUEUE_MAKING = asyncio.Lock()  # one maker of the tasks queue per process (make_tasks_queue)
_QUEUES_MADE: set[tuple[int, str]] = set()  # (database, work pool) whose tasks queue was seen made


def _token_of(probe: tuple) -> str:
    count, newest = probe
    return f"{count}/{newest.isoformat() if newest is not None else '-'}"


class TaskRepository:
    """Task reads and writes inside the master process, through ``prefect.server.models``.

    Two reasons not to use Prefect's HTTP API here: it cannot create a deployment with a
    chosen id, and on SQLite its write endpoints open DEFERRED transactions that fail with
    SQLITE_BUSY_SNAPSHOT under concurrent writers, which the server answers with a 503 and
    the client retries after 2, 4, 8... seconds (a Create took over 60 s in the benchmark).
    Here every write takes the write lock up front (BEGIN IMMEDIATE) and waits for it.
    """

    def __init__(self):
        from prefect.server.database import provide_database_interface

        self.db = provide_database_interface()

    def _write(self):
        return self.db.session_context(begin_transaction=True, with_for_update=True)

    def _read(self):
        return self.db.session_context()

    @asynccontextmanager
    async def _snapshot(self):
        """A read of several statements that all see the same commits: a transaction
        (SQLite's reads each commit on their own outside one), REPEATABLE READ on PostgreSQL
        (its READ COMMITTED lets each statement see commits made since the one before)."""
        async with self.db.session_context(begin_transaction=True) as session:
            if self.db.dialect.name == "postgresql":
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    async def create(self, task_id: uuid.UUID, spec: TaskSpec, work_pool: str,
                     parameter_schema: dict[str, Any], status: Status = Status.Stop) -> None:
        """Create the deployment of a new task, keeping the id the caller chose (Running at
        once for a Create with RunNow: one transaction instead of a create and a start)."""
        from prefect.server import models, schemas
        from prefect.server.schemas.statuses import DeploymentStatus

        if (id(self.db), work_pool) not in _QUEUES_MADE:
            await self.make_tasks_queue(work_pool)
        async with self._write() as session:
            queue_id = await self._tasks_queue(session, work_pool)
            D = self.db.Deployment
            if (await session.execute(sa.select(D.id).where(D.id == task_id))).first() is not None:
                raise ValueError(f"a task with id {task_id} already exists")
            flow_id, flow_name = task_id, await self._own_flow(session, spec.Title, task_id)
            name = clean_name(spec.Title)  # unique: the flow is the task's own
            dep = schemas.core.Deployment(
                id=task_id, name=name, flow_id=flow_id, paused=status != Status.Running,
                parameters={"task": spec.wire()}, tags=tags_for(spec, status),
                description=description_for(spec), entrypoint=ENTRYPOINT,
                work_queue_name=TASKS_QUEUE, work_queue_id=queue_id,
                parameter_openapi_schema=parameter_schema, enforce_parameter_schema=False,
            )
            dep.labels = await models.deployments.with_system_labels_for_deployment(session, dep)
            # The rows Prefect's create_deployment writes, inserted directly: the id is new, so
            # its upsert, the schedule and run cleanup of an existing deployment and the ORM
            # reloads (29 of a Create's 39 ms here) have nothing to do. Its event too.
            # Core inserts of the tables with the row as parameters: the statement is the same
            # every time (compiled once), where the ORM's insert(...).values(row) made a new
            # cache key of every value, the JSON documents included (py-spy).
            await session.execute(sa.insert(D.__table__), {**dep.model_dump_for_orm(exclude_unset=True),
                                                           "status": DeploymentStatus.READY})
            if (shown := display_schedule(spec)) is not None:
                await session.execute(sa.insert(self.db.DeploymentSchedule.__table__), dict(
                    deployment_id=task_id, schedule=shown.schedule, active=status == Status.Running, slug=shown.slug,
                    parameters={}))
            await self._emit(session, "prefect.deployment.created", task_id, name, flow_id, queue_id,
                             flow_name=flow_name)

    async def mark_ready(self) -> int:
        """Every task deployment READY, never polled: how Prefect's UI shows a deployment that
        can run. A task is fired by its node, not by a worker polling its queue; Prefect's
        foreman only turns deployments NOT_READY that were polled once (``last_polled``), and
        the poll that keeps them READY rewrote every task deployment under SQLite's write lock
        and emitted one event per deployment inside that transaction (6 ms each: minutes of
        lock with thousands of tasks). Run at the master's start, for deployments an earlier
        version polled; returns how many changed."""
        from prefect.server.schemas.statuses import DeploymentStatus

        D = self.db.Deployment
        async with self._write() as session:
            result = await session.execute(
                sa.update(D).where(self._tagged(), sa.or_(D.status != DeploymentStatus.READY,
                                                          D.last_polled.isnot(None)))
                .values(status=DeploymentStatus.READY, last_polled=None, updated=D.updated))
        return result.rowcount

    async def mark_status_words(self) -> int:
        """Every task's status in words among its tags (``with_status``), for tasks written
        before they carried it. Run at the master's start; returns how many changed."""
        D = self.db.Deployment
        changed = 0
        async with self._write() as session:
            for row in (await session.execute(sa.select(D.id, D.tags, D.paused).where(self._tagged()))).all():
                status = status_of(row)
                if (tags := with_status(row.tags, status)) != list(row.tags):
                    await session.execute(sa.update(D).where(D.id == row.id).values(tags=tags))
                    changed += 1
        return changed

    def _tasks_queue_id(self, work_pool: str):
        db = self.db
        return (sa.select(db.WorkQueue.id).join(db.WorkPool, db.WorkQueue.work_pool_id == db.WorkPool.id)
                .where(db.WorkPool.name == work_pool, db.WorkQueue.name == TASKS_QUEUE))

    async def _tasks_queue(self, session, work_pool: str) -> uuid.UUID:
        """The tasks queue's id (an indexed read; Prefect's lookup helper costs milliseconds a
        Create). It exists: ``make_tasks_queue`` runs before (a queue deleted in between fails
        the Create, which the next one mends)."""
        queue_id = (await session.execute(self._tasks_queue_id(work_pool))).scalar()
        if queue_id is None:
            _QUEUES_MADE.discard((id(self.db), work_pool))
            raise LookupError(f"work pool {work_pool!r} has no {TASKS_QUEUE!r} queue")
        return queue_id

    async def make_tasks_queue(self, work_pool: str) -> None:
        """Make the tasks queue when missing (the master's start, or a Create that finds none),
        one at a time: concurrent first Creates each made it, and PostgreSQL refused all but one."""
        from prefect.server.api.workers import WorkerLookups

        async with _QUEUE_MAKING:
            if (id(self.db), work_pool) in _QUEUES_MADE:
                return
            async with self._write() as session:
                if (await session.execute(self._tasks_queue_id(work_pool))).first() is None:
                    await WorkerLookups()._get_work_queue_id_from_name(
                        session=session, work_pool_name=work_pool, work_queue_name=TASKS_QUEUE,
                        create_queue_if_not_found=True)
            _QUEUES_MADE.add((id(self.db), work_pool))

    async def _own_flow(self, session, title: str, task_id: uuid.UUID) -> str:
        """The task's own flow, with the task's id, named by its title (a name another flow
        holds gets the id's first 8 characters): Prefect's Flows page is then the task list and
        its dashboard groups runs and failures by task. Tagged TAG (sm.runs() finds task runs by
        it). Returns the flow's name."""
        F = self.db.Flow
        name = clean_name(title)
        # one statement when the id and the name are free (nearly always)
        insert = (postgresql.insert if self.db.dialect.name == "postgresql" else sqlite.insert)(F.__table__)
        made = await session.execute(insert.values(id=task_id, name=name, tags=[TAG], labels={}).on_conflict_do_nothing())
        if made.rowcount == 1:
            return name
        name = await self._flow_name(session, title, task_id)
        if (await session.execute(sa.select(F.id).where(F.id == task_id))).first() is not None:
            # a task made again with its old id (an import after a delete): its history's flow
            await session.execute(sa.update(F).where(F.id == task_id).values(name=name, tags=[TAG]))
        else:
            await session.execute(sa.insert(F.__table__), dict(id=task_id, name=name, tags=[TAG], labels={}))
        return name

    async def _flow_name(self, session, title: str, task_id: uuid.UUID) -> str:
        """Flow names are unique in Prefect: the title, or the title and the id's start."""
        F = self.db.Flow
        name = clean_name(title)
        holder = (await session.execute(sa.select(F.id).where(F.name == name))).scalar_one_or_none()
        return name if holder is None or holder == task_id else f"{name} ({str(task_id)[:8]})"

    async def own_flows(self, batch: int = 200) -> int:
        """Give each task written before tasks had their own flow its flow, and move its runs
        there (Prefect's runs hang on a flow; an older version put every task in one,
        FLOW_NAME). Run at the master's start; returns how many tasks moved. That shared flow
        keeps the runs of tasks deleted before, tagged TAG so sm.runs() still finds them."""
        D, F, R = self.db.Deployment, self.db.Flow, self.db.FlowRun
        moved = 0
        async with self._write() as session:
            await session.execute(sa.update(F).where(F.name == FLOW_NAME).values(tags=[TAG]))
        while True:
            async with self._write() as session:
                rows = (await session.execute(sa.select(D.id, D.name, D.parameters).where(
                    self._tagged(), D.flow_id != D.id).limit(batch))).all()
                for row in rows:
                    title = ((row.parameters or {}).get("task") or {}).get("Title") or row.name
                    await self._own_flow(session, title, row.id)
                    await session.execute(sa.update(D).where(D.id == row.id).values(flow_id=row.id, updated=D.updated))
                    await session.execute(sa.update(R).where(R.deployment_id == row.id).values(flow_id=row.id))
            moved += len(rows)
            if len(rows) < batch:
                return moved

    async def _unique_name(self, session, flow_id: uuid.UUID, title: str, task_id: uuid.UUID) -> str:
        """Deployments are upserted by (flow, name): a clash would overwrite another task."""
        name = clean_name(title)
        row = (await session.execute(sa.select(self.db.Deployment.id).where(
            self.db.Deployment.flow_id == flow_id, self.db.Deployment.name == name))).scalar_one_or_none()
        if row is None or row == task_id:
            return name
        return f"{name} ({str(task_id)[:8]})"

    async def read(self, task_id: uuid.UUID) -> TaskRecord | None:
        found = await self._records(self.db.Deployment.id == task_id)
        return found[0] if found else None

    async def list(self) -> list[TaskRecord]:
        """Every task, newest first."""
        return sorted(await self._records(), key=lambda r: (r.created, r.id), reverse=True)

    async def rows(self, ids: list[uuid.UUID] | None, offset: int = 0, limit: int = 200,
                   title: str | None = None, status: Status | None = None,
                   parameters_text: bool = False,
                   before: tuple[datetime, uuid.UUID] | None = None) -> tuple[int, list[Any]]:
        """(how many tasks match, rows of the columns a TaskRecord needs): the tasks ``ids``,
        or one page newest first, counted, filtered and cut in SQL so a page costs the same at
        10 tasks and at 10,000. ``title``: a case-sensitive substring of the Title, as the
        original's QueryList matched it; ``status``: only tasks in it (the console's filter).
        ``parameters_text``: the parameters as the database's JSON text, not decoded (for a
        caller that passes them on as JSON: decoding was most of a page's cost). ``before``:
        (created, id) of the previous page's last row, the page is the rows after it (the
        count still counts every match)."""
        D = self.db.Deployment
        where = [self._title_contains(title)] if title else []
        if status is not None:
            where.append(self._status_is(status))
        q = self._select(*where, parameters_text=parameters_text)
        if before is not None:
            created, last = before
            q = q.where(sa.or_(D.created < created, sa.and_(D.created == created, D.id < last)))
        if ids is not None:
            q = q.where(D.id.in_(ids))
        else:
            q = q.order_by(D.created.desc(), D.id.desc()).offset(offset).limit(limit)
        async with self._read() as session:
            if status is None:
                # a count shown beside a page: kept on PostgreSQL too (see _task_count)
                total = await self._task_count(session, await self._probe(session), title, exact=False)
            else:
                total = await self._count(session, *where)
            return total, list((await session.execute(q)).all())

    async def page(self, title: str | None, offset: int, limit: int,
                   status: Status | None = None) -> tuple[int, list[TaskRecord]]:
        """A QueryList page: how many tasks match, and those of the page as records."""
        total, rows = await self.rows(None, offset, limit, title, status)
        return total, [r for r in (record_of(row) for row in rows) if r is not None]

    async def versions(self, since: datetime | None) -> tuple[int, list[tuple[uuid.UUID, datetime]], str]:
        """(how many tasks exist, (id, updated) of those updated at or after ``since``, the
        change token): what a node needs to keep its task book, through the index on ``updated``.
        The token is read first, so a change it does not show is one the node has not seen; it
        is empty where tokens do not follow commits (PostgreSQL): the node then looks every second."""
        D = self.db.Deployment
        changed = [self._tagged()] + ([D.updated >= since] if since is not None else [])
        # one snapshot: a task created between the count and the rows made the count disagree
        # with the rows, and the node then read every version again (at 10,000 tasks, most of
        # the master's time while tasks were being created: py-spy)
        async with self._snapshot() as session:
            probe = await self._probe(session)
            count = await self._task_count(session, probe)
            rows = (await session.execute(sa.select(D.id, D.updated).where(*changed))).all()
        return count, [(row.id, row.updated) for row in rows], _token_of(probe) if self.tokens_follow_commits else ""

    @property
    def tokens_follow_commits(self) -> bool:
        """Whether every committed change of a task moves the change token (see
        schedulemaster/master/task_changes.py): on SQLite, whose writers take turns."""
        return self.db.dialect.name == "sqlite"

    async def change_token(self) -> str:
        """A token that moves when a deployment is created, changed or deleted."""
        async with self._read() as session:
            return _token_of(await self._probe(session))

    async def _probe(self, session) -> tuple:
        """(how many deployments, the newest ``updated``): both read from indexes."""
        D = self.db.Deployment
        return tuple((await session.execute(sa.select(sa.func.count(), sa.func.max(D.updated))
                                            .select_from(D))).one())

    async def _task_count(self, session, probe: tuple, title: str | None = None, exact: bool = True) -> int:
        """How many tasks exist (whose Title contains ``title``), counted again only when the
        probe moved: counting reads every deployment's tags and parameters (tens of ms at
        10,000 tasks), and nodes and each QueryList page ask. On PostgreSQL a write can
        commit after a later one without moving the probe, so a count a node compares
        (``exact``) is always made afresh; a count shown to a person (a QueryList's total) is
        kept: a write the probe misses changes the number of tasks only when it makes a task
        while another write deletes one (or the reverse), or when it changes whether a
        deployment is a task at all (its tags or parameters, edited in Prefect's UI)."""
        key = (id(self.db), title)
        memo = _TASK_COUNTS.get(key)
        if memo is not None and memo[0] == probe and (self.tokens_follow_commits or not exact):
            return memo[1]
        count = await self._count(session, *([self._title_contains(title)] if title else []))
        if len(_TASK_COUNTS) >= 256:  # titles searched for: a bounded memo
            _TASK_COUNTS.clear()
        _TASK_COUNTS[key] = (probe, count)
        return count

    async def chains(self, among: list[uuid.UUID] | None = None) -> dict[str, tuple[str, list[str]]]:
        """{task id: (Title, Nexts)} of the tasks that have children, plus those in ``among``
        (children to check): what a cycle check needs, without reading every task."""
        wanted = self._has_children()
        if among:
            wanted = sa.or_(wanted, self.db.Deployment.id.in_(among))
        return {str(r.id): (r.spec.Title, list(r.spec.Nexts)) for r in await self._records(wanted)}

    async def parents_of(self, task_id: uuid.UUID) -> list[TaskRecord]:
        """The tasks whose Nexts name this one."""
        return [r for r in await self._records(self._has_children()) if str(task_id) in r.spec.Nexts]

    async def _records(self, *where) -> list[TaskRecord]:
        async with self._read() as session:
            rows = (await session.execute(self._select(*where))).all()
        return [r for r in (record_of(row) for row in rows) if r is not None]

    def _select(self, *where, parameters_text: bool = False):
        """The columns a TaskRecord needs, of the task deployments that also match ``where``."""
        D = self.db.Deployment
        # a cast, not a type coercion: PostgreSQL's driver decodes JSONB itself
        parameters = sa.cast(D.parameters, sa.Text).label("parameters") if parameters_text else D.parameters
        return sa.select(D.id, D.name, D.tags, D.paused, parameters, D.created, D.updated).where(
            self._tagged(), *where)

    async def _count(self, session, *where) -> int:
        return (await session.execute(sa.select(sa.func.count()).select_from(self.db.Deployment)
                                      .where(self._tagged(), *where))).scalar_one()

    async def running(self, pinned_only: bool = False) -> list[TaskRecord]:
        """The Running tasks (only those whose Executors name nodes, when ``pinned_only``)."""
        where = [self._status_is(Status.Running)]
        if pinned_only:
            where.append(self._has_list("Executors"))
        return await self._records(*where)

    def _has_children(self):
        return self._has_list("Nexts")

    def _has_list(self, key: str):
        """Deployments whose task's list field ``key`` is not empty (no spec parsed)."""
        D = self.db.Deployment
        if self.db.dialect.name == "postgresql":
            return sa.func.jsonb_array_length(D.parameters.op("#>")(sa.literal_column(f"'{{task,{key}}}'"))) > 0
        return sa.func.json_array_length(sa.func.json_extract(D.parameters, f"$.task.{key}")) > 0

    def _tagged(self):
        """Deployments that are tasks, as record_of tells them: tagged, with a ``task`` object
        among their parameters (the dispatcher's own deployment is tagged too, and has none)."""
        D = self.db.Deployment
        if self.db.dialect.name == "postgresql":
            return sa.and_(D.tags.op("@>")(sa.cast([TAG], D.tags.type)),
                           sa.func.jsonb_typeof(D.parameters.op("->")(sa.literal_column("'task'"))) == "object")
        return sa.and_(sa.exists(sa.select(1).select_from(sa.func.json_each(D.tags).table_valued("value"))
                                 .where(sa.literal_column("value") == TAG)),
                       sa.func.json_type(D.parameters, "$.task") == "object")

    def _status_is(self, status: Status):
        """Deployments whose task is in ``status``, as status_of reads it (the stopped tag
        first, then the paused flag)."""
        D = self.db.Deployment
        if self.db.dialect.name == "postgresql":
            stopped = D.tags.has_all(sa.cast(postgresql.array([STOPPED_TAG]), postgresql.ARRAY(sa.String())))
        else:
            tags = sa.func.json_each(D.tags).table_valued("value")
            stopped = sa.exists().where(tags.c.value == STOPPED_TAG)
        if status == Status.Stop:
            return stopped
        return sa.and_(sa.not_(stopped), D.paused == (status == Status.Paused))

    def _title_contains(self, title: str):
        """Tasks whose Title contains ``title`` (case-sensitive, as the original's Contains)."""
        D = self.db.Deployment
        if self.db.dialect.name == "postgresql":
            find, in_title = sa.func.strpos, D.parameters.op("#>>")(sa.literal_column("'{task,Title}'"))
        else:
            find, in_title = sa.func.instr, sa.func.json_extract(D.parameters, "$.task.Title")
        exact = find(in_title, title) > 0
        if title != title.strip() or _NAME_BAD.search(title):
            return exact
        # The deployment's name is clean_name(Title), which keeps such a ``title`` as it is: the
        # short name column is tested first and the spec's JSON only for the rows it lets
        # through (at 10,000 tasks, reading every spec's Title was most of a filtered page).
        return sa.and_(find(D.name, title) > 0, exact)

    async def write(self, task_id: uuid.UUID, spec: TaskSpec, status: Status,
                    rename: bool = False, previous: TaskSpec | None = None) -> None:
        """Store a task's spec and status. ``previous``: its spec before, when the caller has
        it; its schedule is then rewritten only if the cron changed (Prefect rewrites a
        deployment's schedules in several ORM round trips: most of a Start or a Pause)."""
        async with self._write() as session:
            await self._update(session, task_id, spec, status, _schedule_changed(previous, spec))
            if rename:  # Prefect's API cannot rename a deployment; the title is its name, and its flow's
                flow_id = (await session.execute(sa.select(self.db.Deployment.flow_id).where(
                    self.db.Deployment.id == task_id))).scalar_one()
                name = await self._unique_name(session, flow_id, spec.Title, task_id)
                await session.execute(sa.update(self.db.Deployment).where(
                    self.db.Deployment.id == task_id).values(name=name))
                if flow_id == task_id:
                    await session.execute(sa.update(self.db.Flow).where(self.db.Flow.id == task_id).values(
                        name=await self._flow_name(session, spec.Title, task_id)))
                    if _RELATED is not None:  # the events' related flow: read again
                        _RELATED.pop((id(self.db), "flow", task_id), None)

    async def _update(self, session, task_id: uuid.UUID, spec: TaskSpec, status: Status,
                      schedule: bool = True) -> None:
        from prefect.server import models, schemas

        values = {"parameters": {"task": spec.wire()}, "tags": tags_for(spec, status),
                  "paused": status != Status.Running, "description": description_for(spec)}
        if not schedule:
            await self._update_fields(session, task_id, values)
            await self._switch_schedule(session, task_id, status == Status.Running)
            return
        shown = display_schedule(spec)
        ok = await models.deployments.update_deployment(
            session=session, deployment_id=task_id, deployment=schemas.actions.DeploymentUpdate(
                **values, schedules=[] if shown is None else [schemas.actions.DeploymentScheduleUpdate(
                    schedule=shown.schedule, active=status == Status.Running, slug=shown.slug)]))
        if not ok:
            raise LookupError(f"task {task_id} not found")

    async def follow_ui_switch(self, task_id: uuid.UUID, schedule_switched: bool) -> Status | None:
        """After Prefect's UI changed a deployment (its pause switch, or its schedule's switch
        when ``schedule_switched``), make the two agree for a task, the way the legacy API's
        Pause and Resume leave them: the schedule's switch pauses or resumes the task; the
        pause switch turns the schedule off or on. A Stopped task stays Stopped with its
        schedule off (a Start is the legacy API's, with its plugin handshake). Returns the
        task's status, or None for a deployment that is not a task."""
        D, S = self.db.Deployment, self.db.DeploymentSchedule
        async with self._write() as session:
            row = (await session.execute(sa.select(D.paused, D.tags, D.entrypoint, D.parameters)
                                         .where(D.id == task_id))).first()
            if row is None or row.entrypoint != ENTRYPOINT or TAG not in (row.tags or []):
                return None
            status = was = status_of(row)
            if schedule_switched and status != Status.Stop:
                on = (await session.execute(sa.select(sa.func.max(sa.cast(S.active, sa.Integer)))
                                            .where(S.deployment_id == task_id))).scalar()
                status = Status.Running if on else Status.Paused
            values: dict[str, Any] = {}
            if (status != Status.Running) != row.paused:  # a Stopped task unpaused in the UI is paused again
                values["paused"] = status != Status.Running
            if (tags := with_status(row.tags, status)) != list(row.tags):
                values["tags"] = tags
            spec = spec_or_none((row.parameters or {}).get("task"))
            if was == Status.Paused and status == Status.Running and spec is not None:
                values["parameters"] = {**row.parameters, "task": spec.resumed().wire()}
            if values:
                await self._update_fields(session, task_id, values)
            await self._switch_schedule(session, task_id, status == Status.Running)
            return status

    async def _switch_schedule(self, session, task_id: uuid.UUID, on: bool) -> None:
        """The schedule Prefect's UI shows is switched on exactly while the task runs."""
        S = self.db.DeploymentSchedule
        await session.execute(sa.update(S).where(S.deployment_id == task_id, S.active != on).values(active=on))

    async def _update_fields(self, session, task_id: uuid.UUID, values: dict[str, Any]) -> None:
        """What Prefect's update_deployment writes when the schedule stays (a Start, Pause,
        Resume, Stop, or an edit of anything but the cron): one UPDATE and the
        ``prefect.deployment.updated`` event. Its ORM reads before and after cost 15 of a
        status change's 23 ms; the fields the event names are read here in one query."""
        D = self.db.Deployment
        before = (await session.execute(sa.select(D.name, D.flow_id, D.work_queue_id, *(getattr(D, f) for f in values))
                                        .where(D.id == task_id))).first()
        if before is None:
            raise LookupError(f"task {task_id} not found")
        await session.execute(sa.update(D).where(D.id == task_id).values(**values))
        changed = {f: {"from": getattr(before, f), "to": v} for f, v in values.items() if getattr(before, f) != v}
        if changed:
            await self._emit(session, "prefect.deployment.updated", task_id, before.name, before.flow_id,
                             before.work_queue_id, {"updated_fields": list(changed), "updates": changed})

    async def _emit(self, session, name: str, task_id: uuid.UUID, title: str, flow_id: uuid.UUID,
                    queue_id: uuid.UUID | None, payload: dict[str, Any] | None = None,
                    flow_name: str | None = None) -> None:
        """The event Prefect's create/update_deployment emits, with its related flow, work queue
        and work pool read in one query: Prefect reads them as three ORM objects with their
        relationships (about 5 % of the master's CPU while creating tasks, py-spy, inside the write
        transaction)."""
        from prefect._internal.uuid7 import uuid7
        from prefect.server.events.clients import PrefectServerEventsClient
        from prefect.server.events.schemas.events import Event
        from prefect.types._datetime import now

        event = Event(occurred=now("UTC"), event=name, id=uuid7(),
                      resource={"prefect.resource.id": f"prefect.deployment.{task_id}",
                                "prefect.resource.name": title},
                      related=await self._related(session, flow_id, queue_id, flow_name), payload=payload or {})
        async with PrefectServerEventsClient() as events:
            await events.emit(event)

    async def _related(self, session, flow_id: uuid.UUID, queue_id: uuid.UUID | None,
                       flow_name: str | None = None) -> list[dict[str, str]]:
        """What prefect.server.models.events._deployment_related_resources lists, kept for
        Prefect's related-resource cache TTL as Prefect keeps a flow run's: the flow (each task's
        own; its name given by a Create, which just wrote it) and the queue with its pool (one
        for every task)."""
        global _RELATED
        if _RELATED is None:
            from cachetools import TTLCache
            from prefect.settings import PREFECT_API_EVENTS_RELATED_RESOURCE_CACHE_TTL

            _RELATED = TTLCache(maxsize=20_000, ttl=PREFECT_API_EVENTS_RELATED_RESOURCE_CACHE_TTL.value().total_seconds())
        F = self.db.Flow
        flow_key = (id(self.db), "flow", flow_id)
        if flow_name is not None:
            _RELATED[flow_key] = [(flow_id, flow_name)]
        if (flow := _RELATED.get(flow_key)) is None:
            flow = _RELATED[flow_key] = (await session.execute(sa.select(F.id, F.name).where(F.id == flow_id))).all()
        related = [{"prefect.resource.id": f"prefect.flow.{i}", "prefect.resource.name": n,
                    "prefect.resource.role": "flow"} for i, n in flow]
        if queue_id is None:
            return related
        queue_key = (id(self.db), "queue", queue_id)
        if (queue := _RELATED.get(queue_key)) is None:
            queue = _RELATED[queue_key] = await self._read_queue_related(session, queue_id)
        return related + [dict(r) for r in queue]

    async def _read_queue_related(self, session, queue_id: uuid.UUID) -> list[dict[str, str]]:
        Q, P = self.db.WorkQueue, self.db.WorkPool
        related = []
        row = (await session.execute(sa.select(Q.id, Q.name, P.id.label("pool_id"), P.name.label("pool"), P.type)
                                     .outerjoin(P, P.id == Q.work_pool_id).where(Q.id == queue_id))).first()
        if row is not None:
            related.append({"prefect.resource.id": f"prefect.work-queue.{row.id}",
                            "prefect.resource.name": row.name, "prefect.resource.role": "work-queue"})
            if row.pool_id is not None:
                related.append({"prefect.resource.id": f"prefect.work-pool.{row.pool_id}",
                                "prefect.resource.name": row.pool, "prefect.work-pool.type": row.type,
                                "prefect.resource.role": "work-pool"})
        return related

    async def delete(self, task_id: uuid.UUID, parents: list[TaskRecord]) -> bool:
        """Delete a task and drop it from its parents' Nexts, in one transaction."""
        from prefect.server import models

        await run_counts.ensure()
        async with self._write() as session:
            await run_counts.forget(session, task_id)
            for parent in parents:
                nexts = [n for n in parent.spec.Nexts if n != str(task_id)]
                await self._update(session, parent.id, parent.spec.model_copy(update={"Nexts": nexts}),
                                   parent.status, schedule=False)
            # its flow stays (Prefect would delete its runs with it), marked, with the history
            await session.execute(sa.update(self.db.Flow).where(self.db.Flow.id == task_id).values(
                tags=[TAG, DELETED_TAG]))
            return await models.deployments.delete_deployment(session=session, deployment_id=task_id)

    async def run_stats_of(self, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, datetime | None]]:
        """(TotalRunCount, LastRunTime) of many tasks: their counters (deployments/run_counts.py),
        one indexed read whatever their histories hold."""
        if not task_ids:
            return {}
        await run_counts.ensure()
        async with self._read() as session:
            return await run_counts.read(session, task_ids)

    async def run_stats(self, task_id: uuid.UUID) -> tuple[int, datetime | None]:
        """(TotalRunCount, LastRunTime): successful runs, from Prefect's own run records."""
        return (await self.run_stats_of([task_id])).get(task_id, (0, None))
