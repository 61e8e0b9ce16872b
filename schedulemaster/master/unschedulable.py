"""Running tasks that no node can fire, said once: a Prefect event and the keepers' mail.

A task fires only on a live, enabled node its Executors allow (deployments/chain.py). When none
is left (its nodes disabled, offline, or unknown here after an import; or no node at all), or
its plugin does not load on the node that should fire it (master/task_trouble.py),
nothing fires and nothing fails, so nothing would be said. This service looks every LOOK_EVERY
seconds at the nodes and the task book's change token, reads tasks only when either moved
(the Running tasks pinned to nodes; every Running task while no node can fire at all), and for
each task that has had no node for GRACE_SECONDS emits ``schedulemaster.task.unschedulable`` (its reason in
the payload, related to its deployment), mails its keepers and logs a warning, once; when it
can fire again, ``schedulemaster.task.schedulable``. The reason itself is in QueryTaskDetail and
``sm.tasks()`` at any time. What was said lives in this process: a master restarted while a
task is unschedulable says it once more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

from schedulemaster.deployments.chain import node_view
from schedulemaster.deployments.tasks import Status, TaskRecord, TaskRepository
from schedulemaster.master.task_trouble import Troubles
from schedulemaster.timeutil import utcnow

log = logging.getLogger("schedulemaster.unschedulable")

LOOK_EVERY = 5.0
#: how long a task must have had no node before it is said (a node restarting, or `up`
#: starting its node after the master, is not worth a mail); SM_UNSCHEDULABLE_GRACE_SECONDS
GRACE_SECONDS = float(os.environ.get("SM_UNSCHEDULABLE_GRACE_SECONDS") or 60)
UNSCHEDULABLE = "schedulemaster.task.unschedulable"
SCHEDULABLE = "schedulemaster.task.schedulable"


class Unschedulable:
    def __init__(self, client, work_pool: str, on_unschedulable=None, repo: TaskRepository | None = None,
                 troubles: Troubles | None = None):
        self.client = client
        self.work_pool = work_pool
        self.on_unschedulable = on_unschedulable  # (spec, when, message) -> None: the keepers' mail
        self.repo = repo or TaskRepository()
        self.said: dict[uuid.UUID, tuple[str, str]] = {}  # task id -> (title, reason) told
        self.waiting: dict[uuid.UUID, float] = {}  # task id -> since when it has no node, not told yet
        self._seen: tuple | None = None
        self.troubles = troubles or Troubles()  # plugins that do not load on their node (task_trouble.py)

    async def run(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect or the database busy: the next look does it
                log.warning("checking that every Running task has a node failed: %s", exc)
            await asyncio.sleep(LOOK_EVERY)

    async def look(self) -> None:
        nodes = await node_view(self.client, self.work_pool)
        seen = (nodes, await self.repo.change_token(), self.troubles.version)
        if seen == self._seen:
            return
        tasks = await self.repo.running(pinned_only=bool(nodes.live))
        now = {rec.id: (rec, why) for rec in tasks if (why := nodes.why_unschedulable(list(rec.spec.Executors)))}
        troubled = set(self.troubles.tasks()) - now.keys()  # few: read one by one
        running = {rec.id: rec for rec in [await self.repo.read(tid) for tid in troubled] if rec is not None
                   and rec.status == Status.Running}
        self.troubles.forget(troubled - running.keys())
        now.update({tid: (rec, why) for tid, rec in running.items() if (why := self.troubles.reason(tid))})
        clock = asyncio.get_running_loop().time()
        self.waiting = {tid: since for tid, since in self.waiting.items() if tid in now}
        for tid, (rec, why) in now.items():
            if self.said.get(tid, ("", ""))[1] == why:
                continue
            if clock - self.waiting.setdefault(tid, clock) >= GRACE_SECONDS:
                await self._tell(rec, why)
                self.said[tid] = (rec.spec.Title, why)
                del self.waiting[tid]
        for tid in self.said.keys() - now.keys():
            title, _ = self.said.pop(tid)
            log.info("task %s [%s] has a node to fire it again", tid, title)
            await _event(SCHEDULABLE, tid, title, {})
        # looked at again without a change while a task waits out its grace
        self._seen = None if self.waiting else seen

    async def _tell(self, rec: TaskRecord, why: str) -> None:
        log.warning("task %s [%s] is Running and fires nothing: %s", rec.id, rec.spec.Title, why)
        await _event(UNSCHEDULABLE, rec.id, rec.spec.Title, {"reason": why, "executors": list(rec.spec.Executors)})
        if self.on_unschedulable is not None:
            self.on_unschedulable(rec.spec, utcnow(), f"任务无法调度 (no node can fire it): {why}")


async def _event(name: str, task_id: uuid.UUID, title: str, payload: dict) -> None:
    """A Prefect event about the task, published in process (as ms_compat/audit.py does)."""
    from prefect.server.events.clients import PrefectServerEventsClient
    from prefect.server.events.schemas.events import Event

    try:
        event = Event(occurred=utcnow(), event=name, id=uuid.uuid4(), payload=payload,
                      resource={"prefect.resource.id": f"schedulemaster.task.{task_id}",
                                "prefect.resource.name": title},
                      related=[{"prefect.resource.id": f"prefect.deployment.{task_id}",
                                "prefect.resource.role": "deployment"}])
        async with PrefectServerEventsClient() as client:
            await client.emit(event)
    except Exception as exc:
        log.warning("event %s of task %s not published: %s", name, task_id, exc)


__all__ = ["Unschedulable"]
