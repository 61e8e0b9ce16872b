"""The executor node as a Prefect worker type, ``schedulemaster-node``: the whole node runtime.

A node is a worker of the ``schedulemaster`` pool (registered through the
``prefect.collections`` entry point), so it shows in the pool in the UI, heartbeats, and
takes the runs Prefect hands it: RunOnce, children sent to its queue and runs started from
the UI, executed in-process (no Python start per run). It looks in the pool's ``default``
queue, its own ``node-<name>`` queue (where RunOnce sends a task pinned to executors) and the
``tasks`` queue that task deployments live in. Beside those worker loops it runs the firing
loop (firing.py), which fires scheduled instants itself, each claimed at the master first.

``schedulemaster node`` and ``prefect worker start --pool schedulemaster --type
schedulemaster-node`` both start this class; under Prefect's command the node's priority
comes from ``SM_NODE_PRIORITY`` (the command has no such option) and ``--limit`` is its max
concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Optional

import anyio
from prefect.client.schemas.objects import FlowRun
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

from schedulemaster.deployments.pool import WORKER_TYPE
from schedulemaster.deployments.pool import base_job_template as pool_template
from schedulemaster.deployments.tasks import DEFAULT_QUEUE, NODE_QUEUE_PREFIX, TASKS_QUEUE
from schedulemaster.settings import Settings

log = logging.getLogger("schedulemaster.node")

DEFAULT_MAX_CONCURRENCY = 20
NEW_RUNS_WAIT = 20.0  # seconds the master may hold a node's wait for a new run


class NodeJobConfiguration(BaseJobConfiguration):
    """Nothing to configure: a run executes inside the node process."""


class NodeVariables(BaseVariables):
    pass


class NodeWorkerResult(BaseWorkerResult):
    pass


class NotStarted(RuntimeError):
    """The node could not start: the master is unreachable or refused it."""


class NameTaken(NotStarted):
    """A live node holds this name."""


class NodeWorker(BaseWorker[NodeJobConfiguration, NodeVariables, NodeWorkerResult]):
    type = WORKER_TYPE
    job_configuration = NodeJobConfiguration
    job_configuration_variables = NodeVariables
    _description = "A ScheduleMaster executor node: fires ScheduleMaster tasks and runs their flows in-process."
    _display_name = "ScheduleMaster node"

    def __init__(self, work_pool_name: str, work_queues: list[str] | None = None, name: str | None = None,
                 prefetch_seconds: float | None = None, create_pool_if_not_found: bool = True,
                 limit: int | None = None, heartbeat_interval_seconds: int | None = None, *,
                 base_job_template: dict[str, Any] | None = None, priority: int | None = None,
                 settings: Settings | None = None, wait_for_name: float = 0.0, connect_timeout: float = 300.0):
        name = name or socket.gethostname()[:100]
        super().__init__(work_pool_name, work_queues or [DEFAULT_QUEUE, NODE_QUEUE_PREFIX + name], name,
                         prefetch_seconds, create_pool_if_not_found, limit or DEFAULT_MAX_CONCURRENCY,
                         heartbeat_interval_seconds, base_job_template=base_job_template or pool_template())
        #: weight when the nodes share out tasks (the original's Priority)
        self.priority = priority if priority is not None else int(os.environ.get("SM_NODE_PRIORITY", "1"))
        self.max_concurrency = limit or DEFAULT_MAX_CONCURRENCY
        self.settings = settings or Settings.from_env()
        self.wait_for_name = wait_for_name
        self.connect_timeout = connect_timeout
        #: this process's registration (schedulemaster/store/claims.py); stamped on each run it
        #: takes, so the master's failover can tell a run of a dead process from its successor's
        self.incarnation = str(uuid.uuid4())
        self.firing = None  # the FiringLoop, from setup on
        #: why the node stopped: 0 asked to, 1 a part failed, 3 another process took the name
        self.exit_code = 0
        self._runtime = contextlib.AsyncExitStack()
        self._firing_task: asyncio.Task | None = None
        self._new_runs_task: asyncio.Task | None = None
        self._main: asyncio.Task | None = None

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        """The pool's template, the one the master creates the pool with (deployments/pool.py)."""
        return pool_template()

    # ---- life cycle ---------------------------------------------------------------------
    async def start(self, run_once: bool = False, with_healthcheck: bool = False, printer=print) -> None:
        """Run until stop() or a failed part; raises NotStarted when the master cannot be
        reached, refuses the credential, or a live node holds the name (NameTaken)."""
        self._main = asyncio.current_task()
        try:
            await super().start(run_once=run_once, with_healthcheck=with_healthcheck, printer=printer)
        except asyncio.CancelledError:
            if self._main is None:  # stop() asked for it
                return
            raise

    def stop(self, code: int = 0) -> None:
        """End start(): the firing loop stops taking firings, the ones in flight finish and are recorded."""
        if self._main is not None and not self._main.done():
            self.exit_code = max(self.exit_code, code)
            main, self._main = self._main, None
            main.cancel()

    async def setup(self) -> None:
        """Before the worker loops: reach the master, register this process, make the queues,
        start the firing loop."""
        # Imported here, not at the top: Prefect imports this module (the entry point) in every
        # process that loads its collections, the master's server included.
        from prefect.client.orchestration import get_client

        from schedulemaster.coordination.client import MasterClient
        from schedulemaster.deployments.pool import ensure_infrastructure, ensure_queues, wait_for_prefect
        from schedulemaster.node import plugins
        from schedulemaster.node.firing import FiringLoop

        project = logging.getLogger("schedulemaster")
        if project.level == logging.NOTSET:  # under `prefect worker start` the root logs warnings only
            project.setLevel(logging.INFO)
        try:
            client = await self._runtime.enter_async_context(get_client())
            master = MasterClient(client)
            try:
                await wait_for_prefect(client, timeout=self.connect_timeout)
            except RuntimeError as exc:
                raise NotStarted(str(exc)) from None
            await register(master, self.name, self.priority, self.max_concurrency, self.incarnation,
                           self.wait_for_name)
            await ensure_infrastructure(client, self.settings, self._work_pool_name)
            await ensure_queues(client, self._work_pool_name, sorted(self._work_queues))
            host = plugins.host(self.max_concurrency, self.name,
                                self.settings.data_dir / "nodes" / self.name / "plugins")
            host.fetch = master.package  # the nodes share no file system with the master
            self.firing = FiringLoop(client, self.name, self._work_pool_name, self.max_concurrency,
                                     incarnation=self.incarnation, master=master)
            host.pull_policy = lambda: str(self.firing.settings.get("Assembly_ImagePullPolicy") or "Always")
            self.firing.claimer.on_superseded = lambda: self.stop(3)
            await super().setup()
        except BaseException:
            await self._runtime.aclose()
            raise
        self._firing_task = asyncio.create_task(self._run_firing(), name="firing")
        self._new_runs_task = asyncio.create_task(self._follow_new_runs(master), name="new-runs")
        log.info("node %s started (priority %d, max concurrency %d)", self.name, self.priority,
                 self.max_concurrency)

    async def _run_firing(self) -> None:
        try:
            await self.firing.run()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("node %s: the firing loop failed", self.name)
            self.stop(1)

    async def _follow_new_runs(self, master) -> None:
        """Read the queues as soon as the master says a flow run for a worker was created
        (schedulemaster/master/new_runs.py): RunOnce, a Start, a Next or a UI run starts in a
        fraction of a second instead of at the next poll. Taken the usual way (Pending
        proposed, one proposal wins), so two nodes woken together cannot both run it."""
        token = ""
        while True:
            try:
                answer = await master.wait_for_work(token, NEW_RUNS_WAIT)
                seen, token = token, answer.token
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the master is away: the worker's own poll goes on meanwhile
                log.debug("waiting for new runs failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if seen and token != seen:
                try:
                    if answer.runs is None:  # the master does not hold them all: read the queues
                        await self.get_and_submit_flow_runs()
                    elif self._has_successfully_synced and self._accepting():
                        await self._submit_scheduled_flow_runs(flow_run_response=[
                            SimpleNamespace(flow_run=r) for r in self._handed_runs(answer.runs)])
                except Exception as exc:
                    log.warning("taking a new run failed: %s", exc)

    def _handed_runs(self, texts: list[str]) -> list[FlowRun]:
        """The runs the master handed over that this node would have found in its queues."""
        out = []
        due = datetime.now(timezone.utc) + timedelta(seconds=self._prefetch_seconds)
        for text in texts:
            try:
                run = FlowRun.model_validate_json(text)
            except ValueError:
                continue
            if (run.state is not None and run.state.is_scheduled() and run.work_pool_name == self._work_pool_name
                    and run.expected_start_time is not None and run.expected_start_time <= due
                    and run.work_queue_name in {*self._work_queues, TASKS_QUEUE} and self._takes(run)):
                out.append(run)
        return out

    async def teardown(self, *exc_info: Any) -> None:
        """Stop taking firings; let the ones in flight finish and be recorded; then the worker."""
        if self._new_runs_task is not None:
            self._new_runs_task.cancel()
            await asyncio.gather(self._new_runs_task, return_exceptions=True)
        if self._firing_task is not None:
            self._firing_task.cancel()
            await asyncio.gather(self._firing_task, return_exceptions=True)
        if self.firing is not None:
            await self.firing.close()
            log.info("node %s stopped: %d fired, %d recorded", self.name, self.firing.fired,
                     self.firing.recorder.recorded)
            if self.firing.claimer.superseded:
                self.exit_code = 3
        try:
            await super().teardown(*exc_info)
        finally:
            await self._runtime.aclose()

    # ---- the worker's part ----------------------------------------------------------------
    def _accepting(self) -> bool:
        """False while the operator has disabled this node (休息): it then takes no run at all,
        not even from its own queue; they wait there for it or for a Start elsewhere."""
        return self.firing is None or self.name not in self.firing.disabled

    def _accepts_task_run(self, run: FlowRun) -> bool:
        """Only runs of tasks this node owns, so two nodes do not race for every UI-started run."""
        return self.firing is None or self.firing.owns_run(run)

    async def _get_scheduled_flow_runs(self) -> list[Any]:
        """Find due runs with a plain filtered read instead of Prefect's worker-poll endpoint.

        That endpoint also queues `mark_work_queues_ready` / `mark_deployments_ready`, which
        take SQLite's write lock (BEGIN IMMEDIATE) on every poll: a node polling each second
        keeps other writers, task Creates among them, waiting on that lock up to its busy
        timeout. The claim is unchanged: the base class proposes Pending for each run, and only
        one node's proposal wins.
        """
        from prefect.client.schemas.filters import (
            FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterState, FlowRunFilterStateType,
            FlowRunFilterWorkQueueName, WorkPoolFilter, WorkPoolFilterName)
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        if not self._accepting():
            return []
        before = datetime.now(timezone.utc) + timedelta(seconds=self._prefetch_seconds)
        runs = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                work_queue_name=FlowRunFilterWorkQueueName(any_=[*self._work_queues, TASKS_QUEUE]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=before)),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
        return [SimpleNamespace(flow_run=r) for r in runs if self._takes(r)]

    def _takes(self, run: FlowRun) -> bool:
        """Whether a Scheduled run found in (or handed over for) this node's queues is its to take.
        Prefect's scheduler passes task deployments by (prefect_patches #8); an auto-scheduled
        run of a task (a server without that change) is skipped: the firing loop fires those instants."""
        return run.work_queue_name != TASKS_QUEUE or (not run.auto_scheduled and self._accepts_task_run(run))

    async def _submit_run(self, flow_run: FlowRun) -> None:
        """A task's run is taken and run by the node itself (node/direct_runs.py: ~0.3 s sooner
        than through Prefect's flow engine)."""
        from schedulemaster.deployments.tasks import INCARNATION_LABEL
        from schedulemaster.node.direct_runs import DirectRun, runs_directly

        firing = self.firing
        if firing is None or firing.http is None or not runs_directly(flow_run):
            return await super()._submit_run(flow_run)
        labels = {"prefect.worker.name": self.name, "prefect.worker.type": self.type,
                  INCARNATION_LABEL: self.incarnation}
        if self._work_pool is not None:
            labels.update({"prefect.work-pool.name": self._work_pool.name,
                           "prefect.work-pool.id": str(self._work_pool.id)})
        try:
            await DirectRun(self.client, flow_run, labels=labels, settings=lambda: firing.settings,
                            http_session=lambda: firing.http, plugin_host=firing.plugins,
                            report_failure=firing.master.report_failure,
                            running_child=firing.running_child).run()
        except Exception:
            log.exception("flow run %s could not be run", flow_run.id)
        finally:  # what BaseWorker._submit_run does when a run ends
            self._release_limit_slot(flow_run.id)
            self._submitting_flow_run_ids.discard(flow_run.id)
            if self._cancelling_observer is not None:
                self._cancelling_observer.remove_in_flight_flow_run_id(flow_run.id)

    async def run(self, flow_run: FlowRun, configuration: NodeJobConfiguration,
                  task_status: Optional[anyio.abc.TaskStatus[Any]] = None) -> NodeWorkerResult:
        from prefect.flow_engine import run_flow

        from schedulemaster.deployments.tasks import INCARNATION_LABEL
        from schedulemaster.flows.task_flow import run_task

        if task_status is not None:
            task_status.started(str(flow_run.id))
        await self.client.update_flow_run_labels(flow_run.id, {INCARNATION_LABEL: self.incarnation})
        state = await run_flow(run_task, flow_run=flow_run, parameters=dict(flow_run.parameters or {}),
                               return_type="state")
        return NodeWorkerResult(identifier=str(flow_run.id), status_code=0 if state.is_completed() else 1)


async def register(master, name: str, priority: int, max_concurrency: int, incarnation: str,
                   wait: float = 0.0) -> None:
    """Register this process as node ``name`` at the master (schedulemaster/master/coordination_api.py);
    while a live process holds the name, retry for ``wait`` seconds, then raise NameTaken.
    The master answers with this incarnation's token, which every later call of ``master``
    (a MasterClient) carries: the master's node endpoints take a call for this node only with it."""
    from prefect.exceptions import PrefectHTTPStatusError

    from schedulemaster.coordination.wire import NodeRegistration

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    registration = NodeRegistration(name=name, priority=priority, max_concurrency=max_concurrency,
                                    incarnation=incarnation, host=socket.gethostname()[:200])
    while True:
        try:
            await master.register(registration)
            return
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 401:
                raise NotStarted("the master refused this node's Prefect credential: set PREFECT_API_AUTH_STRING "
                                   "to the master's auth string (on its machine: <data dir>/prefect-auth)") from None
            if exc.response.status_code != 409:
                raise
            if loop.time() >= deadline:
                raise NameTaken(exc.response.json().get("detail", exc.response.text)) from None
        await asyncio.sleep(2.0)
