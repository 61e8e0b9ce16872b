"""Paths and models of the master's own endpoints, shared by the master and its callers.

The endpoints live under ``/schedulemaster`` inside Prefect's API app on the master, so
Prefect's credential guards them; nodes also send the token the master gave them at
registration (NODE_TOKEN_HEADER).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID
from zoneinfo import ZoneInfo

from typing import Literal

from pydantic import BaseModel, Field

from schedulemaster.deployments.tasks import run_name

PREFIX = "/schedulemaster"  # relative to the Prefect API URL
REGISTER_PATH = PREFIX + "/nodes/register"
NODES_PATH = PREFIX + "/nodes"
CLAIMS_PATH = PREFIX + "/claims"
RELEASE_PATH = PREFIX + "/claims/release"
LATEST_PATH = PREFIX + "/claims/latest"
FIRINGS_PATH = PREFIX + "/firings"
FAILURES_PATH = PREFIX + "/failures"
PACKAGE_PATH = PREFIX + "/plugins/{name}"
TASK_VERSIONS_PATH = PREFIX + "/tasks/versions"
TASKS_READ_PATH = PREFIX + "/tasks/read"
TASK_CHANGES_PATH = PREFIX + "/tasks/changes"
WORK_WAIT_PATH = PREFIX + "/work/wait"  # a flow run for a worker was created (master/new_runs.py)
TASK_TROUBLE_PATH = PREFIX + "/tasks/trouble"  # a task's plugin does not load (master/task_trouble.py)

NODE_TOKEN_HEADER = "x-sm-node-token"  # the secret a node was given at registration
NAME = r"^[^/%\s][^/%]{0,98}[^/%\s]$|^[^/%\s]$"  # a node name (also a work-queue suffix)
MAX_CLAIMS = 1000  # claims or reports per call
MAX_RECORDS = 1000  # firing records per call
MAX_LOGS_PER_FIRING = 50
MAX_TASKS = 1000  # task rows per read (ids asked for, or a page)
MAX_CHANGE_WAIT = 30.0  # seconds a node may wait for a change of the task book


# ---- nodes ------------------------------------------------------------------------------

class NodeRegistration(BaseModel):
    name: str = Field(pattern=NAME, max_length=100)
    priority: int = Field(ge=0, le=1000)
    max_concurrency: int = Field(ge=1, le=1000)
    incarnation: UUID
    host: str = Field(default="", max_length=200)


class Registered(BaseModel):
    registered: str
    #: sent back with every later call of this process (NODE_TOKEN_HEADER)
    token: str


class NodeRow(BaseModel):
    """A registered node as ``GET /schedulemaster/nodes`` lists it."""

    name: str
    priority: int
    max_concurrency: int
    host: str = ""
    started_at: datetime
    running: int = 0


# ---- the task book -------------------------------------------------------------------------

class VersionsRequest(BaseModel):
    """Which tasks changed: those updated at or after ``since``; every task when None."""

    since: datetime | None = None


class TaskVersion(BaseModel):
    id: UUID
    updated: datetime


class TaskVersions(BaseModel):
    """``as_of``: the master's clock before it looked (the next ``since``, less an overlap);
    ``count``: how many tasks exist, so a node notices deletions without reading them all."""

    as_of: datetime
    count: int
    tasks: list[TaskVersion]
    #: the task book's change token as of this answer (ChangesRequest)
    token: str = ""


class ChangesRequest(BaseModel):
    """Answer once the task book's change token differs from ``token`` (at once when it
    already does), or after ``wait`` seconds (schedulemaster/master/task_changes.py)."""

    token: str = Field(max_length=100)
    wait: float = Field(ge=0, le=MAX_CHANGE_WAIT)


class ChangeToken(BaseModel):
    token: str


class WorkToken(ChangeToken):
    """The new-runs token, and the runs created since the token asked about (each as Prefect's
    API answers a flow run, JSON); None when the master does not hold them all
    (schedulemaster/master/new_runs.py)."""

    runs: list[str] | None = None


class PageMark(BaseModel):
    """The last row of a page of tasks (newest first): the next page starts after it."""

    created: datetime
    id: UUID


class TasksRequest(BaseModel):
    """These tasks (``ids``), or a page of every task, newest first: after ``offset`` rows, or
    (cheaper far into the list: nothing is skipped row by row) the tasks older than ``before``."""

    ids: list[UUID] | None = Field(default=None, max_length=MAX_TASKS)
    offset: int = Field(default=0, ge=0)
    before: PageMark | None = None
    limit: int = Field(default=200, ge=1, le=MAX_TASKS)
    #: also each task's successful runs and the end of the last one (QueryList's numbers)
    stats: bool = False


class TaskColumns(BaseModel):
    """A task deployment's columns but its parameters (``tasks_page_json`` adds them as text)."""

    id: UUID
    name: str
    tags: list[str]
    paused: bool
    created: datetime
    updated: datetime
    total_runs: int | None = None  # with ``stats``
    last_run: datetime | None = None


