"""Worker-path runs of a task, run by the node itself rather than by Prefect's flow engine.

RunOnce, a plugin Start, a Next sent to this node, a failover re-run and a run started from
Prefect's UI are flow runs in the node's queues. Taken by Prefect's worker machinery and run by
its flow engine, a RunOnce reached its receiver about 360 ms after the run was created
(measured on this 2-core machine: 115 ms from the worker's claim to its "Submitting" state,
130 ms more to Running, 70 ms of the engine before the task's first line), so a RunOnce took
0.45-0.6 s end to end. The task flow's body is one request or one plugin call, so the node does
what the engine did for it, in the fewest calls: Pending proposed (the claim: only one
proposal wins, as for Prefect's workers), then the worker's labels and Running together, the
firing, its log lines in one call, the final state. The run is the same Prefect flow run, with
the same states, labels and logs.

A successful run's children (Nexts) hang under it as subflows, as ``run_deployment(...,
as_subflow=True)`` links them inside Prefect's engine: a task run in this run, the child's
``parent_task_run_id``. The child run goes into the child task's own queue, where its owning
node takes it (as a RunOnce).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, Callable

from schedulemaster.coordination.wire import RunFailure
from schedulemaster.deployments import chain
from schedulemaster.deployments.spec import TaskSpec, spec_or_none
from schedulemaster.flows.http_task import perform_http
from schedulemaster.flows.task_flow import attempts
from schedulemaster.node.plugins import PluginError

log = logging.getLogger("schedulemaster.node")


def runs_directly(flow_run) -> bool:
    """Whether the node runs this flow run itself: a task's run (not a firing already recorded)."""
    params = flow_run.parameters or {}
    spec = spec_or_none(params.get("task"))
    return spec is not None and params.get("fire") is None and flow_run.deployment_id is not None


