"""The master's failover service: what a dead node was running is re-run elsewhere or failed.

Every ``INTERVAL`` seconds it looks for work held by a node that is gone, that is offline in
Prefect's eyes (the foreman marks a worker OFFLINE 3 heartbeats after its last one; with
the 5 s heartbeat and foreman loop that ``Settings.prefect_env`` sets, within ~20 s) and no
longer calls the master (coordination_api.NodeActivity), or that was restarted under its
name (a new incarnation):

- **firing claims** left unfinished (schedulemaster/store/claims.py): the node claimed the firing
  and never reported it ran (nodes report within half a second), so it was running;
- **fired claims never recorded**: the node ran them, but its backlog of records for
  Prefect died with it; they are recorded here from what the claim knows, never re-run;
- **worker-path runs** (RunOnce, children, runs started from the UI) left Pending or
  Running under that worker (Prefect's ``prefect.worker.name`` label): Prefect itself
  would leave them so forever (its issues #16746, #18933). They are set Crashed first.

Each one then follows its task's ``FailoverPolicy``: ``retry-elsewhere`` (the default) runs
it again as a flow run in the queue of the node that owns the task now, carrying the first
attempt's Idempotency-Key and a log line saying why; ``fail`` records it Failed, which mails
the keepers. Either way the reason is logged on the master too.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

from schedulemaster.coordination.wire import Firing
from schedulemaster.deployments import chain
from schedulemaster.deployments.spec import TaskSpec, spec_or_none
from schedulemaster.deployments.tasks import DEFAULT_POLICY, INCARNATION_LABEL, POLICIES, Status, record_of, run_name
from schedulemaster.master.coordination_api import pool_workers
from schedulemaster.master.record_api import record_firings
from schedulemaster.store import claims
from schedulemaster.timeutil import utcnow

log = logging.getLogger("schedulemaster.failover")

INTERVAL = 5.0
RERUN_AT_ONCE = 8  # orphaned firings handled concurrently
LOST_PER_TICK = 100  # records of a dead node's fired firings written per tick
PURGE_EVERY = 60.0
START_GRACE = timedelta(seconds=30)  # a node just registered may not have heartbeated yet


def policy_of(spec: TaskSpec | None) -> str:
    value = (spec.FailoverPolicy if spec is not None else DEFAULT_POLICY).strip().lower()
    return value if value in POLICIES else DEFAULT_POLICY


def taken_before_restart(run, info) -> bool:
    """A worker-path run its worker took (Pending or Running, named by Prefect's worker label)
    but never labelled with its incarnation, by a process older than the one now holding the
    name: killed between taking it and labelling it. Its successor shares the name, so only the
    times tell: the run's state is older than the new process."""
    if info is None or (run.labels or {}).get(INCARNATION_LABEL):
        return False
    taken = getattr(run.state, "timestamp", None) if run.state is not None else None
    return taken is not None and taken < info.started_at


class Failover:
    def __init__(self, engine, client, work_pool: str, on_failure=None, activity=None, on_node_offline=None):
        self.engine = engine
        #: async (node name, why) -> None, once per node going offline (the global alarm channels)
        self.on_node_offline = on_node_offline
        self._told_offline: set[str] = set()
        self.activity = activity  # coordination_api.NodeActivity: who still claims firings
        self._busy_noted: set[str] = set()
        self.client = client
        self.work_pool = work_pool
        self.on_failure = on_failure
        self.handed_over = 0
        self.failed = 0
        self._offline_before: set[str] = set()  # nodes seen offline at the previous tick
        self._last_tick = 0.0

    async def run(self) -> None:
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.tick()
                if loop.time() - last_purge > PURGE_EVERY:
                    await asyncio.to_thread(claims.purge, self.engine)
                    last_purge = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next tick tries again
                log.warning("failover check failed: %s", exc)

    async def tick(self) -> None:
        workers = await pool_workers(self.work_pool)
        online = {w.name for w in workers if chain.is_online(w)}
        beats = {w.name: w.last_heartbeat_time for w in workers}
        nodes = await asyncio.to_thread(claims.nodes, self.engine)
        now = utcnow()
        # A node counts as dead only when it was offline at the previous tick too, and that
        # tick was on time: on SQLite, heartbeats can fail to land for a while when the
        # database is busy (Prefect's worker channel then drops them), and right after such
        # a stall the foreman may mark live nodes OFFLINE before their next heartbeat lands.
        # When no node at all is online, the master (not every node) is the likely culprit:
        # nothing is handed over then, except what a restarted node left behind.
        loop_now = asyncio.get_running_loop().time()
        on_time = loop_now - self._last_tick <= 3 * INTERVAL
        pending = await asyncio.to_thread(claims.unfinished, self.engine)
        offline = ({w.name for w in workers} | set(nodes) | {c.node for c in pending}) - online
        confirmed = offline & self._offline_before if on_time and online else set()
        self._offline_before, self._last_tick = offline, loop_now
        await self._tell_offline(confirmed, online, beats, now)

        def gone(name: str, incarnation: str | None) -> str | None:
            """Why a node's work is orphaned, or None while the node holds it."""
            info = nodes.get(name)
            if info is not None and incarnation is not None and info.incarnation != incarnation:
                return f"node {name} was restarted (a new process took its name at {info.started_at:%H:%M:%S} UTC)"
            if name not in confirmed or (info is not None and now - info.started_at < START_GRACE):
                return None
            if self.activity is not None and self.activity.alive(name, info.incarnation if info else None):
                if name not in self._busy_noted:
                    self._busy_noted.add(name)
                    log.warning("node %s is offline in Prefect (no heartbeat lands) but still claims firings: "
                                "its work stays with it", name)
                return None
            self._busy_noted.discard(name)
            beat = beats.get(name)
            seen = f"its last heartbeat {(now - beat).total_seconds():.0f} s ago" if beat else "no heartbeat"
            return f"node {name} went offline ({seen})"

        # Firings that may not have run come first, several at a time (each is a deployment
        # read and a flow run, slow under load); then a bounded share of the records a dead
        # node never sent, so a large backlog of records never holds re-runs back.
        orphaned = [(c, why) for c in pending if (why := gone(c.node, c.incarnation)) is not None]
        for i in range(0, len(orphaned), RERUN_AT_ONCE):
            await asyncio.gather(*(self._claim_orphaned(c, why) for c, why in orphaned[i:i + RERUN_AT_ONCE]))
        budget = LOST_PER_TICK
        for node, incarnation in await asyncio.to_thread(claims.unrecorded_holders, self.engine):
            why = gone(node, incarnation)
            if why is not None and budget > 0:
                lost = await asyncio.to_thread(claims.unrecorded, self.engine, node, incarnation, budget)
                budget -= len(lost)
                await self._record_lost(lost, why)
        for run in await self._held_runs():
            labels = run.labels or {}
            if not (name := labels.get("prefect.worker.name")):
                continue  # just claimed: the worker labels it before it runs it
            why = gone(name, labels.get(INCARNATION_LABEL))
            if why is None and taken_before_restart(run, nodes.get(name)):
                why = (f"node {name} was restarted (a new process took its name at "
                       f"{nodes[name].started_at:%H:%M:%S} UTC) after taking the run")
            if why is not None:
                await self._run_orphaned(run, why)

    # ---- firing claims ----------------------------------------------------------------
    async def _claim_orphaned(self, c: claims.FiringClaim, why: str) -> None:
        from prefect.exceptions import ObjectNotFound

        try:
            deployment = await self.client.read_deployment(UUID(c.task_id))
        except ObjectNotFound:
            await asyncio.to_thread(claims.finish, self.engine, [c.firing_id], "dropped")
            return

        rec = record_of(deployment)
        spec = rec.spec if rec is not None else None
        reason = (f"{why} while it ran firing {c.firing_id} of task [{spec.Title if spec else c.task_id}] "
                  f"scheduled {c.scheduled:%Y-%m-%d %H:%M:%S} UTC")
        if spec is None or rec.status != Status.Running:
            await self._record_failed(c, spec, reason + "; not re-run: the task is no longer Running")
            outcome = "failed"
        elif policy_of(spec) == "fail":
            await self._record_failed(c, spec, f"{reason}; failover policy: fail")
            outcome = "failed"
        else:
            await self._rerun(deployment.id, spec, c.firing_id, reason,
                              {"firing_id": c.firing_id, "idempotency_key": c.firing_id,
                               "scheduled": c.scheduled.isoformat(), "node": c.node})
            outcome = "rerun"
        await asyncio.to_thread(claims.finish, self.engine, [c.firing_id], outcome)

    async def _record_failed(self, c: claims.FiringClaim, spec: TaskSpec | None, reason: str) -> None:
        await self._record([(c, spec, False, reason)])
        self.failed += 1
        log.warning("%s", reason)

    async def _record(self, items: list[tuple[claims.FiringClaim, TaskSpec | None, bool, str]]) -> None:
        """Record firings in Prefect on the nodes' behalf: (claim, task spec, ok, message)."""
        now = utcnow()
        records = [Firing(UUID(c.task_id), c.firing_id, spec.Title if spec else "", c.scheduled,
                          max(c.claimed_at, c.scheduled), c.finished_at or now, ok, message, c.node,
                          logs=[(20 if ok else 40, message, now)], zone=spec.TimeZone if spec else "UTC").record()
                   for c, spec, ok, message in items]
        await record_firings(records, self.on_failure)

    async def _record_lost(self, fired: list[claims.FiringClaim], why: str) -> None:
        """Firings a dead node ran but never recorded (its record backlog died with it): each
        becomes a run with what the claim knows (the outcome, the times), so the run history
        misses none; the failed ones still reach the keepers."""
        from prefect.exceptions import ObjectNotFound

        specs: dict[str, TaskSpec | None] = {}
        items = []
        for c in fired:
            if c.task_id not in specs:
                try:
                    specs[c.task_id] = spec_or_none(
                        ((await self.client.read_deployment(UUID(c.task_id))).parameters or {}).get("task"))
                except ObjectNotFound:
                    specs[c.task_id] = None
            ok = c.outcome == "fired-ok"
            items.append((c, specs[c.task_id], ok,
                          f"ran on node {c.node} ({'succeeded' if ok else 'failed'}); {why} before sending "
                          "this firing's record, so its log lines are lost (recorded by the master)"))
        await self._record([i for i in items if i[1] is not None])
        await asyncio.to_thread(claims.finish, self.engine, [c.firing_id for c in fired], "recorded")
        log.warning("%s: recorded %d firing(s) it ran but had not recorded", why, len(items))

    async def _rerun(self, task_id: UUID, spec: TaskSpec, key: str, reason: str,
                     rerun: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        queue = await chain.queue_for(self.client, self.work_pool, task_id, spec)
        run = await self.client.create_flow_run_from_deployment(
            task_id, parameters={**(extra or {}), "task": spec.wire(), "rerun": {**rerun, "reason": reason}},
            work_queue_name=queue, tags=["sm:rerun"], name=run_name(spec.Title, f"re-run of {key[:8]}"),
            idempotency_key=f"rerun:{key}")
        self.handed_over += 1
        log.warning("%s; re-run as %s in queue %s (failover policy: retry-elsewhere)", reason, run.name, queue)

    async def _tell_offline(self, confirmed: set[str], online: set[str], beats: dict, now) -> None:
        """Say once that a node went offline (offline two ticks in a row while others are
        online); said again only after it came back."""
        self._told_offline &= {n for n in self._told_offline if n not in online}
        if self.on_node_offline is None:
            return
        for name in sorted(confirmed - self._told_offline):
            self._told_offline.add(name)
            beat = beats.get(name)
            seen = f"last heartbeat {(now - beat).total_seconds():.0f} s ago" if beat else "no heartbeat"
            try:
                await self.on_node_offline(name, f"node {name} went offline ({seen})")
            except Exception as exc:  # an alarm channel down: failover goes on
                log.warning("telling that node %s went offline failed: %s", name, exc)

    # ---- worker-path runs -------------------------------------------------------------
    async def _held_runs(self) -> list:
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState,
                                                    FlowRunFilterStateType, WorkPoolFilter, WorkPoolFilterName)
        from prefect.client.schemas.objects import StateType

        return list(await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.work_pool])), limit=200))

    async def _run_orphaned(self, run, why: str) -> None:
        from prefect.states import Crashed

        params = dict(run.parameters or {})
        spec = spec_or_none(params.get("task"))
        reason = f"{why} while it ran {run.name} of task [{spec.Title if spec else run.deployment_id}]"
        await self.client.set_flow_run_state(run.id, Crashed(message=reason[:2000]), force=True)
        if (run.deployment_id is None or spec is None or params.get("action") == "start"
                or policy_of(spec) == "fail"):
            self.failed += 1
            log.warning("%s; marked Crashed (failover policy: %s)", reason, policy_of(spec))
            if self.on_failure is not None and run.deployment_id is not None and spec is not None:
                self.on_failure(spec, utcnow(), reason, "", str(run.id))
            return
        first = params.get("rerun") or {}
        await self._rerun(run.deployment_id, spec, str(run.id), reason,
                          {"run_id": str(run.id), "idempotency_key": first.get("idempotency_key") or str(run.id),
                           "node": (run.labels or {}).get("prefect.worker.name")},
                          extra={k: v for k, v in params.items() if k in ("previous_result",)})
