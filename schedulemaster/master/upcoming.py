"""Each Running task's next fire time where Prefect's UI looks for one: a Scheduled run.

Prefect's UI tells what comes next from Scheduled flow runs only: the Flows page's "Next run"
(``/ui/flows/next-runs``: each flow's Scheduled run with the earliest next start) and a
deployment's Upcoming tab (its runs in the state named Scheduled). A task's firings are not
such runs (its node fires them; deployments/prefect_schedule.py says why), so the master keeps
one stand-in run per Running task: Scheduled at the task's next instant, with the id
``upcoming_run_id(task)`` and the tag ``sm:upcoming``, in no work queue, so that no worker and
no node ever takes it (both read the runs of their own queues only). When its instant passes,
the row is written again for the next one; a task that stops running, or whose schedule has
ended, loses it; Prefect deletes it with the task's deployment. The project's run lists
(QueryTraces, the console, ``sm.runs``) leave it out.

What it costs follows the changes and the firings, not the number of tasks: the task book is
followed as a node follows it (its change token, then ``versions`` of what changed), and the
stand-ins that fell due are rewritten together once a second (at 10,000 tasks firing once a
minute, about 170 rows a second). A stand-in emits no event: it is no firing, and 170 events a
second would bury the real ones. If this service stalled for 15 s, Prefect's MarkLateRuns would
turn a stand-in Late; the next rewrite makes it Scheduled again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from schedulemaster.deployments import plan
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.deployments.tasks import (TAG, UPCOMING_TAG, Status, TaskRepository, record_of, run_name,
                                              upcoming_run_id)
from schedulemaster.master import bulk_runs
from schedulemaster.timeutil import utcnow

log = logging.getLogger("schedulemaster.upcoming")

LOOK_EVERY = 1.0
#: every version compared again this often (a change that committed later than its timestamp
#: by more than VERSION_OVERLAP, on PostgreSQL)
RECONCILE_SECONDS = 60.0
VERSION_OVERLAP = timedelta(seconds=5)
#: rows per statement (SQLite takes at most 32,766 parameters)
CHUNK = 500
MESSAGE = "the next fire time of this task: its node fires it then, as its own run; this run never runs"


@dataclass
class Shown:
    """A Running task as its stand-in shows it."""
    id: uuid.UUID
    flow_id: uuid.UUID
    version: str | None
    labels: dict
    spec: TaskSpec
    at: datetime | None = None


def stand_in(task: Shown, at: datetime):
    """The Scheduled run that says ``task`` fires next at ``at``."""
    from prefect.server import schemas

    local = at.astimezone(ZoneInfo(task.spec.TimeZone))
    return schemas.core.FlowRun(
        id=upcoming_run_id(task.id), name=run_name(task.spec.Title, f"next fire {local:%Y-%m-%d %H:%M:%S}"),
        flow_id=task.flow_id, deployment_id=task.id, deployment_version=task.version, parameters={},
        tags=[TAG, UPCOMING_TAG], idempotency_key=f"{UPCOMING_TAG}:{task.id}", auto_scheduled=False,
        expected_start_time=at, next_scheduled_start_time=at,
        state=schemas.states.Scheduled(scheduled_time=at, message=MESSAGE))


class Upcoming:
    """Keeps the stand-ins; ``look`` once a second (``run``)."""

    def __init__(self, repo: TaskRepository | None = None):
        self.repo = repo or TaskRepository()
        self.versions: dict[uuid.UUID, datetime] = {}
        self.shown: dict[uuid.UUID, Shown] = {}
        self._as_of: datetime | None = None
        self._token: str | None = None
        self._last_full = float("-inf")

    async def run(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a busy database: the next look does it
                log.warning("keeping the tasks' next fire times in Prefect failed: %s", exc)
            await asyncio.sleep(LOOK_EVERY)

    async def look(self, now: datetime | None = None) -> int:
        """Follow the task book's changes and move the stand-ins that fell due; returns how
        many stand-ins were written or removed."""
        now = now or utcnow()
        stale, gone = await self._changes()
        wanted: dict[uuid.UUID, Shown | None] = dict.fromkeys(gone)
        wanted.update(await self._running(stale))
        for tid, task in self.shown.items():
            if tid not in wanted and task.at is not None and task.at <= now:
                wanted[tid] = task
        puts, drops = [], []
        for tid, task in wanted.items():
            at = plan.next_fire(task.spec, now) if task is not None else None
            if at is None:
                self.shown.pop(tid, None)
                drops.append(tid)
            else:
                task.at = at
                self.shown[tid] = task
                puts.append(task)
        await self._write(puts, drops)
        return len(puts) + len(drops)

    async def _changes(self) -> tuple[list[uuid.UUID], set[uuid.UUID]]:
        """(tasks changed since the last look, tasks gone), as schedulemaster/node/firing.py's
        sync finds them: the token first where it follows commits (SQLite), every version
        compared every RECONCILE_SECONDS and whenever the count does not add up."""
        repo, clock = self.repo, asyncio.get_running_loop().time()
        full = self._as_of is None or clock - self._last_full >= RECONCILE_SECONDS
        if not full and self._token is not None and await repo.change_token() == self._token:
            return [], set()
        as_of = utcnow()
        count, rows, token = await repo.versions(None if full else self._as_of - VERSION_OVERLAP)
        if not full and count != len(self.versions) + len({i for i, _ in rows} - self.versions.keys()):
            as_of, full = utcnow(), True
            count, rows, token = await repo.versions(None)
        if full:
            self._last_full = clock
        self._as_of, self._token = as_of, token or None
        stale = [i for i, updated in rows if self.versions.get(i) != updated]
        self.versions.update(rows)
        gone = set(self.versions) - {i for i, _ in rows} if full else set()
        for tid in gone:
            del self.versions[tid]
        return stale, gone

    async def _running(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, Shown | None]:
        """Each of these tasks as its stand-in needs it, None for one that is not Running."""
        import sqlalchemy as sa

        D = self.repo.db.Deployment
        found: dict[uuid.UUID, Shown | None] = dict.fromkeys(ids)
        for i in range(0, len(ids), CHUNK):
            async with self.repo.db.session_context() as session:
                rows = (await session.execute(sa.select(
                    D.id, D.name, D.tags, D.paused, D.parameters, D.created, D.updated, D.flow_id, D.version,
                    D.labels).where(D.id.in_(ids[i:i + CHUNK])))).all()
            for row in rows:
                rec = record_of(row)
                if rec is not None and rec.status == Status.Running:
                    found[row.id] = Shown(row.id, row.flow_id, row.version, row.labels or {}, rec.spec)
        return found

    async def _write(self, puts: list[Shown], drops: list[uuid.UUID]) -> None:
        """Replace the stand-ins of ``puts`` and remove those of ``drops``, in one transaction:
        delete by id, insert anew (bulk_runs: a run and its state in a few statements)."""
        import sqlalchemy as sa

        if not puts and not drops:
            return
        db = self.repo.db
        ids = [upcoming_run_id(t.id) for t in puts] + [upcoming_run_id(i) for i in drops]
        labels = {t.id: t.labels for t in puts}
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            for i in range(0, len(ids), CHUNK):  # its state rows go with it (ON DELETE CASCADE)
                await session.execute(sa.delete(db.FlowRun).where(db.FlowRun.id.in_(ids[i:i + CHUNK])))
            for i in range(0, len(puts), CHUNK):
                await bulk_runs.insert_runs(session, [stand_in(t, t.at) for t in puts[i:i + CHUNK]], labels)


__all__ = ["Upcoming", "stand_in"]
