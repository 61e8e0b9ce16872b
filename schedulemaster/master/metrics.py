"""The master's Prometheus metrics: ``GET /metrics`` on the legacy port.

Counted as they happen, in this process (it records every firing): firings recorded, by
outcome, answers outside 2xx, and their lateness. Read at each scrape: the firing claims
each node holds (running, or fired and not recorded in Prefect yet), the nodes (online,
enabled, priority, max concurrency), the delayed tasks by status and those due within a
minute, and the delayed callbacks' lateness (the attempts written since the last scrape,
observed into a histogram, so no process but the master needs an endpoint).

The door is the legacy API's (``ms_auth_user`` / ``ms_auth_secret``, or HTTP Basic with a
legacy account's name and password, which Prometheus' ``basic_auth`` sends), through the same
Authenticator and its failure budget; ``SM_METRICS_OPEN=true`` opens it for a scraper inside
a trusted network. Names and alert rules: README, Metrics.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from schedulemaster.deployments.chain import is_online
from schedulemaster.master.coordination_api import pool_workers
from schedulemaster.ms_compat.auth import Authenticator
from schedulemaster.ms_compat.secret import legacy_secret
from schedulemaster.store import claims
from schedulemaster.store.delayed_store import STATUS_NAMES, DelayedAttempt

log = logging.getLogger("schedulemaster.metrics")

LATENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: a recorded firing's outcome: ran (succeeded, failed: every attempt counts) or did not run to
#: its end, per its task's policies (cancelled by a newer firing, skipped, missed)
OUTCOMES = ("succeeded", "failed", "cancelled", "skipped", "missed")
#: attempts read per scrape at most (the rest wait for the next one)
ATTEMPTS_PER_SCRAPE = 200_000


class FiringMetrics:
    """What the record path counts (master/record_api.py calls ``observe``)."""

    def __init__(self, registry: CollectorRegistry):
        self.firings = Counter("schedulemaster_firings", "Firings recorded in Prefect, by outcome",
                               ["outcome"], registry=registry)
        self.non_2xx = Counter("schedulemaster_firings_non_2xx", "Recorded HTTP firings answered outside 2xx "
                               "(counted a success unless Http_FailOnNon2xx)", registry=registry)
        self.lateness = Histogram("schedulemaster_firing_lateness_seconds",
                                  "From a firing's instant to its start on its node", buckets=LATENESS_BUCKETS,
                                  registry=registry)
        for outcome in OUTCOMES:
            self.firings.labels(outcome)  # every series exists from the start (rate() needs a zero)

    def observe(self, records) -> None:
        for r in records:
            outcome = r.not_run.lower() if r.not_run else "succeeded" if r.ok else "failed"
            self.firings.labels(outcome).inc(max(1, int(r.fire.get("missed") or 1)))
            if r.not_run:
                continue
            code = r.fire.get("status_code")
            if isinstance(code, int) and not 200 <= code < 300:
                self.non_2xx.inc()
            late = r.fire.get("lateness_ms")
            if isinstance(late, (int, float)) and r.attempt == 1:  # a retry is late by its waits
                self.lateness.observe(max(0.0, late / 1000))


@dataclass
class Snapshot:
    """What a scrape reads from the store and Prefect."""
    nodes: list = field(default_factory=list)  # (name, online, enabled, priority, max concurrency)
    unfinished: dict[str, int] = field(default_factory=dict)
    unrecorded: dict[str, int] = field(default_factory=dict)
    delayed: dict | None = None
    unschedulable: int | None = None


class _SnapshotCollector:
    def __init__(self, snap: Snapshot):
        self.snap = snap

    def collect(self):
        s = self.snap
        up = GaugeMetricFamily("schedulemaster_node_up", "1 while the node's worker heartbeats", labels=["node"])
        enabled = GaugeMetricFamily("schedulemaster_node_enabled", "0 while the node is disabled (休息)",
                                    labels=["node"])
        priority = GaugeMetricFamily("schedulemaster_node_priority", "The node's priority", labels=["node"])
        maxc = GaugeMetricFamily("schedulemaster_node_max_concurrency", "Firings the node runs at once at most",
                                 labels=["node"])
        for name, online, on, prio, cap in s.nodes:
            up.add_metric([name], 1 if online else 0)
            enabled.add_metric([name], 1 if on else 0)
            if prio is not None:
                priority.add_metric([name], prio)
                maxc.add_metric([name], cap)
        yield from (up, enabled, priority, maxc)
        held = GaugeMetricFamily("schedulemaster_claims_unfinished",
                                 "Firings a node claimed and has not reported run yet", labels=["node"])
        for node, n in sorted(s.unfinished.items()):
            held.add_metric([node], n)
        yield held
        waiting = GaugeMetricFamily("schedulemaster_firings_unrecorded",
                                    "Firings a node ran that are not recorded in Prefect yet (its recorder's "
                                    "backlog, as the master sees it)", labels=["node"])
        for node, n in sorted(s.unrecorded.items()):
            waiting.add_metric([node], n)
        yield waiting
        if s.unschedulable is not None:
            yield GaugeMetricFamily("schedulemaster_tasks_unschedulable",
                                    "Running tasks that no live, enabled node they may run on can fire "
                                    "(after the grace; master/unschedulable.py)", value=s.unschedulable)
        if s.delayed is not None:
            by_status = GaugeMetricFamily("schedulemaster_delayed_tasks", "Delayed tasks by status",
                                          labels=["status"])
            for code, name in STATUS_NAMES.items():
                by_status.add_metric([name], s.delayed["by_status"].get(code, 0))
            yield by_status
            yield GaugeMetricFamily("schedulemaster_delayed_due_next_minute",
                                    "Delayed tasks waiting for a callback due within a minute (or overdue)",
                                    value=s.delayed["due_next_minute"])


class Metrics:
    """The endpoint and what it reads; one per master."""

    def __init__(self, store, work_pool: str, read_disabled, authenticator: Authenticator, open_: bool = False,
                 unschedulable=None):
        self.store = store
        self.unschedulable = unschedulable  # () -> how many Running tasks no node can fire (said so)
        self.work_pool = work_pool
        self.read_disabled = read_disabled  # async () -> set of disabled node names
        self.auth = authenticator
        self.open = open_
        self.registry = CollectorRegistry()
        self.firings = FiringMetrics(self.registry)
        self.delayed_lateness = Histogram("schedulemaster_delayed_lateness_seconds",
                                          "From a delayed task's due time to its callback attempt",
                                          buckets=LATENESS_BUCKETS, registry=self.registry)
        self._attempt_cursor: int | None = None
        self._scrape = asyncio.Lock()

    def start(self) -> None:
        """Count delayed attempts from now on (a counter starts with its process)."""
        self._attempt_cursor = self._last_attempt_id()

    def _last_attempt_id(self) -> int:
        with self.store.engine.connect() as conn:
            return conn.execute(select(func.max(DelayedAttempt.id))).scalar() or 0

    def _observe_attempts(self) -> None:
        if self._attempt_cursor is None:
            self._attempt_cursor = self._last_attempt_id()
            return
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(DelayedAttempt.id, DelayedAttempt.duetime, DelayedAttempt.firetime)
                                .where(DelayedAttempt.id > self._attempt_cursor)
                                .order_by(DelayedAttempt.id).limit(ATTEMPTS_PER_SCRAPE)).all()
        for row in rows:
            if isinstance(row.duetime, datetime) and isinstance(row.firetime, datetime):
                self.delayed_lateness.observe(max(0.0, (row.firetime - row.duetime).total_seconds()))
            self._attempt_cursor = row.id

    def _store_snapshot(self) -> Snapshot:
        snap = Snapshot(delayed=self.store.delayed.counts())
        snap.unfinished = claims.running_counts(self.store.engine)
        snap.unrecorded = claims.unrecorded_counts(self.store.engine)
        self._observe_attempts()
        return snap

    async def _snapshot(self) -> Snapshot:
        snap = await asyncio.to_thread(self._store_snapshot)
        snap.unschedulable = self.unschedulable() if self.unschedulable is not None else None
        infos = await asyncio.to_thread(claims.nodes, self.store.engine)
        disabled = await self.read_disabled()
        for w in sorted(await pool_workers(self.work_pool), key=lambda w: w.name):
            info = infos.get(w.name)
            snap.nodes.append((w.name, is_online(w), w.name not in disabled,
                               info.priority if info else None, info.max_concurrency if info else None))
        return snap

    async def text(self) -> bytes:
        """The exposition: counters of this process, then what a scrape reads."""
        async with self._scrape:  # two scrapes at once would observe the same attempts twice
            snap = await self._snapshot()
        scraped = CollectorRegistry()
        scraped.register(_SnapshotCollector(snap))
        return generate_latest(self.registry) + generate_latest(scraped)

    async def allowed(self, request: Request) -> bool:
        if self.open:
            return True
        address = request.client.host if request.client else ""
        user, secret = request.headers.get("ms_auth_user"), request.headers.get("ms_auth_secret")
        basic = request.headers.get("authorization", "")
        if not user and basic[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(basic[6:].strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return False
            secret = legacy_secret(user, password) if user and len(user) <= 200 and len(password) <= 200 else None
        return await self.auth.check(user, secret, address) is not None

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        if request.method not in ("GET", "HEAD"):
            response = Response("GET only", status_code=405, headers={"Allow": "GET, HEAD"})
        elif not await self.allowed(request):
            response = Response("sign in: ms_auth_user / ms_auth_secret, or HTTP Basic with a legacy account",
                                status_code=401, headers={"WWW-Authenticate": 'Basic realm="schedulemaster"'})
        else:
            try:
                response = Response(await self.text(), media_type=CONTENT_TYPE_LATEST)
            except Exception as exc:  # the store or Prefect busy: the scrape fails, says why, logs it
                log.warning("metrics scrape failed: %s", exc)
                response = Response(f"metrics unavailable: {type(exc).__name__}", status_code=503)
        await response(scope, receive, send)


__all__ = ["FiringMetrics", "Metrics"]
