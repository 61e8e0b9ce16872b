"""Runs that become Completed through Prefect's API are counted for their task
(deployments/run_counts.py): RunOnce, runs started from the UI, a plugin's Start, anything a
worker or a user moves to COMPLETED. Runs written already over are counted where they are
written (master/bulk_runs.py).

``CompletedRuns`` wraps Prefect's app, reads the answer of each ``POST
/api/flow_runs/{id}/set_state`` and, when orchestration accepted a COMPLETED state, counts the
run after the answer is sent (a separate transaction: a master that dies in between leaves that
one run uncounted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

import sqlalchemy as sa

from schedulemaster.deployments import run_counts
from schedulemaster.master.answers import pass_through

log = logging.getLogger("schedulemaster.record")

_SET_STATE = re.compile(r"/api/flow_runs/([0-9a-fA-F-]{36})/set_state/?$")
MAX_ANSWER = 64_000  # an orchestration answer larger than this is not read (a state is far smaller)


class CompletedRuns:
    """ASGI middleware around Prefect's app (see the module's docstring)."""

    def __init__(self, app):
        self.app = app
        self._pending: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        match = (_SET_STATE.search(scope.get("path", "")) if scope.get("type") == "http"
                 and scope.get("method") == "POST" else None)
        if match is None:
            return await self.app(scope, receive, send)
        status, text = await pass_through(self.app, scope, receive, send, MAX_ANSWER)
        if status is not None and 200 <= status < 300 and accepted_completed(text):
            task = asyncio.create_task(count_completed(uuid.UUID(match.group(1))))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)


async def count_completed(run_id: uuid.UUID) -> None:
    """Count one run that became Completed for its task."""
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    try:
        await run_counts.ensure()
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            row = (await session.execute(sa.select(db.FlowRun.deployment_id, db.FlowRun.end_time)
                                         .where(db.FlowRun.id == run_id))).first()
            if row is not None and row.deployment_id is not None:
                await run_counts.add(session, {row.deployment_id: (1, row.end_time)})
    except Exception:  # the run is Completed either way; only its count is short by one
        log.exception("counting the completed run %s failed", run_id)


def accepted_completed(text: str | None) -> bool:
    """Whether an orchestration answer accepted a COMPLETED state."""
    try:
        answer: Any = json.loads(text) if text else None
    except ValueError:
        return False
    return (isinstance(answer, dict) and answer.get("status") == "ACCEPT"
            and isinstance(answer.get("state"), dict) and answer["state"].get("type") == "COMPLETED")


__all__ = ["CompletedRuns", "accepted_completed", "count_completed"]
