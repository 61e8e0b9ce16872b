"""Each task's successful runs and its last one (the original's TotalRunCount and LastRunTime),
kept as counters in a table beside Prefect's ``flow_run``.

Counted over ``flow_run`` instead, QueryList, QueryTaskDetail, the console and ``sm.tasks()`` cost
what the tasks' histories hold: QueryTaskDetail of a task with 100,000 runs took ~200 ms
(README, Many tasks), and a system firing 1,200 times a minute writes 1.7 million runs a day.
Prefect keeps no such numbers, so they are kept here, and written where a run becomes Completed:

* runs written already over (the nodes' firings, failover, the import's history) in the
  transaction that inserts them (master/bulk_runs.py);
* runs that become Completed through Prefect's API (RunOnce, runs started in the UI, the
  worker path) by master/completed_runs.py, which wraps Prefect's app and counts each
  accepted ``set_state`` to COMPLETED after its answer.

Like the original's counter, a count never goes down (a run deleted or marked failed later
stays counted). The table is made, and filled from ``flow_run`` once (``ensure``): a system that
ran an older version keeps its numbers. ``ensure`` opens its own transaction, so every caller
calls it before opening the one ``add``, ``read`` or ``forget`` write in (on SQLite a second
writer inside a write transaction waits the busy timeout for its own lock).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from datetime import datetime

import sqlalchemy as sa

log = logging.getLogger("schedulemaster.record")

_ready = False
_lock = asyncio.Lock()


@functools.cache
def table() -> sa.Table:
    """``sm_task_run_count``, in Prefect's database with Prefect's own column types (its ids
    are then compared as Prefect stores them). A plain Core table built on first use, not a
    SQLModel class: this module is imported by deployments/tasks.py, which nodes load before
    Prefect's settings are set, so Prefect's types are imported here only when needed."""
    from prefect.server.utilities.database import UUID, Timestamp

    return sa.Table("sm_task_run_count", sa.MetaData(),
                    sa.Column("task_id", UUID(), primary_key=True),
                    sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
                    sa.Column("last_run", Timestamp(), nullable=True))


async def ensure() -> None:
    """Make the table, filled from Prefect's runs, unless it exists (once per process)."""
    global _ready
    if _ready:
        return
    from prefect.server.database import provide_database_interface
    from prefect.server.schemas.states import StateType

    async with _lock:
        if _ready:
            return
        db = provide_database_interface()
        F, T = db.FlowRun, table()
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            conn = await session.connection()
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table(T.name)):
                await conn.run_sync(lambda c: T.create(c))
                filled = await session.execute(sa.insert(T).from_select(
                    ["task_id", "completed", "last_run"],
                    sa.select(F.deployment_id, sa.func.count(), sa.func.max(F.end_time))
                    .where(F.state_type == StateType.COMPLETED, F.deployment_id.is_not(None))
                    .group_by(F.deployment_id)))
                log.info("run counts made for %d tasks from their runs", filled.rowcount)
        _ready = True


def _made() -> None:
    if not _ready:
        raise RuntimeError("run_counts.ensure() was not awaited before this transaction")


async def add(session, done: dict[uuid.UUID, tuple[int, datetime | None]]) -> None:
    """Count ``done`` (task id -> (runs completed, the last one's end)) in ``session``'s transaction."""
    if not done:
        return
    _made()
    T = table()
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    stmt = insert(T)
    newer = sa.or_(T.c.last_run.is_(None), stmt.excluded.last_run > T.c.last_run)
    stmt = stmt.on_conflict_do_update(index_elements=[T.c.task_id], set_={
        "completed": T.c.completed + stmt.excluded.completed,
        "last_run": sa.case((newer, stmt.excluded.last_run), else_=T.c.last_run)})
    await session.execute(stmt, [{"task_id": tid, "completed": n, "last_run": last}
                                 for tid, (n, last) in done.items()])


def tally(runs) -> dict[uuid.UUID, tuple[int, datetime | None]]:
    """What ``add`` takes, from runs written Completed (``schemas.core.FlowRun`` with its state)."""
    out: dict[uuid.UUID, tuple[int, datetime | None]] = {}
    for run in runs:
        if run.deployment_id is None or run.state is None or run.state.type.value != "COMPLETED":
            continue
        n, last = out.get(run.deployment_id, (0, None))
        at = run.state.timestamp
        out[run.deployment_id] = (n + 1, at if last is None or at > last else last)
    return out


async def read(session, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, datetime | None]]:
    """(runs completed, the last one's end) of each of these tasks that has run."""
    if not task_ids:
        return {}
    _made()
    T = table()
    rows = (await session.execute(sa.select(T.c.task_id, T.c.completed, T.c.last_run)
                                  .where(T.c.task_id.in_(task_ids)))).all()
    return {row[0]: (row[1], row[2]) for row in rows}


async def forget(session, task_id: uuid.UUID) -> None:
    """A deleted task's counters go with it."""
    _made()
    T = table()
    await session.execute(sa.delete(T).where(T.c.task_id == task_id))


__all__ = ["add", "ensure", "forget", "read", "table", "tally"]