class TaskRow(TaskColumns):
    """A task deployment's columns that make its TaskRecord (deployments/tasks.record_of)."""

    parameters: dict


class TasksPage(BaseModel):
    total: int
    rows: list[TaskRow]


def tasks_page_json(total: int, rows: list[tuple[TaskColumns, str]]) -> bytes:
    """A TasksPage as JSON, each row's parameters spliced in as the database holds them (JSON
    text it wrote): decoding them to re-encode them was most of the master's cost of a page.
    Written by hand because pydantic has no raw-JSON field to embed text as it is."""
    parts = [columns.model_dump_json().encode()[:-1] + b',"parameters":' + (text or "{}").encode() + b"}"
             for columns, text in rows]
    return b'{"total":%d,"rows":[%s]}' % (total, b",".join(parts))


# ---- claims -----------------------------------------------------------------------------

class ClaimItem(BaseModel):
    firing_id: str = Field(min_length=1, max_length=64)
    task_id: UUID
    scheduled: datetime


class DoneItem(BaseModel):
    firing_id: str = Field(min_length=1, max_length=64)
    ok: bool


class ClaimRequest(BaseModel):
    node: str = Field(pattern=NAME, max_length=100)
    incarnation: UUID
    firings: list[ClaimItem] = Field(max_length=MAX_CLAIMS)
    #: firings this node ran since its last call: their claims end (store/claims.fired)
    done: list[DoneItem] = Field(default_factory=list, max_length=MAX_CLAIMS)


class ClaimResult(BaseModel):
    won: list[str]
    #: another process registered under this node's name since: this one must stop firing
    superseded: bool = False


class Released(BaseModel):
    released: int


MAX_LATEST = 10_000  # tasks per latest-instants call (the client splits a longer list)


class LatestRequest(BaseModel):
    task_ids: list[UUID] = Field(max_length=MAX_LATEST)


# ---- firings ----------------------------------------------------------------------------

class FiringLog(BaseModel):
    level: int = Field(ge=0, le=100)
    message: str = Field(max_length=20_000)
    timestamp: datetime


class FiringRecord(BaseModel):
    """A firing as the master writes it into Prefect: one flow run of its task's deployment."""

    task_id: UUID
    firing_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    scheduled: datetime
    started: datetime
    finished: datetime
    ok: bool
    message: str = Field(default="", max_length=2000)
    #: the run's ``fire`` parameter: node, times, lateness, status code, parent
    fire: dict = Field(default_factory=dict)
    parent_firing_id: str | None = Field(default=None, max_length=200)
    #: the parent's task: its runs are on that task's own flow, where the link looks
    parent_task_id: UUID | None = None
    logs: list[FiringLog] = Field(default_factory=list, max_length=MAX_LOGS_PER_FIRING)
    #: a firing that did not run to its end: the name of its CANCELLED-type state (cancelled by
    #: a newer firing, skipped while the previous ran, missed: later than the misfire threshold)
    not_run: Literal["", "Cancelled", "Skipped", "Missed"] = ""
    #: which attempt of the firing this is (its task's Retries), and whether it is the last one:
    #: the keepers are told of a failure only after the last
    attempt: int = Field(default=1, ge=1, le=100)
    last_attempt: bool = True


