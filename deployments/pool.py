"""The executor nodes' work pool: its worker type, its job template, and making sure it exists.

The worker class itself (schedulemaster/node/worker.py) is the node's runtime; what the
master needs to create the pool (the type name and the job template) lives here, so the
master does not import the node. Prefect is imported inside the functions: a process sets
its Prefect settings (environment) before its first import of prefect, which reads them.
"""

from __future__ import annotations

import asyncio

from schedulemaster.settings import Settings

WORKER_TYPE = "schedulemaster-node"


def base_job_template() -> dict:
    """The pool's job template: Prefect's base job configuration and variables, nothing
    added (a run executes inside the node process), built as BaseWorker.get_default_base_job_template does."""
    from prefect.workers.base import BaseJobConfiguration, BaseVariables

    variables = BaseVariables.model_json_schema()
    for key in ("title", "description"):
        variables.pop(key, None)
    return {"job_configuration": BaseJobConfiguration.json_template(), "variables": variables}


async def wait_for_prefect(client, timeout: float = 120.0) -> None:
    """Return once Prefect's API answers; RuntimeError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        exc = await client.api_healthcheck()
        if exc is None:
            return
        if loop.time() > deadline:
            raise RuntimeError(f"the Prefect API did not come up: {exc}")
        await asyncio.sleep(0.2)


async def ensure_infrastructure(client, settings: Settings, work_pool: str | None = None) -> None:
    """The work pool the executor nodes poll, and the keeper-mail block type. The master and
    its first node both call this as they start: whichever comes second finds them made."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from schedulemaster.blocks.keeper_mail import KeeperMail

    try:
        await client.create_work_pool(WorkPoolCreate(
            name=work_pool or settings.work_pool, type=WORKER_TYPE, base_job_template=base_job_template(),
            description="ScheduleMaster executor nodes"))
    except ObjectAlreadyExists:
        pass
    try:
        await KeeperMail.aregister_type_and_schema(client=client)  # listed in the UI's Blocks catalog
    except ObjectAlreadyExists:  # registered by the node a moment ago (a 409 failed the master's start)
        pass


async def ensure_queues(client, work_pool: str, queues: list[str]) -> None:
    """The queues a node polls; a missing queue makes the worker poll nothing."""
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    existing = {q.name for q in await client.read_work_queues(work_pool_name=work_pool)}
    for queue in queues:
        if queue in existing:
            continue
        try:
            await client.create_work_queue(name=queue, work_pool_name=work_pool)
        except ObjectAlreadyExists:
            pass
        except ObjectNotFound as exc:
            raise RuntimeError(f"work pool {work_pool} vanished while creating queue {queue}") from exc
