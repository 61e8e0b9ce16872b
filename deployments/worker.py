"""The executor node's Prefect worker type: runs flow runs in-process, no Python start per run.

A node is a Prefect worker of this type (registered through the ``prefect.collections``
entry point), so it appears in its work pool in the UI, heartbeats, and picks up the runs
Prefect hands it: RunOnce, and runs started from the UI. It looks in its pool's ``default``
queue, its own ``node-<name>`` queue (where RunOnce sends a task pinned to executors) and
the ``tasks`` queue that task deployments live in (runs started from the UI).
Scheduled firings do not come through here; see ``schedulemaster/node/firing.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Callable, Optional

import anyio
from prefect.client.schemas.objects import FlowRun
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult


class NodeJobConfiguration(BaseJobConfiguration):
    """Nothing to configure: the flow runs inside the node process."""


class NodeVariables(BaseVariables):
    pass


class NodeWorkerResult(BaseWorkerResult):
    pass


class NodeWorker(BaseWorker[NodeJobConfiguration, NodeVariables, NodeWorkerResult]):
    type = "schedulemaster-node"
    job_configuration = NodeJobConfiguration
    job_configuration_variables = NodeVariables
    _description = "A ScheduleMaster executor node: runs ScheduleMaster task flows in-process."
    _display_name = "ScheduleMaster node"

    #: decides whether this node takes a run found in the tasks queue (set by the node:
    #: only runs of tasks it owns, so two nodes do not race for every UI-started run)
    accept_task_run: Callable[[FlowRun], bool] = staticmethod(lambda run: True)
    #: False while the operator has disabled this node (休息): it then takes no run at all,
    #: not even from its own queue; they wait there for it or for a Start elsewhere
    accepting: Callable[[], bool] = staticmethod(lambda: True)
    #: this process's registration (schedulemaster/store/claims.py); stamped on each run it takes, so
    #: the master's failover can tell a run held by a dead process from one of its successor
    incarnation: str = ""

    async def _get_scheduled_flow_runs(self) -> list[Any]:
        """Find due runs with a plain filtered read instead of Prefect's worker-poll endpoint.

        That endpoint also queues `mark_work_queues_ready` / `mark_deployments_ready`, which
        take SQLite's write lock (BEGIN IMMEDIATE) on every poll: with a node polling each
        second, task Creates were seen waiting the full 60 s busy timeout for the lock, and
        none did without those polls. The claim is unchanged: the base class proposes Pending for each
        run, and only one node's proposal wins.
        """
        from prefect.client.schemas.filters import (
            FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterState, FlowRunFilterStateType,
            FlowRunFilterWorkQueueName, WorkPoolFilter, WorkPoolFilterName)
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        from schedulemaster.deployments.tasks import TASKS_QUEUE

        if not self.accepting():
            return []
        before = datetime.now(timezone.utc) + timedelta(seconds=self._prefetch_seconds)
        runs = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                work_queue_name=FlowRunFilterWorkQueueName(any_=[*self._work_queues, TASKS_QUEUE]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=before)),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
        # Auto-scheduled runs exist only if someone switched a task's display schedule on in
        # the UI (deployments/prefect_schedule.py); the firing loop already fires those instants.
        return [SimpleNamespace(flow_run=r) for r in runs
                if r.work_queue_name != TASKS_QUEUE
                or (not r.auto_scheduled and self.accept_task_run(r))]

    async def run(self, flow_run: FlowRun, configuration: NodeJobConfiguration,
                  task_status: Optional[anyio.abc.TaskStatus[Any]] = None) -> NodeWorkerResult:
        from prefect.flow_engine import run_flow

        from schedulemaster.flows.task_flow import run_task

        from schedulemaster.deployments.tasks import INCARNATION_LABEL

        if task_status is not None:
            task_status.started(str(flow_run.id))
        if self.incarnation:
            await self.client.update_flow_run_labels(flow_run.id, {INCARNATION_LABEL: self.incarnation})
        state = await run_flow(run_task, flow_run=flow_run, parameters=dict(flow_run.parameters or {}),
                               return_type="state")
        return NodeWorkerResult(identifier=str(flow_run.id), status_code=0 if state.is_completed() else 1)
