"""The executor node's Prefect worker type: runs flow runs in-process, no Python start per run.

A node is a Prefect worker of this type (registered through the ``prefect.collections``
entry point), so it appears in its work pool in the UI, heartbeats, and picks up the runs
Prefect hands it: RunOnce, and runs started from the UI. It polls its pool's ``default``
queue and its own ``node-<name>`` queue (where RunOnce sends a task pinned to executors).
Scheduled firings do not come through here; see ``deployments/firing.py``.
"""

from __future__ import annotations

from typing import Any, Optional

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

    async def submit_adhoc(self, flow_run: FlowRun) -> None:
        """Run a flow run this worker did not get by polling (one started from the UI in the
        unpolled tasks queue), through the same claim-and-run path as polled runs."""
        from types import SimpleNamespace

        await self._submit_scheduled_flow_runs([SimpleNamespace(flow_run=flow_run)])

    async def run(self, flow_run: FlowRun, configuration: NodeJobConfiguration,
                  task_status: Optional[anyio.abc.TaskStatus[Any]] = None) -> NodeWorkerResult:
        from prefect.flow_engine import run_flow

        from schedulemaster.flows.task_flow import run_task

        if task_status is not None:
            task_status.started(str(flow_run.id))
        state = await run_flow(run_task, flow_run=flow_run, parameters=dict(flow_run.parameters or {}),
                               return_type="state")
        return NodeWorkerResult(identifier=str(flow_run.id), status_code=0 if state.is_completed() else 1)
