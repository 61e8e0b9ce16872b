"""Each Running task's next fire time where Prefect's UI looks for one: a Scheduled run.

Prefect's UI tells what comes next from Scheduled flow runs only: the Flows page's "Next run"
(``/ui/flows/next-runs``: each flow's Scheduled run with the earliest next start) and a
deployment's Upcoming tab (its runs in the state named Scheduled). A task's firings are not
such runs (its node fires them; deployments/prefect_schedule.py says why), so the master keeps
one stand-in run per Running task: Scheduled at the task's next instant, with the id
``upcoming_run_id(task)`` and the tag ``sm:upcoming``, in no work queue, so that no worker and
no node ever takes it (both read the runs of their own queues only). When its instant passes,
the row moves to the next one in place; a task that stops running, or whose schedule has
ended, loses it; Prefect deletes it with the task's deployment. The project's run lists
(QueryTraces, the console, ``sm.runs``) leave it out.

What it costs follows the changes and the firings, not the number of tasks: the task book is
followed as a node follows it (its change token, then ``versions`` of what changed), and the
stand-ins that fell due are moved together once a second (at 10,000 tasks firing once a
minute, about 170 rows a second). A stand-in emits no event: it is no firing, and 170 events a
second would bury the real ones. If this service stalled for 15 s, Prefect's MarkLateRuns would
turn a stand-in Late; the next move makes it Scheduled again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from schedulemaster.deployments import plan, quartz
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.deployments.tasks import (TAG, UPCOMING_TAG, Status, TaskRepository, record_of, run_name,
                                              upcoming_run_id)
from schedulemaster.master import bulk_runs
from schedulemaster.sqlite_rows import update_rows
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

    return schemas.core.FlowRun(
        id=upcoming_run_id(task.id), name=_name(task, at),
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
        #: (instant, task id) of each shown stand-in, soonest first: finding the due ones scanned
        #: every shown task each second (5.5 ms at 10,000). An entry whose task moved on or went
        #: since is skipped when it comes up.
        self._due: list[tuple[datetime, uuid.UUID]] = []
        self._as_of: datetime | None = None
        self._token: str | None = None
        self._last_full = float("-inf")

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.look()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a busy database: the next look does it
                failures += 1
                log.warning("keeping the tasks' next fire times in Prefect failed (%d in a row): %s", failures, exc)
            # a failed look starts over from every Running task: one that keeps failing (a
            # fault, not a busy moment) is tried less often, up to once a minute, rather than
            # rewriting thousands of stand-ins every second
            await asyncio.sleep(LOOK_EVERY * 2 ** min(failures, 6))

    async def clear(self) -> int:
        """Remove every task's stand-in (the service switched off); returns how many there were."""
        import sqlalchemy as sa

        _count, rows, _token = await self.repo.versions(None)
        ids = [upcoming_run_id(tid) for tid, _ in rows]
        removed = 0
        async with self.repo.db.session_context(begin_transaction=True, with_for_update=True) as session:
            for i in range(0, len(ids), CHUNK):
                result = await session.execute(sa.delete(self.repo.db.FlowRun).where(
                    self.repo.db.FlowRun.id.in_(ids[i:i + CHUNK])))
                removed += result.rowcount
        return removed

    async def look(self, now: datetime | None = None) -> int:
        """Follow the task book's changes and move the stand-ins that fell due; returns how
        many stand-ins were written or removed."""
        now = now or utcnow()
        try:
            stale, gone = await self._changes()
            wanted: dict[uuid.UUID, Shown | None] = dict.fromkeys(gone)
            wanted.update(await self._running(stale))
            while self._due and self._due[0][0] <= now:
                at, tid = heapq.heappop(self._due)
                task = self.shown.get(tid)
                if tid not in wanted and task is not None and task.at == at:
                    wanted[tid] = task
            puts, drops = [], []
            for tid, task in wanted.items():
                at = _next(task, now) if task is not None else None
                if at is None:
                    self.shown.pop(tid, None)
                    drops.append(tid)
                else:
                    task.at = at
                    self.shown[tid] = task
                    heapq.heappush(self._due, (at, tid))
                    puts.append(task)
            await self._write(puts, drops)
        except BaseException:
            # what was read is not written: the next look starts over from every task
            self.versions.clear()
            self.shown.clear()
            self._due.clear()
            self._as_of = None
            raise
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
        """Show ``puts`` at their instants and remove the stand-ins of ``drops``, in one
        transaction: a stand-in still Scheduled is moved in place, a few columns of its run
        and state rows; any other (Late, cancelled) is written anew (bulk_runs, as Prefect would)."""
        import sqlalchemy as sa
        from prefect.server.schemas.states import StateType

        if not puts and not drops:
            return
        db = self.repo.db
        F = db.FlowRun
        wanted = {upcoming_run_id(t.id): t for t in puts}
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            there: set[uuid.UUID] = set()
            ids = list(wanted)
            # only a stand-in whose one state is its own Scheduled is moved in place: one that
            # Prefect marked Late (a master too busy to move it in time) has a second state row,
            # and moving both to one timestamp broke their unique key, failing every later write
            for i in range(0, len(ids), CHUNK):
                there.update((await session.execute(sa.select(F.id).where(
                    F.id.in_(ids[i:i + CHUNK]), F.state_type == StateType.SCHEDULED,
                    F.state_name == "Scheduled"))).scalars())
            await _move(session, db, [(rid, t) for rid, t in wanted.items() if rid in there])
            new = [t for rid, t in wanted.items() if rid not in there]
            # a stand-in in another state (an operator cancelled it) is replaced; its state rows
            # go with it (ON DELETE CASCADE)
            gone = [upcoming_run_id(i) for i in drops] + [upcoming_run_id(t.id) for t in new]
            for i in range(0, len(gone), CHUNK):
                await session.execute(sa.delete(F).where(F.id.in_(gone[i:i + CHUNK])))
            labels = {t.id: t.labels for t in new}
            for i in range(0, len(new), CHUNK):
                await bulk_runs.insert_runs(session, [stand_in(t, t.at) for t in new[i:i + CHUNK]], labels)


