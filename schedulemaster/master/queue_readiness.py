"""The pool's work queues as Prefect's UI shows them: Ready while a node reads them.

A node reads its queues (``default``, ``tasks`` and ``node-<name>``) with a plain filtered read
every second (schedulemaster/node/worker.py), not through Prefect's worker-poll endpoint, whose
side effects take SQLite's write lock on every call. Prefect therefore never saw those queues
polled, and its UI showed every one "Not Ready" in red on a healthy system. The master records
those reads on the nodes' behalf with Prefect's own ``mark_work_queues_ready`` (last polled now,
Ready, an event when a queue becomes Ready): ``node-<name>`` for each node that is online and not
disabled, the shared queues while any such node exists; within ``LOOK_EVERY`` seconds of a queue
appearing or turning Not Ready, else every ``MARK_EVERY`` seconds. A queue the operator paused
stays paused. Prefect's foreman turns a queue Not Ready once its last poll is older than its
threshold (60 s by default), as it does for any worker's queue.
"""

from __future__ import annotations

import asyncio
import logging

from schedulemaster.deployments import chain
from schedulemaster.deployments.tasks import DEFAULT_QUEUE, NODE_QUEUE_PREFIX, TASKS_QUEUE
from schedulemaster.deployments.variables import read_disabled
from schedulemaster.master.coordination_api import pool_workers

log = logging.getLogger("schedulemaster.queues")

#: how often the live nodes are looked at: a node that comes up shows Ready within this
LOOK_EVERY = 5.0
#: how often the same queues' reads are recorded again: well inside the foreman's 60 s, few
#: enough writes to cost nothing
MARK_EVERY = 20.0


def queues_read(nodes: list[str]) -> set[str]:
    """The names of the queues these live, enabled nodes read."""
    if not nodes:
        return set()
    return {DEFAULT_QUEUE, TASKS_QUEUE, *(NODE_QUEUE_PREFIX + n for n in nodes)}


async def read_queues(work_pool: str, names: set[str]) -> list:
    """(id, name, status) of the pool's queues of these names that exist."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    if not names:
        return []
    db = provide_database_interface()
    async with db.session_context() as session:
        return list((await session.execute(
            sa.select(db.WorkQueue.id, db.WorkQueue.name, db.WorkQueue.status)
            .join(db.WorkPool, db.WorkPool.id == db.WorkQueue.work_pool_id)
            .where(db.WorkPool.name == work_pool, db.WorkQueue.name.in_(names)))).all())


async def mark_queues(rows: list) -> None:
    """Record a poll of these queues (rows of ``read_queues``)."""
    from prefect.server.database import provide_database_interface
    from prefect.server.models.work_queues import mark_work_queues_ready

    if rows:  # split as Prefect's own worker poll splits them: a paused queue stays paused
        await mark_work_queues_ready(db=provide_database_interface(),
                                     polled_work_queue_ids=[r.id for r in rows if r.status != "NOT_READY"],
                                     ready_work_queue_ids=[r.id for r in rows if r.status == "NOT_READY"])


async def run(client, work_pool: str) -> None:
    """Look at the live nodes and their queues every LOOK_EVERY seconds; mark the queues when
    one is new (a node came up, the tasks queue was made) or Not Ready, and every MARK_EVERY
    seconds anyway."""
    loop = asyncio.get_running_loop()
    marked: set[str] = set()
    last = float("-inf")
    while True:
        try:
            names = queues_read(chain.online(await pool_workers(work_pool), await read_disabled(client)))
            rows = await read_queues(work_pool, names)
            found = {r.name for r in rows}
            if rows and (found != marked or any(r.status == "NOT_READY" for r in rows)
                         or loop.time() - last >= MARK_EVERY):
                await mark_queues(rows)
                marked, last = found, loop.time()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a busy database: the next look marks them
            log.warning("marking the nodes' queues read failed: %s", exc)
        await asyncio.sleep(LOOK_EVERY)
