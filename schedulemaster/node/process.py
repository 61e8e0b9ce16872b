"""An executor node process: a Prefect worker of the project's type plus the firing loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid

from schedulemaster import prefect_patches
from schedulemaster.settings import Settings

log = logging.getLogger("schedulemaster.node")


async def ensure_queues(client, settings: Settings, queues: list[str]) -> None:
    """The pool and the queues this node polls; a missing queue makes the worker poll nothing."""
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from schedulemaster.master.process import ensure_infrastructure

    await ensure_infrastructure(client, settings)
    existing = {q.name for q in await client.read_work_queues(work_pool_name=settings.work_pool)}
    for queue in queues:
        if queue in existing:
            continue
        try:
            await client.create_work_queue(name=queue, work_pool_name=settings.work_pool)
        except ObjectAlreadyExists:
            pass
        except ObjectNotFound as exc:
            raise RuntimeError(f"work pool {settings.work_pool} vanished while creating queue {queue}") from exc


def package_fetcher(client):
    """Plugin packages come from the master (the nodes share no file system with it)."""
    from prefect.exceptions import PrefectHTTPStatusError

    async def fetch(name: str) -> tuple[str, bytes] | None:
        try:
            resp = await client._client.get(f"/schedulemaster/plugins/{name}")
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
        disposition = resp.headers.get("content-disposition", "")
        filename = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else f"{name}.zip"
        return filename, resp.content

    return fetch


class NameTaken(RuntimeError):
    """A live node holds this name."""


async def register(client, name: str, priority: int, max_concurrency: int, incarnation: str,
                   wait: float = 0.0) -> None:
    """Register this process as node ``name`` at the master (schedulemaster/master/coordination_api.py);
    while a live process holds the name, retry for ``wait`` seconds, then raise NameTaken.
    The master answers with this incarnation's token, which every later call of this client
    carries: the master's node endpoints take a call for this node only with it."""
    from schedulemaster.master.coordination_api import NODE_TOKEN_HEADER

    import socket

    from prefect.exceptions import PrefectHTTPStatusError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            resp = await client._client.post("/schedulemaster/nodes/register", json={
                "name": name, "priority": priority, "max_concurrency": max_concurrency,
                "incarnation": incarnation, "host": socket.gethostname()[:200]})
            client._client.headers[NODE_TOKEN_HEADER] = resp.json()["token"]
            return
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 401:
                raise RuntimeError("the master refused this node's Prefect credential: set PREFECT_API_AUTH_STRING "
                                   "to the master's auth string (on its machine: <data dir>/prefect-auth)") from None
            if exc.response.status_code != 409:
                raise
            if loop.time() >= deadline:
                raise NameTaken(exc.response.json().get("detail", exc.response.text)) from None
        await asyncio.sleep(2.0)


async def serve_node(settings: Settings, name: str, priority: int, max_concurrency: int,
                     wait_for_name: float = 0.0, connect_timeout: float = 300.0) -> int:
    """Run until SIGTERM/SIGINT; the exit code is 1 when a part of the node failed, 2 when
    the master cannot be reached or the name is taken, 3 when another process took the name."""
    settings.apply_prefect_env()
    prefect_patches.apply()
    from prefect.client.orchestration import get_client

    from schedulemaster.node import plugins
    from schedulemaster.node.firing import FiringLoop
    from schedulemaster.deployments.tasks import DEFAULT_QUEUE, NODE_QUEUE_PREFIX
    from schedulemaster.deployments.worker import NodeWorker
    from schedulemaster.master.process import wait_for_prefect

    incarnation = str(uuid.uuid4())
    async with get_client() as client:
        try:
            await wait_for_prefect(client, timeout=connect_timeout)
            await register(client, name, priority, max_concurrency, incarnation, wait_for_name)
        except (RuntimeError, NameTaken) as exc:
            log.error("node %s not started: %s", name, exc)
            return 2
        own_queue = NODE_QUEUE_PREFIX + name
        await ensure_queues(client, settings, [DEFAULT_QUEUE, own_queue])
        worker = NodeWorker(work_pool_name=settings.work_pool, work_queues=[DEFAULT_QUEUE, own_queue],
                            name=name, limit=max_concurrency, create_pool_if_not_found=True,
                            base_job_template=NodeWorker.get_default_base_job_template())
        host = plugins.host(max_concurrency, name, settings.data_dir / "nodes" / name / "plugins")
        host.fetch = package_fetcher(client)
        firing = FiringLoop(client, name, settings.work_pool, max_concurrency, incarnation=incarnation)
        worker.incarnation = incarnation
        host.pull_policy = lambda: str(firing.settings.get("Assembly_ImagePullPolicy") or "Always")
        worker.accept_task_run = firing.owns_run
        worker.accepting = lambda: name not in firing.disabled
        stop = asyncio.Event()
        firing.claimer.on_superseded = stop.set
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(worker.start(printer=log.info), name="worker"),
                 asyncio.create_task(firing.run(), name="firing")]
        log.info("node %s started (priority %d, max concurrency %d)", name, priority, max_concurrency)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = 0
        for t in done:
            if t is not stopper and t.exception():
                failed = 1
                log.error("node part %s failed", t.get_name(), exc_info=t.exception())
        # Stop taking new firings; let the ones in flight finish and be recorded.
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        await firing.close()
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        stopper.cancel()
        log.info("node %s stopped: %d fired, %d recorded", name, firing.fired, firing.recorder.recorded)
        return 3 if firing.claimer.superseded else failed