class RecordResult(BaseModel):
    recorded: int
    unknown_tasks: list[UUID]


class RunFailure(BaseModel):
    """A worker-path run (RunOnce, a child, a UI run) that failed: reported for the keepers."""

    task_id: UUID
    run_id: UUID
    message: str = Field(default="", max_length=2000)
    detail: str = Field(default="", max_length=20_000)
    when: datetime


class TaskTrouble(BaseModel):
    """A node cannot load a Running task's plugin (``message``), or can again (empty)."""

    task_id: UUID
    node: str = Field(pattern=NAME, max_length=100)
    message: str = Field(default="", max_length=2000)


class KnownTask(BaseModel):
    known_task: bool


@dataclass
class Firing:
    """One firing as the process that saw it end knows it: a node, or the master's failover
    recording a dead node's firings on its behalf."""

    task_id: UUID
    firing_id: str
    title: str
    scheduled: datetime
    started: datetime
    finished: datetime
    ok: bool
    message: str
    node: str
    status_code: int | None = None
    logs: list[tuple[int, str, datetime]] = field(default_factory=list)
    zone: str = "UTC"  # the task's time zone, for the run's name
    parent: str | None = None  # the parent's firing id when a Next triggered this firing
    parent_task: UUID | None = None  # ... and the parent's task
    not_run: str = ""  # FiringRecord.not_run
    attempt: int = 1
    last_attempt: bool = True
    #: the attempt's own id (the run's idempotency key); the firing id when empty
    record_id: str = ""
    missed: int = 0  # a Missed record: how many instants it stands for
    #: the node saw it start later than its task's AlarmLateSeconds: the master reads the
    #: task's spec for its alarm (it reads none for late firings of tasks without one)
    late_alarm: bool = False

    @property
    def lateness_ms(self) -> float:
        return (self.started - self.scheduled).total_seconds() * 1000

    def record(self) -> FiringRecord:
        """What the master records; texts cut to what it takes."""
        what = f"{self.scheduled.astimezone(ZoneInfo(self.zone)):%Y-%m-%d %H:%M:%S}"
        if self.attempt > 1:
            what += f" · attempt {self.attempt}"
        elif self.not_run:
            what += f" · {self.not_run.lower()}"
        return FiringRecord(
            task_id=self.task_id, firing_id=self.record_id or self.firing_id,
            name=run_name(self.title, what), not_run=self.not_run, attempt=self.attempt,
            last_attempt=self.last_attempt,
            scheduled=self.scheduled, started=self.started, finished=self.finished, ok=self.ok,
            message=self.message[:2000],
            fire={"firing_id": self.firing_id, "node": self.node, "scheduled": self.scheduled.isoformat(),
                  "started": self.started.isoformat(), "finished": self.finished.isoformat(),
                  "lateness_ms": round(self.lateness_ms, 1), "status_code": self.status_code,
                  "ok": self.ok, "parent": self.parent,
                  **({"attempt": self.attempt} if self.attempt > 1 or not self.last_attempt else {}),
                  **({"not_run": self.not_run} if self.not_run else {}),
                  **({"missed": self.missed} if self.missed else {}),
                  **({"late_alarm": True} if self.late_alarm else {})},
            parent_firing_id=self.parent, parent_task_id=self.parent_task,
            logs=[FiringLog(level=level, message=msg[:20_000], timestamp=ts)
                  for level, msg, ts in self.logs[:MAX_LOGS_PER_FIRING]])
