"""Nodes hear at once that a flow run waits for a worker, instead of at their next poll.

RunOnce, a plugin Start, a Next sent to another node and a run started from Prefect's UI are
flow runs in a node's work queue (the worker path, schedulemaster/node/worker.py); a node reads
its queues once a second, so each waited half a second on average and up to a second and a
half (bench/commands.py). Every such run is created through Prefect's API on the master
(``POST /api/deployments/{id}/create_flow_run``), whoever asks: the legacy API, a node, the
UI. ``NewRuns`` wraps Prefect's app and, when such a call has answered 2xx (the run is
committed), moves a token that nodes wait on (``POST /api/schedulemaster/work/wait``, a long
poll like ``tasks/changes``); a node whose wait returns reads its queues at once. The run is
still taken the usual way (the worker proposes Pending, and only one proposal wins), so a
missed wake-up costs only the time to the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

#: the calls that create a flow run a worker may take
_CREATES = re.compile(r"/api/(?:deployments/[0-9a-fA-F-]{36}/create_flow_run|flow_runs)/?$")


class NewRuns:
    """ASGI middleware around Prefect's app, and the token nodes wait on."""

    def __init__(self, app):
        self.app = app
        self._boot = uuid.uuid4().hex[:8]  # a restarted master's count starts again: a new token
        self._count = 0
        self._moved = asyncio.Event()
        self._released = False

    @property
    def token(self) -> str:
        return f"{self._boot}:{self._count}"

    def created(self) -> None:
        """A run was created: wake every waiting node."""
        self._count += 1
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait(self, token: str, seconds: float) -> str:
        """The current token, once it differs from ``token`` or ``seconds`` have passed."""
        if token == self.token and not self._released:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), seconds)
        return self.token

    def release(self) -> None:
        """Answer every waiting node now, and any later one at once (the master is stopping)."""
        self._released = True
        self._moved.set()

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not _CREATES.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        status = None

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status is not None and 200 <= status < 300:
            self.created()


__all__ = ["NewRuns"]
