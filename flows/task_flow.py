"""The Prefect flow every ScheduleMaster task deploys.

Each task is a deployment of this flow; its parameters carry the task (``task``) and, for
firings the node recorded itself, what happened (``fire``). A worker runs it for RunOnce
and for runs started from the Prefect UI; scheduled firings take the node's fast path,
which calls the same `perform_http` and records the outcome as a run of this flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from schedulemaster.flows.http_task import new_session, outcome_lines, perform_http

FLOW_NAME = "schedulemaster-task"
SETTINGS_VARIABLE = "schedulemaster_settings"


async def read_node_settings() -> dict[str, Any]:
    """The settings nodes need (Http_RequestTimeout...), mirrored by the master into a Variable."""
    from prefect.variables import Variable

    value = await Variable.aget(SETTINGS_VARIABLE, default={})
    return value if isinstance(value, dict) else {}


@flow(name=FLOW_NAME, log_prints=True, persist_result=False)
async def run_task(task: dict[str, Any], fire: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one firing of a ScheduleMaster task."""
    logger = get_run_logger()
    if fire is not None:
        # A firing the node already ran and recorded; nothing to do again.
        return fire
    title = task.get("Title", "")
    if task.get("MetaType") != 2:
        raise RuntimeError(f"MetaType {task.get('MetaType')} tasks cannot run on this node yet")
    settings = await read_node_settings()
    async with new_session(10) as client:
        out = await perform_http(client, task.get("Http") or {}, settings=settings,
                                 idempotency_key=str(flow_run.get_id()))
    for level, msg, _ts in out.logs:
        logger.log(level, msg)
    level, line = outcome_lines(title, out)
    logger.log(level, line)
    if not out.ok:
        raise RuntimeError(out.message)
    return {"status_code": out.status_code, "elapsed_ms": round(out.elapsed_ms, 1)}
