"""The pool's work queues as Prefect's UI shows them: Ready while a node reads them.

A node reads its queues (``default``, ``tasks`` and ``node-<name>``) with a plain filtered read
every second (schedulemaster/node/worker.py), not through Prefect's worker-poll endpoint, whose
side effects take SQLite's write lock on every call. Prefect therefore never saw those queues
polled, and its UI showed every one "Not Ready" in red on a healthy system. The master records
those reads on the nodes' behalf with Prefect's own ``mark_work_queues_ready`` (last polled now,
Ready, an event when a queue becomes Ready): ``node-<name>`` for each node that is online and not
disabled, the shared queues while any such node exists; at once when that set changes, else every
``MARK_EVERY`` seconds. Prefect's foreman turns a queue Not Ready once its last poll is older than
its threshold (60 s by default), as it does for any worker's queue.
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


async def mark_queues(work_pool: str, names: set[str]) -> int:
    """Record a poll of the pool's queues of these names; the number of queues marked."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.models.work_queues import mark_work_queues_ready

    if not names:
        return 0
    db = provide_database_interface()
    async with db.session_context() as session:
        rows = (await session.execute(
            sa.select(db.WorkQueue.id, db.WorkQueue.status)
            .join(db.WorkPool, db.WorkPool.id == db.WorkQueue.work_pool_id)
            .where(db.WorkPool.name == work_pool, db.WorkQueue.name.in_(names)))).all()
    if rows:
        await mark_work_queues_ready(db=db, polled_work_queue_ids=[r.id for r in rows],
                                     ready_work_queue_ids=[r.id for r in rows if r.status != "READY"])
    return len(rows)


async def run(client, work_pool: str) -> None:
    """Look at the live nodes every LOOK_EVERY seconds; mark their queues when that set
    changed, and every MARK_EVERY seconds anyway."""
    loop = asyncio.get_running_loop()
    marked: set[str] = set()
    last = float("-inf")
    while True:
        try:
            names = queues_read(chain.online(await pool_workers(work_pool), await read_disabled(client)))
            if names and (names != marked or loop.time() - last >= MARK_EVERY):
                await mark_queues(work_pool, names)
                marked, last = names, loop.time()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a busy database: the next look marks them
            log.warning("marking the nodes' queues read failed: %s", exc)
        await asyncio.sleep(LOOK_EVERY)
