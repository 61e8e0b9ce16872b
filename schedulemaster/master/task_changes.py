"""Nodes wait here for the task book to change instead of asking every second.

A node (schedulemaster/node/firing.py) keeps its task book with ``/tasks/versions``; between
two looks it asks ``/tasks/changes`` with the change token of its last look, and the answer
comes when the token differs, or after the wait it asked for. One watcher per master reads
the token once a second while anyone waits (TaskRepository.change_token: two index reads),
so an idle system costs one cheap query a second however many nodes wait, instead of one
HTTP request per node per second; and the cost of keeping nodes in sync follows the changes,
not the number of tasks.

SQLite only: its writers take turns (IMMEDIATE transactions), so ``updated`` grows in commit
order and the token (how many deployments, the newest ``updated``) moves with every committed
change. On PostgreSQL a transaction may commit after a later one with an older ``updated``;
there the answer comes at once, and nodes look every second as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from schedulemaster.deployments.tasks import TaskRepository

log = logging.getLogger("schedulemaster.master")

POLL_SECONDS = 1.0  # how often the watcher reads the token while a node waits


class TaskChanges:
    def __init__(self):
        self._token: str | None = None
        self._changed = asyncio.Event()
        self._waiters = 0
        self._watcher: asyncio.Task | None = None
        self._released = False

    async def wait(self, token: str, seconds: float) -> str:
        """The current token, once it differs from ``token`` or ``seconds`` have passed."""
        repo = TaskRepository()
        if not repo.tokens_follow_commits or self._released:
            return await repo.change_token()
        if token != self._token:  # maybe a change the watcher has not read yet
            self._token = await repo.change_token()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self._waiters += 1
        try:
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch(), name="task-changes")
            while self._token == token and not self._released and (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
            return self._token
        finally:
            self._waiters -= 1

    def release(self) -> None:
        """Answer every waiting node now, and any later one at once (the master is stopping)."""
        self._released = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _watch(self) -> None:
        repo = TaskRepository()
        while self._waiters > 0 and not self._released:
            await asyncio.sleep(POLL_SECONDS)
            try:
                token = await repo.change_token()
            except Exception as exc:  # the database is busy or away: the waits time out meanwhile
                log.warning("cannot read the task book's change token: %s", exc)
                continue
            if token != self._token:
                self._token = token
                self._wake()
