"""A Running task whose plugin does not load on the node that should fire it.

The node that owns a plugin task loads and initializes its plugin when the task starts, and
again after the node restarts. When that fails (a package gone or broken, an ``initialize()``
that raises), the node fires nothing for the task, tries no more for that Start, and says so
here (``POST /api/schedulemaster/tasks/trouble``, with its node token); it clears it once the
plugin loads, and a new process registering under the node's name clears what the old one said. The reason shows in QueryTaskDetail's ``Unschedulable`` and ``sm.tasks()``, and the
unschedulable watch (master/unschedulable.py) tells the keepers and emits its event, once. Kept
in the master's memory: a restarted master hears of it again when the node next tries.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from schedulemaster.timeutil import utcnow


class Troubles:
    def __init__(self):
        self._by_task: dict[uuid.UUID, tuple[str, str, datetime]] = {}  # task -> (node, message, since)
        self.version = 0  # moves with every change: the watch looks again

    def report(self, task_id: uuid.UUID, node: str, message: str) -> None:
        """``message`` empty: the node loaded the plugin after all."""
        if message:
            self._by_task[task_id] = (node, message, utcnow())
        elif self._by_task.get(task_id, ("",))[0] == node:
            del self._by_task[task_id]
        else:
            return
        self.version += 1

    def node_restarted(self, node: str) -> None:
        """A new process registered as ``node``: it says again what it cannot load."""
        gone = [tid for tid, (name, _m, _t) in self._by_task.items() if name == node]
        for tid in gone:
            del self._by_task[tid]
        self.version += bool(gone)

    def reason(self, task_id: uuid.UUID) -> str | None:
        got = self._by_task.get(task_id)
        return None if got is None else f"its plugin does not load on node {got[0]}: {got[1]}"

    def tasks(self) -> list[uuid.UUID]:
        return list(self._by_task)

    def forget(self, task_ids: set[uuid.UUID]) -> None:
        """Tasks no longer Running: nothing to say about them."""
        for tid in task_ids & self._by_task.keys():
            del self._by_task[tid]
            self.version += 1


__all__ = ["Troubles"]
