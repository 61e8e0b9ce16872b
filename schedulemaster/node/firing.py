"""The node's firing path: know every schedule ahead, fire at the instant, record later.

The node owns the schedule of every Running task it is responsible for (Prefect's own
scheduler would create a Scheduled run per firing and then cost ~170 ms of server CPU to
run it, far too much for 1,200 firings a minute; docs/prefect-facts.md, What a run costs the server). So a node:

1. syncs the task book from Prefect's deployments every ``SYNC_SECONDS`` (status, spec);
2. computes each task's next Quartz instant and keeps them in a heap;
3. sleeps until the earliest instant and fires it from a bounded async HTTP pool
   (``MaxConcurrency``: beyond it firings queue, they are not dropped);
4. hands the outcome to the ``Recorder``, which writes it to Prefect in bulk.

Which node fires a task: among the live nodes of the pool allowed by the task's Executors,
the one with the highest rendezvous hash of (task, node), weighted by the nodes' Priority.
Every node computes the same answer from the same worker list. While nodes learn that one
joined or left, two may both believe they own a task: each firing is claimed at the master
first (schedulemaster/node/node_claims.py), and only the claim's winner runs it. A node that takes
a task over from one that died catches up the instants nobody claimed since (within the
misfire window), so a node's death loses no firing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from schedulemaster.coordination.client import MasterClient
from schedulemaster.coordination.wire import MAX_TASKS, Firing, TasksRequest, TaskTrouble
from schedulemaster.deployments import chain, plan, quartz
from schedulemaster.deployments import tasks as dep
from schedulemaster.deployments.spec import TaskSpec, spec_or_none
from schedulemaster.deployments.tasks import Status
from schedulemaster.deployments.variables import read_node_variables
from schedulemaster.flows.http_task import new_session, outcome_lines, perform_http
from schedulemaster.node import misfire, plugins
from schedulemaster.node.node_claims import AHEAD, Claimer, Superseded
from schedulemaster.node.recorder import Recorder
from schedulemaster.timeutil import utcnow

log = logging.getLogger("schedulemaster.node")

SYNC_SECONDS = 1.0
SYNC_WAIT = 20.0  # seconds the master may hold a wait for a change (schedulemaster/master/task_changes.py)
#: how far before the last look a sync asks again: a write whose transaction committed
#: after a later one was seen still arrives
VERSION_OVERLAP = timedelta(seconds=5)
RECONCILE_SECONDS = 120.0  # every task's version compared (see sync)
#: how often the live nodes, their weights and the disabled list are re-read; SM_NODES_REFRESH_SECONDS
#: overrides (the tests use 1 s instead of waiting out 5)
NODES_SECONDS = float(os.environ.get("SM_NODES_REFRESH_SECONDS") or 5.0)


def firing_id(task_id: uuid.UUID, at: datetime) -> str:
    """Deterministic per (task, instant): every node and every retry agrees on it."""
    return str(uuid.uuid5(task_id, at.astimezone(timezone.utc).isoformat()))


def _local(at: datetime, zone: str) -> str:
    return f"{at.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S}"


def started_at(spec: TaskSpec) -> datetime | None:
    """When the task was last started (its StartedAt, in its own zone), in UTC."""
    return _instant(spec.StartedAt, spec)


def running_since(spec: TaskSpec) -> datetime | None:
    """Since when the task has been Running: its last Start or Resume, in UTC."""
    return max(filter(None, (_instant(spec.StartedAt, spec), _instant(spec.ResumedAt, spec))), default=None)


def _instant(raw: str | None, spec: TaskSpec) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else plan.local_to_utc(raw, spec.TimeZone)


@dataclass
class Entry:
    task_id: uuid.UUID
    spec: TaskSpec
    version: Any
    gen: int
    next_at: datetime | None = None
    #: how many firings of the task run at once: one (the original), or the policy's MaxParallel
    gate: asyncio.Semaphore | None = None
    waiting: int = 0  # scheduled firings waiting for the gate
    #: the firings going on: firing id -> (when it began, its task), for the overlap policies
    running: dict[str, tuple[datetime, asyncio.Future]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gate is None:
            self.gate = asyncio.Semaphore(self.spec.Policy.gate_size)

    def successor(self, spec: TaskSpec, version: Any, gen: int, next_at: datetime | None) -> "Entry":
        """This task's entry after a change: firings going on still hold their gate."""
        same = spec.Policy.gate_size == self.spec.Policy.gate_size
        return Entry(self.task_id, spec, version, gen, next_at, gate=self.gate if same else None,
                     running=self.running)


