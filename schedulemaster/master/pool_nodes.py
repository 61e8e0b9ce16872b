"""The nodes as the work pool's page in Prefect's UI shows them: a line in its description.

Prefect's Workers tab has a worker's name, last heartbeat and status only; a node's priority,
max concurrency, enabled flag (休息), running firings and machine have no field there (a
worker's heartbeat carries none). The pool's page shows its description (as plain text, line
breaks folded), so the master keeps the nodes in it, one clause each: rewritten when one
changes, at most every ``WRITE_EVERY`` seconds (running firings move all the time under load).
"""

from __future__ import annotations

import asyncio
import logging

from prefect.client.schemas.actions import WorkPoolUpdate

from schedulemaster.deployments.chain import is_online
from schedulemaster.deployments.variables import read_disabled
from schedulemaster.master.coordination_api import pool_workers
from schedulemaster.store import claims

log = logging.getLogger("schedulemaster.pool_nodes")

LOOK_EVERY = 5.0
WRITE_EVERY = 20.0
INTRO = "ScheduleMaster executor nodes (kept by the master; the console's 节点 page has the same):"


def _word(value) -> str:
    """A value as the summary shows it: no separator of the summary inside it."""
    return str("" if value is None else value).replace(";", ",").replace("\n", " ")[:100]


def nodes_summary(workers, disabled: set[str], infos: dict, running: dict[str, int]) -> str:
    """The description: one clause per worker of the pool."""
    clauses = []
    for w in sorted(workers, key=lambda w: w.name):
        info = infos.get(w.name)
        facts = ["online" if is_online(w) else "offline", "disabled (休息)" if w.name in disabled else "enabled"]
        if info is not None:
            facts += [f"priority {info.priority}", f"max concurrency {info.max_concurrency}"]
        facts.append(f"running firings {running.get(w.name, 0)}")
        if info is not None and info.host:
            facts.append(f"machine {_word(info.host)}")
        clauses.append(f"{_word(w.name)} ({', '.join(facts)})")
    return f"{INTRO} {'; '.join(clauses) or 'none has registered'}."


async def run(client, work_pool: str, engine) -> None:
    """Look every LOOK_EVERY seconds; write the summary when it changed and WRITE_EVERY has passed."""
    loop = asyncio.get_running_loop()
    written, last = None, float("-inf")
    while True:
        try:
            infos = await asyncio.to_thread(claims.nodes, engine)
            running = await asyncio.to_thread(claims.running_counts, engine)
            summary = nodes_summary(await pool_workers(work_pool), await read_disabled(client), infos, running)
            if summary != written and loop.time() - last >= WRITE_EVERY:
                await client.update_work_pool(work_pool, WorkPoolUpdate(description=summary))
                written, last = summary, loop.time()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a busy database: the next look writes it
            log.warning("writing the nodes into the work pool's description failed: %s", exc)
        await asyncio.sleep(LOOK_EVERY)
