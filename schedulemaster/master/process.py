"""The master process: Prefect's server (API, UI, scheduler services) and the legacy API,
served side by side from one event loop.

They share a process because the legacy API must create deployments with ids it did not
mint (imported tasks keep their GUIDs) and only code inside the Prefect server process can
do that, through ``prefect.server.models``. Everything else goes through Prefect's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from schedulemaster import prefect_patches, stall_watch
from schedulemaster.deployments.pool import ensure_infrastructure, wait_for_prefect
from schedulemaster.deployments.variables import mirror_settings
from schedulemaster.settings import Settings

log = logging.getLogger("schedulemaster.master")


class _Server:
    """A uvicorn server whose signals the master handles (two servers share one loop)."""

    def __init__(self, app, host: str, port: int, trusted_proxies: str = ""):
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        # X-Forwarded-For names the client only when a listed proxy sent it (uvicorn trusts
        # 127.0.0.1 by default: any local process could then pose as any address)
        self.server = Quiet(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5,
                                           proxy_headers=bool(trusted_proxies),
                                           forwarded_allow_ips=trusted_proxies or None))

    async def serve(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        self.server.should_exit = True


def mount_record_api(prefect_app, on_failure=None, packages=None, importer=None, store_engine=None,
                     coordination=None, run_events: str = "all", changes=None, on_recorded=None,
                     new_runs=None, troubles=None) -> None:
    """Nodes record firings at ``/api/schedulemaster/firings`` (see schedulemaster/master/record_api.py);
    ``schedulemaster import`` writes at ``/api/schedulemaster/import/*`` (ms_compat/import_api.py).

    Mounted inside Prefect's API app (the one behind "/api"), so Prefect's own middleware,
    its auth string check included, covers these endpoints too."""
    from starlette.routing import Mount

    from schedulemaster.master.record_api import create_record_app

    api_app = next(r.app for r in prefect_app.routes if isinstance(r, Mount) and r.name == "api")
    if importer is not None:  # before "/schedulemaster", which would otherwise take the path
        from schedulemaster.ms_compat.import_api import create_import_app

        api_app.router.routes.append(Mount("/schedulemaster/import", app=create_import_app(importer)))
    api_app.router.routes.append(Mount("/schedulemaster", app=create_record_app(
        on_failure, packages, store_engine, coordination, run_events, changes, on_recorded, new_runs, troubles)))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("schedulemaster")
    except PackageNotFoundError:
        return "unknown"


async def run_failover(settings: Settings, store, on_failure, activity=None) -> None:
    """Re-run or fail what dead nodes held (schedulemaster/master/failover.py), with its own
    client; a node gone offline is told to the alarm channels (schedulemaster/alarms.py)."""
    from prefect.client.orchestration import get_client

    from schedulemaster import alarms
    from schedulemaster.master.failover import Failover

    sending: set[asyncio.Task] = set()

    async def node_offline(name: str, why: str) -> None:
        # in the background: a channel that answers slowly must not hold the failover tick
        task = asyncio.create_task(alarms.send(store, f"节点下线 — {name}", why, kind="warning",
                                               subject=f"node {name}"))
        sending.add(task)
        task.add_done_callback(sending.discard)

    async with get_client() as client:
        await wait_for_prefect(client, timeout=600)
        await Failover(store.engine, client, settings.work_pool, on_failure, activity, node_offline).run()


async def run_queue_readiness(settings: Settings) -> None:
    """Show the queues live nodes read as Ready (schedulemaster/master/queue_readiness.py)."""
    from prefect.client.orchestration import get_client

    from schedulemaster.master import queue_readiness

    async with get_client() as client:
        await wait_for_prefect(client, timeout=600)
        await queue_readiness.run(client, settings.work_pool)


async def run_pool_nodes(settings: Settings, engine) -> None:
    """Keep the nodes' table in the work pool's description (schedulemaster/master/pool_nodes.py)."""
    from prefect.client.orchestration import get_client

    from schedulemaster.master import pool_nodes

    async with get_client() as client:
        await wait_for_prefect(client, timeout=600)
        await pool_nodes.run(client, settings.work_pool, engine)


async def run_upcoming(settings: Settings) -> None:
    """Each Running task's next fire time as a Scheduled run (schedulemaster/master/upcoming.py),
    or, switched off, none left from an earlier start."""
    from prefect.client.orchestration import get_client

    from schedulemaster.master.upcoming import Upcoming

    async with get_client() as client:
        await wait_for_prefect(client, timeout=600)
    if settings.ui_next_runs == "on":
        await Upcoming().run()
    elif removed := await Upcoming().clear():
        log.info("%d stand-in runs of next fire times removed (SM_UI_NEXT_RUNS=off)", removed)


async def run_unschedulable(watch) -> None:
    """Say once when a Running task has no node to fire it (schedulemaster/master/unschedulable.py)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await wait_for_prefect(client, timeout=600)
        watch.client = client
        await watch.run()


def prefect_ui_of(settings: Settings) -> str:
    """Where the Prefect UI is, for the console's links: its API's URL without ``/api``."""
    url = settings.prefect_api_url.rstrip("/")
    return url[:-4] if url.endswith("/api") else url


def prepare_credentials(settings: Settings) -> None:
    """Owner-only files, and Prefect's API never served without an auth string (this
    process's server check and its own clients both use it)."""
    from schedulemaster.credentials import (CLIENT_KEY, SERVER_KEY, owner_only_umask, secure_tree,
                                            server_auth_string)

    owner_only_umask()
    secure_tree(settings.data_dir)
    value, created = server_auth_string(settings.data_dir, settings.prefect_host)
    if created:
        log.info("generated the Prefect API credential: %s (owner-only)",
                 (settings.data_dir / "prefect-auth").resolve())
    os.environ[SERVER_KEY] = value
    os.environ[CLIENT_KEY] = value


def warn_default_password(settings: Settings, store) -> None:
    from schedulemaster.credentials import is_loopback

    if not is_loopback(settings.api_host) and store.admin_has_default_password():
        log.warning("the legacy API listens on %s:%d and account admin still has the default password: "
                    "change it (schedulemaster account change-password)", settings.api_host, settings.api_port)


async def serve_master(settings: Settings) -> None:
    prepare_credentials(settings)
    settings.apply_prefect_env()
    if settings.prefect_db_url and settings.prefect_db_url.startswith("postgresql"):
        from schedulemaster.store.db import ensure_database, normalize_url

        # Prefect migrates its tables but does not create its database
        ensure_database(normalize_url(settings.prefect_db_url.replace("+asyncpg", "", 1)))
    prefect_patches.apply()
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import create_app as create_prefect_app
    from prefect.utilities.callables import parameter_schema

    from schedulemaster.master.coordination_api import (NodeActivity, create_coordination_router,
                                                             live_workers_of)
    from schedulemaster.master.ui_switches import FollowUiSwitches
    from schedulemaster.packages import PackageStore
    from schedulemaster.flows.task_flow import run_task
    from schedulemaster.ms_compat.app import create_app as create_legacy_app
    from schedulemaster.console.app import Console
    from schedulemaster.keepers import KeeperMailer
    from schedulemaster.store.db import Store
    from schedulemaster.ms_compat.task_api import TaskService

    from schedulemaster.ms_compat.import_target import ImportTarget
    from schedulemaster.master.task_changes import TaskChanges
    from schedulemaster.master.new_runs import NewRuns
    from schedulemaster.master.completed_runs import CompletedRuns
    from schedulemaster.master.worker_runs import WorkerRuns
    from schedulemaster.master.task_trouble import Troubles
    from schedulemaster.master.metrics import Metrics
    from schedulemaster.master.unschedulable import Unschedulable
    from schedulemaster.master import prefect_indexes
    from schedulemaster.deployments.variables import read_disabled

    store = Store(settings.store_url)
    store.init()
    warn_default_password(settings, store)
    client = get_client()
    services: dict[str, TaskService] = {}

    async def make_service() -> TaskService:
        await client.__aenter__()
        await wait_for_prefect(client)
        await ensure_infrastructure(client, settings)
        await mirror_settings(client, store)
        schema = parameter_schema(run_task).model_dump_for_openapi()
        services["task"] = TaskService(store, client, settings.timezone, settings.work_pool, schema,
                                       create_run=WorkerRuns(new_runs).create, trouble_of=troubles.reason)
        await services["task"].repo.make_tasks_queue(settings.work_pool)
        await prefect_indexes.ensure()
        if changed := await services["task"].repo.mark_ready():
            log.info("%d task deployments marked ready (never polled: nodes fire them)", changed)
        if changed := await services["task"].repo.mark_status_words():
            log.info("%d task deployments given their status in words among their tags", changed)
        try:
            if moved := await services["task"].repo.own_flows():
                log.info("%d tasks given their own flow (their runs moved with them)", moved)
        except Exception:  # the tasks still fire and record on the shared flow; the next start retries
            log.exception("giving tasks of an older version their own flow failed")
        # Everything built to start (Prefect's server, its models and settings, SQLAlchemy's
        # mappers: most of the heap) lives as long as the process
        stall_watch.freeze_startup_heap()
        return services["task"]

    async def close() -> None:
        await client.__aexit__(None, None, None)

    mailer = KeeperMailer(store)
    packages = PackageStore(settings.data_dir.resolve() / "plugins")
    prefect_app = create_prefect_app(final=True)
    importer = ImportTarget(store, lambda: services.get("task"), settings.timezone,
                            lambda: mirror_settings(client, store))
    activity = NodeActivity()  # who claims firings: failover's second proof of life
    troubles = Troubles()  # Running tasks whose plugin does not load on their node
    coordination = create_coordination_router(store.engine, live_workers_of(settings.work_pool), activity,
                                              on_register=troubles.node_restarted)
    changes = TaskChanges()  # nodes wait on it between two looks at the task book
    legacy_app = create_legacy_app(store, make_service, close, packages, info={
        "PrefectApiUrl": settings.prefect_api_url, "Version": _version()})
    watch = Unschedulable(None, settings.work_pool,
                          lambda spec, when, message: mailer.task_failed(spec, when, message, message),
                          troubles=troubles)
    metrics = Metrics(store, settings.work_pool, lambda: read_disabled(client), legacy_app.state.authenticator,
                      settings.metrics_open, unschedulable=lambda: len(watch.said))
    await asyncio.to_thread(metrics.start)
    # nodes hear of a run for their worker at once; runs completed through the API are counted
    new_runs = NewRuns(CompletedRuns(prefect_app))
    mount_record_api(prefect_app, mailer.task_failed, packages, importer, store.engine, coordination,
                     settings.run_events, changes, metrics.firings.observe, new_runs, troubles)
    servers = [_Server(FollowUiSwitches(new_runs), settings.prefect_host, settings.prefect_port),
               _Server(Console(legacy_app, store, lambda: services.get("task"), prefect_ui_of(settings), metrics),
                       settings.api_host, settings.api_port, settings.trusted_proxies)]

    loop = asyncio.get_running_loop()
    stall_watch.start(loop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [changes.release(), new_runs.release(), *(s.stop() for s in servers)])
    # The legacy API's lifespan waits for Prefect's; start Prefect first.
    tasks = [asyncio.create_task(servers[0].serve())]
    mailing = asyncio.create_task(mailer.run(), name="keeper-mail")
    failover = asyncio.create_task(run_failover(settings, store, mailer.task_failed, activity), name="failover")
    readiness = asyncio.create_task(run_queue_readiness(settings), name="queue-readiness")
    pool_table = asyncio.create_task(run_pool_nodes(settings, store.engine), name="pool-nodes")
    upcoming = asyncio.create_task(run_upcoming(settings), name="upcoming")
    unschedulable = asyncio.create_task(run_unschedulable(watch), name="unschedulable")
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(servers[1].serve()))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    mailing.cancel()
    failover.cancel()
    readiness.cancel()
    pool_table.cancel()
    upcoming.cancel()
    unschedulable.cancel()
    for t in done:
        if t.exception():
            raise t.exception()