def _next(task: Shown, now: datetime) -> datetime | None:
    """The task's next instant after ``now``; None for a cron that does not parse (none should
    reach here: the API refuses them; an older row must not stop every other stand-in)."""
    try:
        return plan.next_fire(task.spec, now)
    except quartz.CronError:
        return None


def _name(task: Shown, at: datetime) -> str:
    return run_name(task.spec.Title, f"next fire {at.astimezone(ZoneInfo(task.spec.TimeZone)):%Y-%m-%d %H:%M:%S}")


async def _move(session, db, moves: list[tuple[uuid.UUID, Shown]]) -> None:
    """Stand-ins to their tasks' new instants: what differs from a stand-in written anew at
    that instant (its name, start times, state time and scheduled time), one statement per
    table (sqlite_rows.update_rows) instead of a delete and two inserts through pydantic
    models: about a third of the CPU per stand-in (bench/upcoming.py; README, Next fire times)."""
    from prefect.server.schemas.states import StateDetails
    from prefect.types._datetime import now

    if not moves:
        return
    stamp = now("UTC")
    await update_rows(session, db.FlowRun.__table__, "id", [
        {"id": rid, "name": _name(t, t.at), "expected_start_time": t.at, "next_scheduled_start_time": t.at,
         "state_name": "Scheduled", "state_timestamp": stamp, "updated": stamp} for rid, t in moves])
    await update_rows(session, db.FlowRunState.__table__, "flow_run_id", [
        {"flow_run_id": rid, "name": "Scheduled", "timestamp": stamp, "message": MESSAGE,
         "state_details": StateDetails(flow_run_id=rid, scheduled_time=t.at), "updated": stamp}
        for rid, t in moves])


__all__ = ["Upcoming", "stand_in"]
