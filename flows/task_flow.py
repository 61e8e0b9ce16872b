"""The Prefect flow every ScheduleMaster task deploys.

Each task is a deployment of this flow; its parameters carry the task (``task``) and, for
firings the node recorded itself, what happened (``fire``). A worker runs it for RunOnce
and for runs started from the Prefect UI; scheduled firings take the node's fast path,
which calls the same `perform_http` and records the outcome as a run of this flow.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from schedulemaster.coordination.client import MasterClient
from schedulemaster.coordination.wire import RunFailure
from schedulemaster.deployments import chain
from schedulemaster.deployments.spec import TaskSpec, spec_of
from schedulemaster.deployments.tasks import run_name
from schedulemaster.deployments.variables import read_node_settings
from schedulemaster.flows.http_task import new_session, outcome_lines, perform_http
from schedulemaster.node import plugins
from schedulemaster.settings import Settings

FLOW_NAME = "schedulemaster-task"


async def _report_failure(flow_obj, run, state) -> None:
    """A failed worker-path run reaches the master's keeper mailer (a Start is not a run)."""
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client

    params = run.parameters or {}
    if run.deployment_id is None or params.get("action") == "start" or params.get("fire") is not None:
        return

    try:
        async with get_client() as client:
            await MasterClient(client).report_failure(RunFailure(
                task_id=run.deployment_id, run_id=run.id, message=(state.message or "")[:2000],
                when=datetime.now(timezone.utc)))
    except Exception as exc:  # the keepers miss a mail; the run's own outcome is unchanged
        logging.getLogger("schedulemaster.flow").warning("could not report the failure to the master: %s", exc)


@flow(name=FLOW_NAME, log_prints=True, persist_result=False, on_failure=[_report_failure])
async def run_task(task: dict[str, Any], fire: dict[str, Any] | None = None, action: str | None = None,
                   previous_result: Any = None, rerun: dict[str, Any] | None = None) -> Any:
    """Run one firing of a ScheduleMaster task (or, with ``action="start"``, start its plugin).

    ``rerun``: this run re-runs a firing (or a run) whose node died while running it
    (schedulemaster/master/failover.py): it says why, and the receiver gets the same Idempotency-Key
    as the first attempt, so it can tell the two apart."""
    logger = get_run_logger()
    if fire is not None:
        # A firing the node already ran and recorded; nothing to do again.
        return fire
    key = str(flow_run.get_id())
    if rerun:
        key = str(rerun.get("idempotency_key") or key)
        logger.warning("重新执行 (re-run): %s; Idempotency-Key %s as the first attempt", rerun.get("reason", ""), key)
    spec = spec_of(task)
    if spec.is_plugin:
        return await _run_plugin(spec, action, previous_result, key)
    if action == "start":
        return {"started": True}
    settings = await read_node_settings()
    async with new_session(10) as client:
        out = await _attempts(spec, lambda attempt: perform_http(
            client, spec.Http, settings=settings, idempotency_key=key, policy=spec.Policy, attempt=attempt))
    if not out.ok:
        raise RuntimeError(out.message)
    await _trigger_children(spec, None)
    return {"status_code": out.status_code, "elapsed_ms": round(out.elapsed_ms, 1)}


async def _attempts(spec: TaskSpec, attempt_once) -> Any:
    """``attempts`` logging into this flow run."""
    return await attempts(spec, attempt_once, get_run_logger().log)


async def attempts(spec: TaskSpec, attempt_once, log: Callable[[int, str], None]) -> Any:
    """Run ``attempt_once(n)`` until it succeeds or the task's Retries are spent, each
    attempt's lines written with ``log(level, message)`` (on the worker path the attempts
    share one run; the node's firing path records one run per attempt)."""
    pol = spec.Policy
    for attempt in range(1, pol.attempts + 1):
        if pol.Retries:
            log(logging.INFO, f"attempt {attempt} of {pol.attempts}")
        out = await attempt_once(attempt)
        for level, msg, _ts in out.logs:
            log(level, msg)
        log(*outcome_lines(spec.Title, out))
        if out.ok or attempt == pol.attempts:
            return out
        wait = pol.retry_wait(attempt)
        log(logging.WARNING, f"attempt {attempt} of {pol.attempts} failed; the next in {wait:g} s")
        await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns")


def _deployment_id():
    """The task id: the running flow run's deployment."""
    from prefect.context import get_run_context

    return get_run_context().flow_run.deployment_id


async def _run_plugin(task: TaskSpec, action: str | None, previous_result: Any, trace_id: str) -> Any:
    """Plugin tasks run on the node's own instance (schedulemaster/node/plugins.py), which the
    node's firing loop shares: a Start loads and initializes it here, on the node that will
    fire the task, so a plugin that cannot start fails the Start with its reason logged."""

    logger = get_run_logger()
    host = plugins.host()
    task_id = _deployment_id()
    if action == "start":
        try:
            await host.start(task_id, task)
        except plugins.PluginError as exc:
            logger.error("任务启动失败：%s", exc)
            raise RuntimeError(f"the plugin did not start: {str(exc).splitlines()[0]}") from None
        logger.info("插件 %s / %s 已加载并完成初始化", task.AssemblyName, task.ClassName)
        return {"started": True}
    out = await _attempts(task, lambda _attempt: host.run(task_id, task, previous_result=previous_result,
                                                            trace_id=trace_id))
    if not out.ok:
        raise RuntimeError(out.message)
    await _trigger_children(task, out.result)
    return chain.jsonable(out.result)


async def _trigger_children(task: TaskSpec, result: Any) -> None:
    """Nexts after a successful worker-path run (RunOnce, a child run, a UI run): each
    Running child becomes a subflow run of this one in its own node's queue, so the UI
    shows the chain as Prefect shows any subflow."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import arun_deployment

    parent_id = _deployment_id()
    children = chain.child_ids(task, parent_id)
    if not children:
        return
    logger = get_run_logger()
    pool = Settings.from_env().work_pool
    async with get_client() as client:
        for cid in children:
            try:
                rec = await chain.running_child(client, cid)
                if rec is None:
                    logger.info("子任务 %s 不在运行状态，未触发", cid)
                    continue
                queue = await chain.queue_for(client, pool, cid, rec.spec)
                await arun_deployment(cid, client=client, timeout=0, as_subflow=True,
                                      parameters={"task": rec.spec.wire(), "previous_result": chain.jsonable(result)},
                                      flow_run_name=run_name(rec.spec.Title, f"next of {task.Title}"),
                                      work_queue_name=queue, tags=["sm:next"],
                                      idempotency_key=chain.child_firing_id(cid, str(flow_run.get_id())))
                logger.info("已触发子任务 %s [%s]", cid, rec.spec.Title)
            except Exception as exc:  # one child's trouble must not fail the parent or the others
                logger.error("子任务 %s 触发失败：%s", cid, exc)
