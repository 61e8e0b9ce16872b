"""Indexes this project adds to Prefect's own tables, made at the master's start.

Prefect's foreman marks deployments NOT_READY every loop (5 s here: settings.py) with a query
on ``deployment.status`` and ``deployment.last_polled``, neither of them indexed. Task
deployments are READY and never polled (nodes fire them: TaskRepository.mark_ready), so at
10,000 tasks that query read every deployment every 5 s, inside a write transaction. With
``last_polled`` indexed it reads the few deployments a worker polls.

``CREATE INDEX IF NOT EXISTS``: made once; a later Prefect migration that rebuilds the table
drops it, and the next start makes it again.
"""

from __future__ import annotations

import logging

log = logging.getLogger("schedulemaster.master")

#: (name, table, column)
INDEXES = (("ix_sm_deployment__last_polled", "deployment", "last_polled"),)


async def ensure() -> None:
    """Make the missing ones; a failure is logged (the system works without them, slower)."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    for name, table, column in INDEXES:
        try:
            async with db.session_context(begin_transaction=True) as session:
                conn = await session.connection()
                have = await conn.run_sync(lambda c, t=table: {i["name"] for i in sa.inspect(c).get_indexes(t)})
                if name not in have:  # PostgreSQL locks the table even for one that exists
                    await session.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column})"))
        except Exception as exc:  # e.g. two masters making it at once on PostgreSQL
            log.warning("index %s on Prefect's %s not made: %s", name, table, exc)
