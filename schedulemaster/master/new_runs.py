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

The wait's answer also carries the runs created since the node's token (the create call's own
answer, as Prefect's API wrote it): the woken node takes those it owns without reading its
queues first (~35 ms of a Next on another node). When the master no longer holds them all (more
than MAX_HANDED since, or one too large to keep), the answer says so and the node reads its queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections import deque

from schedulemaster.master.answers import pass_through

#: the calls that create a flow run a worker may take
_CREATES = re.compile(r"/api/(?:deployments/[0-9a-fA-F-]{36}/create_flow_run|flow_runs)/?$")
MAX_HANDED = 64  # runs kept for the nodes' waits, newest
MAX_RUN_BYTES = 256_000  # a run's answer larger than this is not kept (the node reads its queues)


class NewRuns:
    """ASGI middleware around Prefect's app, and the token nodes wait on."""

    def __init__(self, app):
        self.app = app
        self._boot = uuid.uuid4().hex[:8]  # a restarted master's count starts again: a new token
        self._count = 0
        self._moved = asyncio.Event()
        self._released = False
        self._recent: deque[tuple[int, str | None]] = deque(maxlen=MAX_HANDED)  # (count, the run's JSON)

    @property
    def token(self) -> str:
        return f"{self._boot}:{self._count}"

    def created(self, run_json: str | None = None) -> None:
        """A run was created (``run_json``: it, as Prefect's API answers a flow run): wake every
        waiting node."""
        self._count += 1
        self._recent.append((self._count, run_json))
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait(self, token: str, seconds: float) -> str:
        """The current token, once it differs from ``token`` or ``seconds`` have passed."""
        if token == self.token and not self._released:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), seconds)
        return self.token

    def runs_since(self, token: str) -> list[str] | None:
        """The runs created after ``token``, as JSON, oldest first; None when not all are held."""
        boot, _, count = token.partition(":")
        if boot != self._boot or not count.isdigit():
            return None
        since = int(count)
        runs = [run for n, run in self._recent if n > since]
        if len(runs) != self._count - since or None in runs:
            return None
        return runs

    def release(self) -> None:
        """Answer every waiting node now, and any later one at once (the master is stopping)."""
        self._released = True
        self._moved.set()

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not _CREATES.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        status, text = await pass_through(self.app, scope, receive, send, MAX_RUN_BYTES)
        if status is not None and 200 <= status < 300:
            self.created(text)


__all__ = ["NewRuns"]