class DirectRun:
    """One flow run, taken and run by the node (``run``)."""

    def __init__(self, client, flow_run, *, labels: dict[str, str], settings: Callable[[], dict[str, Any]],
                 http_session: Callable[[], Any], plugin_host, report_failure, running_child=None):
        self.client = client
        self.run_ = flow_run
        self.labels = labels
        self.settings = settings
        self.http_session = http_session
        self.plugins = plugin_host
        self.report_failure = report_failure  # async (RunFailure) -> None: the keepers' mail
        #: async (task id) -> its record when Running: the node's task book (FiringLoop.running_child)
        self.running_child = running_child or (lambda cid: chain.running_child(client, cid))
        self.lines: list[Any] = []

    def log(self, level: int, message: str) -> None:
        from prefect.client.schemas.actions import LogCreate

        self.lines.append(LogCreate(name="prefect.flow_runs", level=level, message=message,
                                    timestamp=datetime.now(timezone.utc), flow_run_id=self.run_.id))

    async def run(self) -> bool:
        """Take the run and run it; False when another worker took it first (or it was
        cancelled before it began)."""
        from prefect.exceptions import Abort
        from prefect.states import Pending, Running
        from prefect.utilities.engine import propose_state

        run_id = self.run_.id
        try:
            if not (await propose_state(self.client, Pending(), flow_run_id=run_id)).is_pending():
                return False
            _, running = await asyncio.gather(self.client.update_flow_run_labels(run_id, self.labels),
                                              propose_state(self.client, Running(), flow_run_id=run_id))
        except Abort as exc:
            log.info("flow run %s not taken: %s", run_id, exc)
            return False
        if not running.is_running():
            return False
        params = self.run_.parameters or {}
        spec = spec_or_none(params.get("task"))
        result = None
        try:
            ok, message, result = await self._execute(spec, params)
        except Exception as exc:  # a bug here must still end the run, with why
            ok, message = False, f"{type(exc).__name__}: {exc}"
            self.log(logging.ERROR, "".join(traceback.format_exception(exc)))
        if ok and spec.Nexts and params.get("action") != "start":
            await self._children(spec, result)
        await self._finish(spec, params, ok, message)
        return True

    async def _children(self, spec: TaskSpec, result: Any) -> None:
        """Each Running child runs once, a subflow of this run (one child's trouble stops no other)."""
        from prefect.states import Completed

        for cid in chain.child_ids(spec, self.run_.deployment_id):
            try:
                child = await self.running_child(cid)
                if child is None:
                    self.log(logging.INFO, f"子任务 {cid} 不在运行状态，未触发")
                    continue
                # what Prefect's client reads of a Task to create its run (no function to wrap)
                link_task = SimpleNamespace(task_key=f"next-{cid}", version=None, tags=[], retries=0,
                                            retry_delay_seconds=0, retry_jitter_factor=None)
                link = await self.client.create_task_run(
                    link_task, flow_run_id=self.run_.id, dynamic_key=str(cid), name=f"next → {child.spec.Title}",
                    state=Completed())
                await chain.create_child_run(self.client, child, str(self.run_.id), result, spec.Title,
                                             parent_task_run_id=link.id)
                self.log(logging.INFO, f"已触发子任务 {cid} [{child.spec.Title}]")
            except Exception as exc:
                self.log(logging.ERROR, f"子任务 {cid} 触发失败：{exc}")

    async def _execute(self, spec: TaskSpec, params: dict[str, Any]) -> tuple[bool, str, Any]:
        key = str(self.run_.id)
        if rerun := params.get("rerun"):
            key = str(rerun.get("idempotency_key") or key)
            self.log(logging.WARNING, f"重新执行 (re-run): {rerun.get('reason', '')}; Idempotency-Key {key} "
                                      "as the first attempt")
        self.log(logging.INFO, f"Run by node {self.labels.get('prefect.worker.name')} directly "
                               "(schedulemaster/node/direct_runs.py)")
        task_id = self.run_.deployment_id
        if params.get("action") == "start":
            if not spec.is_plugin:
                return True, "started", None
            try:
                await self.plugins.start(task_id, spec)
            except PluginError as exc:
                self.log(logging.ERROR, f"任务启动失败：{exc}")
                return False, f"the plugin did not start: {str(exc).splitlines()[0]}", None
            self.log(logging.INFO, f"插件 {spec.AssemblyName} / {spec.ClassName} 已加载并完成初始化")
            return True, "started", None
        if spec.is_plugin:
            out = await attempts(spec, lambda _n: self.plugins.run(
                task_id, spec, previous_result=params.get("previous_result"), trace_id=key), self.log)
        else:
            out = await attempts(spec, lambda n: perform_http(
                self.http_session(), spec.Http, settings=self.settings(), idempotency_key=key,
                policy=spec.Policy, attempt=n), self.log)
        return out.ok, out.message, getattr(out, "result", None)

    async def _finish(self, spec: TaskSpec, params: dict[str, Any], ok: bool, message: str) -> None:
        from prefect.exceptions import Abort
        from prefect.states import Completed, Failed
        from prefect.utilities.engine import propose_state

        try:
            await self.client.create_logs(self.lines)
        except Exception as exc:  # the state still says how it ended
            log.warning("flow run %s: its %d log lines were not written: %s", self.run_.id, len(self.lines), exc)
        state = Completed(message=message[:2000]) if ok else Failed(message=message[:2000])
        try:
            await propose_state(self.client, state, flow_run_id=self.run_.id)
        except Abort as exc:
            log.warning("flow run %s: its final state was refused: %s", self.run_.id, exc)
        if not ok and params.get("action") != "start":
            try:
                await self.report_failure(RunFailure(task_id=self.run_.deployment_id, run_id=self.run_.id,
                                                     message=message[:2000], when=datetime.now(timezone.utc)))
            except Exception as exc:  # the keepers miss a mail; the run's own outcome is unchanged
                log.warning("could not report the failure of flow run %s to the master: %s", self.run_.id, exc)


__all__ = ["DirectRun", "runs_directly"]