@dataclass
class Progress:
    """How far a firing's attempts got (what a cancellation records)."""

    attempt: int = 1
    started: datetime | None = None
    recorded: bool = False  # the current attempt's outcome is with the recorder
    ok: bool = False
    result: Any = None
    record_id: str = ""


class FiringLoop:
    def __init__(self, client, node_name: str, work_pool: str, max_concurrency: int,
                 recorder: Recorder | None = None, incarnation: str | None = None,
                 master: MasterClient | None = None):
        self.client = client
        #: the master's own endpoints, with this node's token once registered
        self.master = master or MasterClient(client)
        self.node = node_name
        self.claimer = Claimer(self.master, node_name, incarnation or str(uuid.uuid4()))
        self.weights: dict[str, int] = {}  # Priority per node (the master's nodes table)
        self._arrived: list[Entry] = []  # entries new to the book since the last catch-up
        # tasks another node took, with a claimed firing left here, and since when
        self.handed_off: dict[uuid.UUID, tuple[Entry, datetime]] = {}
        self.work_pool = work_pool
        self.recorder = recorder or Recorder(self.master, master_busy=lambda: self.claimer.master_busy)
        self.slots = asyncio.Semaphore(max(1, max_concurrency))
        self.max_concurrency = max(1, max_concurrency)
        self.http = None  # an aiohttp session, opened in run() inside the event loop
        self.book: dict[uuid.UUID, Entry] = {}
        self.plugins = plugins.host(max_concurrency, node_name)
        self.plugin_wanted: set[uuid.UUID] = set()  # plugin tasks Running or Paused on this node
        self._failed_starts: dict[uuid.UUID, Any] = {}  # a Start whose plugin failed: not retried
        self.heap: list[tuple[datetime, int, uuid.UUID, int]] = []
        self.settings: dict[str, Any] = {}
        self.live_nodes: list[str] = [node_name]
        self.disabled: set[str] = set()  # nodes the operator disabled (deployments/variables.py)
        self._seq = itertools.count()
        self._gen = itertools.count(1)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self.fired = 0
        self.skipped = 0
        #: every task's `updated` as last read, and its record (None: not a valid task); the
        #: records of tasks other nodes own are kept too, so a change of nodes needs no reads
        self.versions: dict[uuid.UUID, datetime] = {}
        self.records: dict[uuid.UUID, dep.TaskRecord | None] = {}
        self._as_of: datetime | None = None  # the master's clock at the last look
        self._last_full = 0.0
        self._reapply = False  # the live nodes changed: every known task is re-applied
        self._change_token: str | None = None  # the task book's, as of the last sync
        self._look_again = asyncio.Event()  # sync now, without waiting for the master

    # ---- loops --------------------------------------------------------------------
    async def run(self) -> None:
        self.http = new_session(self.max_concurrency + 10)
        for first in (self.refresh_nodes, self.sync):
            try:
                await first()
            except Exception as exc:  # e.g. the master is busy: the loops below try again
                log.warning("%s failed at start: %s; retrying", first.__name__, exc)
        await asyncio.gather(self._sync_loop(),
                             self._every(NODES_SECONDS, self.refresh_nodes),
                             self._every(AHEAD / 4, self.claim_ahead),
                             self.timer(), self.recorder.run())

    async def _sync_loop(self) -> None:
        """Sync at most once every SYNC_SECONDS; in between, wait for the master to say the
        task book changed (it answers after SYNC_WAIT seconds anyway) or for a reason of this
        node's own (the live nodes changed)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._until_changed()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sync failed: %s", exc)
            await asyncio.sleep(max(0.0, SYNC_SECONDS - (loop.time() - started)))

    async def _until_changed(self) -> None:
        if self._change_token is None or self._reapply or self._arrived or self._look_again.is_set():
            self._look_again.clear()
            return
        waiting = asyncio.ensure_future(self.master.wait_for_change(self._change_token, SYNC_WAIT))
        woken = asyncio.ensure_future(self._look_again.wait())
        try:
            await asyncio.wait({waiting, woken}, timeout=SYNC_WAIT + 10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            woken.cancel()
            self._look_again.clear()
        if waiting.done() and not waiting.cancelled() and waiting.exception() is not None:
            log.debug("waiting for a change of the task book failed: %s", waiting.exception())

    async def _every(self, seconds: float, fn) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed: %s", fn.__name__, exc)

    async def close(self) -> None:
        """Let firings in flight finish and be recorded, then stop."""
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=30)
        for task in list(self._inflight):  # still waiting for a claim or a slot after 30 s
            task.cancel()
        # Bounded: with the master away, Prefect's client retries each call for a minute and
        # the node did not stop on SIGTERM. What is not reported, the failover service sorts out.
        try:  # what ran is reported first: the records may take long to send
            await asyncio.wait_for(self.claimer.claim([]), 15)
        except Exception as exc:
            log.error("could not report %d fired firings at shutdown: %s", len(self.claimer.done), exc)
        try:
            await asyncio.wait_for(self.recorder.flush(), 30)
        except Exception as exc:
            log.error("could not record %d firings at shutdown: %s", len(self.recorder.pending), exc)
        await self.plugins.close()
        if self.http is not None:
            await self.http.close()

    async def refresh_nodes(self) -> None:
        try:
            disabled, settings = await read_node_variables(self.client)
        except Exception as exc:
            log.warning("cannot read which nodes are disabled (%s); keeping the last answer", exc)
            disabled, settings = self.disabled, self.settings
        if (self.node in disabled) != (self.node in self.disabled):
            log.warning("node %s %s", self.node,
                        "is disabled (休息): it fires nothing" if self.node in disabled else "is enabled again")
        self.disabled = disabled
        try:
            live = chain.online(await self.client.read_workers_for_work_pool(self.work_pool), disabled)
        except Exception as exc:
            log.warning("cannot read the pool's workers (%s); assuming only this node", exc)
            live = []
        if self.node not in live and self.node not in disabled:
            live.append(self.node)  # we are alive even before our first heartbeat lands
        weights = await self._read_node_table()
        if live != self.live_nodes or weights != self.weights:
            self.live_nodes, self.weights = sorted(live), weights
            self._reassign()
        self.settings = settings

    async def _read_node_table(self) -> dict[str, int]:
        """Every node's Priority, and this node's MaxConcurrency as the operator set it."""
        try:
            rows = await self.master.nodes()
        except Exception as exc:
            log.warning("cannot read the nodes table (%s); keeping the last priorities", exc)
            return self.weights
        for row in rows:
            if row.name == self.node and row.max_concurrency != self.max_concurrency:
                log.warning("node %s: max concurrency %d -> %d", self.node, self.max_concurrency,
                            row.max_concurrency)
                self.max_concurrency = row.max_concurrency
                self.slots = asyncio.Semaphore(self.max_concurrency)  # firings in flight keep the old one
        return {row.name: row.priority for row in rows}

    def owns_run(self, flow_run) -> bool:
        """Whether a flow run of a task (e.g. started from the UI) is this node's to run."""
        spec = spec_or_none((flow_run.parameters or {}).get("task"))
        return spec is not None and flow_run.deployment_id is not None and self.mine(spec, flow_run.deployment_id)

    def mine(self, spec: TaskSpec, task_id: uuid.UUID) -> bool:
        allowed = spec.Executors
        candidates = [n for n in self.live_nodes if not allowed or n in allowed]
        return chain.owner(task_id, candidates, self.weights) == self.node

    def _reassign(self) -> None:
        for tid, entry in list(self.book.items()):
            if not self.mine(entry.spec, tid):
                del self.book[tid]  # tasks that became ours are picked up by the next sync
                # firings it already claimed are still this node's to run: the new owner
                # starts after the last claimed instant (catch_up), so dropping them loses them
                self.handed_off[tid] = (entry, utcnow())
                self.plugin_wanted.discard(tid)  # its instance goes when the records are re-applied
        self._reapply = True
        self._look_again.set()

    async def sync(self) -> None:
        """Bring the task book up to date with the task deployments.

        The master says which tasks changed since the last look (``updated`` is indexed, so
        that costs what changed, not how many tasks there are) and how many exist; only the
        changed ones are read. Every version is compared when the count does not add up (a
        task went, or one committed late with an older ``updated``), and every
        RECONCILE_SECONDS anyway: a few bytes per task, for an edit that committed more than
        VERSION_OVERLAP after its timestamp.
        """
        loop_time = asyncio.get_running_loop().time()
        full = self._as_of is None or loop_time - self._last_full >= RECONCILE_SECONDS
        answer = await self.master.task_versions(None if full else self._as_of - VERSION_OVERLAP)
        if not full and answer.count != len(self.versions) + len({v.id for v in answer.tasks} - self.versions.keys()):
            log.debug("the task count (%d) disagrees with the versions known: every version read", answer.count)
            answer, full = await self.master.task_versions(None), True
        if full:
            self._last_full = loop_time
        self._as_of = answer.as_of
        self._change_token, token = None, answer.token or None  # kept once the answer is applied
        stale = [v for v in answer.tasks if self.versions.get(v.id) != v.updated]
        fresh = await self._read_records([v.id for v in stale])
        for v in stale:
            self.versions[v.id] = v.updated
            self.records[v.id] = fresh.get(v.id)  # None: not a valid task (logged by record_of)
        gone = set(self.versions) - {v.id for v in answer.tasks} if full else set()
        gone |= {v.id for v in stale if v.id not in fresh}  # deleted between the two reads
        for tid in gone:
            self.versions.pop(tid, None)
            self.records.pop(tid, None)
            self.book.pop(tid, None)
            self.plugin_wanted.discard(tid)
        now = utcnow()
        todo = self.records.values() if self._reapply else (fresh[v.id] for v in stale if v.id in fresh)
        self._reapply = False
        for rec in list(todo):
            if rec is not None:
                await self._apply(rec, now)
        if gone or full:  # instances of tasks no longer wanted here (also those a Start loaded)
            for tid in self.plugins.stale(self.plugin_wanted):
                await self.plugins.stop(tid)
        if self._arrived:
            arrived, self._arrived = self._arrived, []
            try:
                await self.catch_up(arrived, now)
            except BaseException:
                self._arrived = arrived + self._arrived  # caught up at the next sync instead
                raise
        self._change_token = token

    async def _read_records(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, dep.TaskRecord | None]:
        """The task records of these deployments, MAX_TASKS per call; an id absent from the
        answer was deleted, one mapped to None is not a valid task."""
        out: dict[uuid.UUID, dep.TaskRecord | None] = {}
        for i in range(0, len(ids), MAX_TASKS):
            page = await self.master.read_tasks(TasksRequest(ids=ids[i:i + MAX_TASKS]))
            out.update((row.id, dep.record_of(row)) for row in page.rows)
        return out

    async def catch_up(self, entries: list[Entry], now: datetime) -> None:
        """Tasks that just became this node's: the instants since the task's last claimed
        firing (or since it became Running, when it never fired) that nobody claimed, because their node
        died or was disabled, or no node was live. Those within the task's misfire threshold
        fire now, late; those older go by its MisfirePolicy: ``skip`` records them missed,
        ``once`` fires the newest of them once and records the rest missed, ``all`` fires each
        (at most MAX_CATCH_UP, oldest missed first). A task fired by a live node until now
        has nothing to catch up."""
        latest = await self.master.latest(e.task_id for e in entries)
        plans: list[tuple[Entry, list[datetime], str]] = []
        for e in entries:
            floor = running_since(e.spec)
            claimed = latest.get(str(e.task_id))
            if claimed is not None and firing_id(e.task_id, claimed) in self.claimer.won:
                # claimed here ahead and not fired: the task was paused (or left and came back)
                # before its instant, and the resume reached this node after it: still to fire
                claimed -= timedelta(microseconds=1)
            if claimed is None and floor is not None:
                # never fired: from when it became Running (a plugin's Start loads it on its
                # node first, and the schedule begins after that, as in the original)
                floor = max(floor, e.version[0])
            last = claimed or floor
            if last is None:
                continue
            pol = e.spec.Policy
            gap = misfire.plan_gap(e.spec, max(last, floor or last), now)
            self._missed(e, gap.missed, gap.complete, f"no node ran them at their time (MisfirePolicy "
                                                      f"{pol.MisfirePolicy}, threshold {pol.MisfireThresholdSeconds} s)")
            if gap.fire:
                why = ("caught up: no node ran it at its time (its node went offline)" if claimed is not None
                       else "caught up: it fell due between the task's start and its node taking it")
                plans.append((e, gap.fire, why))
        await self._claim_then_fire(plans)

    async def _claim_then_fire(self, plans: list[tuple[Entry, list[datetime], str]]) -> None:
        """Claim the planned late firings in one call; fire those won, each task's in turn."""
        if not plans:
            return
        await self.claimer.claim([(firing_id(e.task_id, at), e.task_id, at) for e, ats, _ in plans for at in ats])
        for e, ats, why in plans:
            # taken now, so the stale-claim release does not give them back while they wait their turn
            won = [at for at in ats if self.claimer.won.pop(firing_id(e.task_id, at), None) is not None]
            if won:
                log.warning("task %s [%s]: %d firing(s) since %s fired now, late (%s)",
                            e.task_id, e.spec.Title, len(won), won[0].isoformat(), why)
                self._spawn(self._fire_in_turn(e, won, why))

    def _missed(self, entry: Entry, instants: list[datetime], complete: bool, why: str) -> None:
        """Record instants that will not fire as one Missed run (its name and message say how
        many and from when to when): a day of missed one-second firings is one run, not 86,400.
        Its id follows from the first instant, so two nodes that see the same gap record it once."""
        if not instants:
            return
        now = utcnow()
        count = f"{len(instants)}" + ("" if complete else "+")
        first, last = instants[0], instants[-1]
        zone = entry.spec.TimeZone
        span = (f"{_local(first, zone)}" if len(instants) == 1 else f"{_local(first, zone)} … {_local(last, zone)}")
        message = f"missed {count} firing(s), {span}: {why}"
        log.warning("task %s [%s]: %s", entry.task_id, entry.spec.Title, message)
        self.skipped += len(instants)
        fid = firing_id(entry.task_id, first)
        self.recorder.add(Firing(entry.task_id, fid, entry.spec.Title, first, now, now, False, message, self.node,
                                 None, [(30, message, now)], zone=zone, not_run="Missed",
                                 record_id=f"{fid}#missed", missed=len(instants)))

    def _not_run(self, entry: Entry, fid: str, at: datetime, state: str, why: str) -> None:
        """Record a firing its task's policy did not run (Skipped, Missed)."""
        now = utcnow()
        self.skipped += 1
        log.warning("task %s [%s]: firing at %s %s: %s", entry.task_id, entry.spec.Title, at, state.lower(), why)
        self.recorder.add(Firing(entry.task_id, fid, entry.spec.Title, at, now, now, False, f"{state.lower()}: {why}",
                                 self.node, None, [(30, f"{state.lower()}: {why}", now)], zone=entry.spec.TimeZone,
                                 not_run=state, record_id=f"{fid}#{state.lower()}"))

    async def _fire_in_turn(self, entry: Entry, instants: list[datetime], why: str, claimed: bool = True) -> None:
        for at in instants:
            await self.fire(entry, at, why_late=why, claimed=claimed)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def claim_ahead(self) -> None:
        """Claim, in one call, every firing due within AHEAD seconds; release the claims of
        firings that will not happen after all (their task was stopped, edited or moved)."""
        now = utcnow()
        horizon = now + timedelta(seconds=AHEAD)
        items = []
        for at, _, tid, gen in self.heap:
            entry = self.book.get(tid)
            if at <= horizon and entry is not None and entry.gen == gen:
                fid = firing_id(tid, at)
                if not self.claimer.known(fid):
                    items.append((fid, tid, at))
        try:
            await self.claimer.claim(items, keepalive=True)
        except Superseded:
            return  # the Claimer said so and stops the node
        await self.claimer.release(self.claimer.stale(now))
        for tid, (_entry, since) in list(self.handed_off.items()):
            if now - since > timedelta(seconds=AHEAD + 10):
                del self.handed_off[tid]  # its claimed firing is behind us

    async def _apply(self, rec: dep.TaskRecord, now: datetime) -> bool:
        """Take one task record into the book; False when this node should not fire it."""
        mine = self.mine(rec.spec, rec.id)
        if rec.spec.is_plugin and not await self._plugin_lifecycle(rec, mine):
            self.book.pop(rec.id, None)
            return False
        if rec.status != Status.Running or not mine:
            self.book.pop(rec.id, None)
            return False
        version = (rec.updated, rec.status)
        entry = self.book.get(rec.id)
        if entry is not None and entry.version == version:
            return True
        try:
            if rec.spec.RunLoop:
                nxt = plan.next_fire(rec.spec, now)
                due = entry.next_at if entry is not None else None
                if due is not None and due <= now and plan.next_fire(rec.spec, due - timedelta(microseconds=1)) == due:
                    # an instant the timer has not reached yet (a busy loop) is still this
                    # task's after the change: starting from now would drop it without a word
                    nxt = due
            else:
                nxt = await self._one_shot_due(rec.id, rec.spec, now)
        except quartz.CronError as exc:
            log.error("task %s: %s", rec.id, exc)
            self.book.pop(rec.id, None)
            return False
        arrived = entry is None
        entry = (Entry(rec.id, rec.spec, version, next(self._gen), nxt) if entry is None
                 else entry.successor(rec.spec, version, next(self._gen), nxt))
        self.book[rec.id] = entry
        if arrived and rec.spec.RunLoop:
            self._arrived.append(entry)
        if nxt is not None:
            self._push(entry)
        return True

    async def _plugin_lifecycle(self, rec: dep.TaskRecord, mine: bool) -> bool:
        """Start, pause, resume or stop this node's instance of a plugin task; False when
        the task cannot fire here (not ours, not Running, or its plugin failed to start)."""
        if mine and rec.status in (Status.Running, Status.Paused):
            self.plugin_wanted.add(rec.id)
        else:
            self.plugin_wanted.discard(rec.id)
            if rec.id in self.plugins.loaded:
                await self.plugins.stop(rec.id)
            return False
        if rec.status == Status.Paused:
            self.plugins.pause(rec.id)
            return False
        key = rec.spec.StartedAt
        if rec.id in self._failed_starts and self._failed_starts[rec.id] == key:
            return False
        try:
            await self.plugins.start(rec.id, rec.spec)
        except plugins.PluginError as exc:
            self._failed_starts[rec.id] = key
            log.error("task %s [%s]: the plugin did not start: %s", rec.id, rec.spec.Title, exc)
            self._spawn(self._tell_trouble(rec.id, str(exc).splitlines()[0][:2000] or type(exc).__name__))
            return False
        if rec.id in self._failed_starts:
            del self._failed_starts[rec.id]
            self._spawn(self._tell_trouble(rec.id, ""))
        self.plugins.resume(rec.id)
        return True

    async def _tell_trouble(self, task_id: uuid.UUID, message: str) -> None:
        """Tell the master this node cannot load the task's plugin ("": it can again), so a
        Running task that fires nothing says why (schedulemaster/master/task_trouble.py)."""
        try:
            await self.master.report_trouble(TaskTrouble(task_id=task_id, node=self.node, message=message))
        except Exception as exc:  # the node's log still says it
            log.warning("could not tell the master about task %s's plugin: %s", task_id, exc)

    async def _one_shot_due(self, task_id: uuid.UUID, spec: TaskSpec, now: datetime) -> datetime | None:
        """RunLoop=false fires once; within the misfire window a node (re)start still fires
        it, unless Prefect already holds a run for that firing."""
        at = plan.next_fire(spec, now - spec.Policy.threshold)
        if at is None or at > now:
            return at
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

        runs = await self.client.read_flow_runs(flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[firing_id(task_id, at)])), limit=1)
        return None if runs else at

    def _push(self, entry: Entry) -> None:
        heapq.heappush(self.heap, (entry.next_at, next(self._seq), entry.task_id, entry.gen))
        if self.heap[0][2] == entry.task_id:
            self._wake.set()

    async def timer(self) -> None:
        while True:
            now = utcnow()
            while self.heap and self.heap[0][0] <= now:
                at, _, tid, gen = heapq.heappop(self.heap)
                entry = self.book.get(tid)
                if entry is None or entry.gen != gen:
                    gone = self.handed_off.get(tid, (None, None))[0]
                    if gone is not None and gone.gen == gen and firing_id(tid, at) in self.claimer.won:
                        self._spawn(self.fire(gone, at))  # claimed before the task moved on
                    continue  # stopped, paused, edited or handed to another node
                resume_from = at
                if now - at > entry.spec.Policy.threshold:  # this loop fell behind (a stalled process)
                    resume_from = now
                    self._timer_behind(entry, at, now)
                else:
                    self._spawn(self.fire(entry, at))
                if entry.spec.RunLoop:
                    try:
                        entry.next_at = plan.next_fire(entry.spec, resume_from)
                    except quartz.CronError:
                        entry.next_at = None
                    if entry.next_at is not None:
                        heapq.heappush(self.heap, (entry.next_at, next(self._seq), tid, gen))
                else:
                    entry.next_at = None
            self._wake.clear()
            delay = (self.heap[0][0] - utcnow()).total_seconds() if self.heap else 1.0
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 1.0))
                except asyncio.TimeoutError:
                    pass

    def _timer_behind(self, entry: Entry, at: datetime, now: datetime) -> None:
        """The timer reached ``at`` later than the task's threshold: the instants from ``at``
        to now go by its MisfirePolicy, as a taken-over task's do (node/misfire.py)."""
        pol = entry.spec.Policy
        why = f"the node's timer fell {(now - at).total_seconds():.0f} s behind (MisfirePolicy {pol.MisfirePolicy})"
        try:
            gap = misfire.plan_gap(entry.spec, at - timedelta(microseconds=1), now)
        except quartz.CronError:
            gap = misfire.MisfirePlan(fire=[at])
        if at not in gap.fire:  # claimed ahead, and it will not fire
            self._spawn(self.claimer.release([firing_id(entry.task_id, at)]))
        self._missed(entry, gap.missed, gap.complete, why)
        if gap.fire:
            self._spawn(self._fire_in_turn(entry, gap.fire, why, claimed=False))

    async def _claimed(self, entry: Entry, fid: str, at: datetime) -> bool:
        """Whether this node won the firing's claim; retried while the master cannot answer,
        until the firing would be a misfire (without a claim it never runs: a node cut off
        from the master fires nothing that another node might fire too)."""
        delay = 0.5
        while True:
            try:
                return await self.claimer.take(fid, entry.task_id, at)
            except Superseded:
                return False
            except Exception as exc:
                if utcnow() - at > entry.spec.Policy.threshold:
                    self.skipped += 1
                    self.claimer.forget(fid)
                    log.error("task %s [%s]: firing at %s not run, it could not be claimed: %s",
                              entry.task_id, entry.spec.Title, at, exc)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def fire(self, entry: Entry, at: datetime, *, previous_result: Any = None,
                   parent: str | None = None, parent_task: uuid.UUID | None = None, fid: str | None = None,
                   why_late: str | None = None, claimed: bool = False) -> None:
        """One firing of a task, as its policies (deployments/policy.py) say: claimed first,
        then through the task's gate (OverlapPolicy), then its attempts (Retries), each one
        recorded; a firing cancelled by a newer one is recorded Cancelled."""
        pol = entry.spec.Policy
        fid = fid or firing_id(entry.task_id, at)
        t0 = utcnow()
        if not claimed and not await self._claimed(entry, fid, at):
            return  # another node runs it (or nobody may: logged)
        # With the gate full (OverlapPolicy queue, the original's DisallowConcurrentExecution,
        # or parallel with MaxParallel runs going), the firing waits for a place and is a
        # misfire when that made it later than the threshold. While a run that began before
        # this instant is still going and a firing already waits, this one is skipped (a
        # blocked Quartz trigger does not pile up either). Firings that came due while none
        # ran, only waiting for their claims (a slow master answers a burst at once), all
        # wait their turn: none of them was blocked by a run, so skipping them would lose
        # firings. Catch-up firings always wait: a dead node did not run them.
        waited = False
        if entry.gate.locked() and why_late is None:
            oldest = min((since for since, _ in entry.running.values()), default=None)
            if pol.OverlapPolicy == "skip":
                self._not_run(entry, fid, at, "Skipped", "the previous run is still going (OverlapPolicy skip)")
                await self.claimer.release([fid])
                return
            if pol.OverlapPolicy == "cancel":
                for other, (_since, run) in list(entry.running.items()):
                    log.warning("task %s [%s]: firing %s cancelled, the firing at %s takes its place",
                                entry.task_id, entry.spec.Title, other, at)
                    run.cancel(f"the firing at {_local(at, entry.spec.TimeZone)} took its place (OverlapPolicy cancel)")
            elif entry.waiting and oldest is not None and oldest <= at:
                self._not_run(entry, fid, at, "Skipped", "the previous run is still going and the next already waits")
                await self.claimer.release([fid])
                return
            entry.waiting += 1
            waited = True
        gate = entry.gate
        try:
            await gate.acquire()
        finally:
            if waited:
                entry.waiting -= 1
        progress = Progress()
        try:
            late = utcnow() - at
            if late > pol.threshold and pol.MisfirePolicy == "skip" and why_late is None:  # caught-up ones were chosen
                self._not_run(entry, fid, at, "Missed", f"the previous run went on until {late.total_seconds():.0f} s "
                              f"after it (MisfirePolicy skip, threshold {pol.MisfireThresholdSeconds} s)")
                await self.claimer.release([fid])
                return
            run = asyncio.ensure_future(self._attempts(entry, fid, at, progress, previous_result=previous_result,
                                                       parent=parent, parent_task=parent_task, why_late=why_late,
                                                       t0=t0))
            entry.running[fid] = (utcnow(), run)
            try:
                await asyncio.wait({run})
            except asyncio.CancelledError:  # the node stops: the firing goes with it
                run.cancel()
                raise
        finally:
            entry.running.pop(fid, None)
            gate.release()
        self.fired += 1
        if run.cancelled():
            now = utcnow()
            why = "cancelled: a newer firing took its place (OverlapPolicy cancel)"
            self.recorder.add(Firing(entry.task_id, fid, entry.spec.Title, at, progress.started or now, now, False,
                                     why, self.node, None, [(30, why, now)], zone=entry.spec.TimeZone, parent=parent,
                                     parent_task=parent_task, not_run="Cancelled", attempt=progress.attempt,
                                     record_id=f"{fid}#cancelled" if progress.recorded else self._attempt_id(fid, progress.attempt)))
            self.claimer.fired(fid, False)
            return
        run.result()  # a bug in _attempts is raised here, not swallowed
        self.claimer.fired(fid, progress.ok)
        if progress.ok and entry.spec.Nexts:
            await self.trigger_children(entry, progress.record_id, progress.result)

    @staticmethod
    def _attempt_id(fid: str, attempt: int) -> str:
        """The recorded run of an attempt: the firing id for the first (what one-shot and
        failover checks look up), the firing id and the number after."""
        return fid if attempt == 1 else f"{fid}#{attempt}"

    async def _attempts(self, entry: Entry, fid: str, at: datetime, progress: Progress, *, previous_result: Any,
                        parent: str | None, parent_task: uuid.UUID | None, why_late: str | None,
                        t0: datetime) -> None:
        """Run the firing until an attempt succeeds or the task's Retries are spent; every
        attempt is recorded (its run says which), the receiver gets the same Idempotency-Key
        each time and the attempt number (flows/http_task.ATTEMPT_HEADER)."""
        pol, title = entry.spec.Policy, entry.spec.Title
        for attempt in range(1, pol.attempts + 1):
            progress.attempt, progress.recorded = attempt, False
            queued = utcnow()
            async with self.slots:
                started = progress.started = utcnow()
                if entry.spec.is_plugin:
                    out = await self.plugins.run(entry.task_id, entry.spec, trace_id=fid,
                                                 previous_result=previous_result)
                else:
                    out = await perform_http(self.http, entry.spec.Http, settings=self.settings,
                                             idempotency_key=fid, policy=pol, attempt=attempt)
            finished = utcnow()
            if (finished - t0).total_seconds() > 5 and attempt == 1:  # say where a slow firing spent its time
                log.warning("task %s [%s]: firing at %s took %.1f s: claim and previous firing %.1f s, "
                            "free slot %.1f s, run %.1f s", entry.task_id, title, at, (finished - t0).total_seconds(),
                            (queued - t0).total_seconds(), (started - queued).total_seconds(),
                            (finished - started).total_seconds())
            last = out.ok or attempt == pol.attempts
            level, line = outcome_lines(title, out)
            logs = list(out.logs) + [(level, line, finished)]
            if why_late and attempt == 1:
                logs.insert(0, (30, f"{(started - at).total_seconds():.1f} s late: {why_late}", started))
            wait = 0.0 if last else pol.retry_wait(attempt)
            if pol.Retries:
                logs.insert(0, (20, f"attempt {attempt} of {pol.attempts}", started))
            if not last:
                logs.append((30, f"attempt {attempt} of {pol.attempts} failed; the next in {wait:g} s", finished))
            record_id = self._attempt_id(fid, attempt)
            self.recorder.add(Firing(entry.task_id, fid, title, at, started, finished, out.ok, out.message,
                                     self.node, getattr(out, "status_code", None), logs,
                                     zone=entry.spec.TimeZone, parent=parent, parent_task=parent_task,
                                     attempt=attempt, last_attempt=last, record_id=record_id,
                                     late_alarm=attempt == 1 and 0 < pol.AlarmLateSeconds < (started - at).total_seconds()))
            progress.recorded, progress.record_id = True, record_id
            progress.ok, progress.result = out.ok, getattr(out, "result", None)
            if last:
                return
            await asyncio.sleep(wait)

    async def running_child(self, cid: uuid.UUID) -> dep.TaskRecord | None:
        """The child's record when it is Running, from the task book's records (synced within a
        second of a change); read from Prefect when this node has not seen the task yet."""
        if cid in self.records:
            rec = self.records[cid]
            return rec if rec is not None and rec.status == Status.Running else None
        return await chain.running_child(self.client, cid)

    async def trigger_children(self, entry: Entry, fid: str, result: Any) -> None:
        """Nexts: each Running child runs once now, here when this node owns it, else on its node."""
        for cid in chain.child_ids(entry.spec, entry.task_id):
            cfid = chain.child_firing_id(cid, fid)
            child = self.book.get(cid)
            try:
                if child is not None:
                    self._spawn(self.fire(child, utcnow(), previous_result=result, parent=fid,
                                          parent_task=entry.task_id, fid=cfid))
                    continue
                rec = await self.running_child(cid)
                if rec is None:
                    log.info("task %s: child %s is not Running; not triggered", entry.task_id, cid)
                    continue
                await chain.create_child_run(self.client, rec, fid, result, entry.spec.Title)
            except Exception as exc:  # one child's trouble must not stop the others
                log.error("task %s: child %s not triggered: %s", entry.task_id, cid, exc)
