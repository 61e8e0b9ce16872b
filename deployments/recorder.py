"""Record firings in Prefect off the hot path: bulk-created flow runs plus their log lines.

A worker-path flow run costs the server ~170 ms of CPU per firing; a run created in its
final state through ``POST /deployments/{id}/create_flow_run/bulk`` costs ~28 ms
(prefect-notes §11). So the node fires first and records afterwards, in batches: every
firing still becomes a run of its task's deployment, with its outcome and its log lines.
Each run's idempotency key is the firing id, so recording the same firing twice (a retry
after a timeout, two nodes) leaves one run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

log = logging.getLogger("schedulemaster.recorder")

BULK_LIMIT = 100  # the server's own limit per call
MAX_PENDING = 200_000
MAX_ATTEMPTS = 30  # per firing; a run the server refuses (SQLite busy) is tried again later


@dataclass
class Firing:
    task_id: UUID
    firing_id: str
    title: str
    scheduled: datetime
    started: datetime
    finished: datetime
    ok: bool
    message: str
    node: str
    status_code: int | None = None
    logs: list[tuple[int, str, datetime]] = field(default_factory=list)
    zone: str = "UTC"  # the task's time zone, for the run's name
    attempts: int = 0

    @property
    def lateness_ms(self) -> float:
        return (self.started - self.scheduled).total_seconds() * 1000


class Recorder:
    def __init__(self, client, flush_interval: float = 0.5):
        self.client = client
        self.flush_interval = flush_interval
        self.pending: deque[Firing] = deque()
        self.recorded = 0
        self.dropped = 0
        self._wake = asyncio.Event()

    def add(self, firing: Firing) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
            log.error("record backlog full (%d): dropped the oldest firing record", MAX_PENDING)
        self.pending.append(firing)
        if len(self.pending) >= BULK_LIMIT:
            self._wake.set()

    async def run(self) -> None:
        backoff = self.flush_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                backoff = self.flush_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server is down or busy: keep the batch, retry later
                backoff = min(backoff * 2, 10.0)
                log.warning("recording firings failed (%s); %d waiting, retry in %.1f s",
                            exc, len(self.pending), backoff)

    async def flush(self) -> None:
        """Record what is pending; raises (after re-queuing) when the server cannot take it now."""
        while self.pending:
            batch = [self.pending.popleft() for _ in range(min(len(self.pending), 500))]
            try:
                refused = await self._record(batch)
            except BaseException:
                self.pending.extendleft(reversed(batch))
                raise
            if refused:
                raise RuntimeError(f"the server refused {refused} firing records (database busy)")

    async def _record(self, batch: list[Firing]) -> int:
        """Record a batch; returns how many firings the server refused this time (re-queued)."""
        by_task: dict[UUID, list[Firing]] = defaultdict(list)
        for f in batch:
            by_task[f.task_id].append(f)
        logs: list[dict[str, Any]] = []
        retry: list[Firing] = []
        for task_id, items in by_task.items():
            for i in range(0, len(items), BULK_LIMIT):
                chunk = items[i:i + BULK_LIMIT]
                resp = await self.client._client.post(
                    f"/deployments/{task_id}/create_flow_run/bulk",
                    json=[self._run_body(f) for f in chunk])
                if resp.status_code == 404:
                    log.info("task %s was deleted; %d firing records dropped", task_id, len(chunk))
                    continue
                resp.raise_for_status()
                for f, result in zip(chunk, resp.json().get("results", [])):
                    run_id = result.get("flow_run_id")
                    if not run_id:
                        f.attempts += 1
                        if f.attempts < MAX_ATTEMPTS:
                            retry.append(f)  # the bulk endpoint reports "database is locked" per run
                        else:
                            log.error("firing %s of task %s not recorded after %d attempts: %s",
                                      f.firing_id, f.task_id, f.attempts, str(result.get("error"))[:300])
                        continue
                    logs += [{"name": "schedulemaster.node", "level": level, "message": msg,
                              "timestamp": ts.isoformat(), "flow_run_id": run_id}
                             for level, msg, ts in f.logs]
        for i in range(0, len(logs), 1000):
            resp = await self.client._client.post("/logs/", json=logs[i:i + 1000])
            resp.raise_for_status()
        self.recorded += len(batch) - len(retry)
        self.pending.extend(retry)
        return len(retry)

    @staticmethod
    def _run_body(f: Firing) -> dict[str, Any]:
        return {
            "name": f"{f.scheduled.astimezone(ZoneInfo(f.zone)):%Y%m%d-%H%M%S}-{f.firing_id[:6]}",
            "state": {"type": "COMPLETED" if f.ok else "FAILED", "message": f.message[:2000]},
            "idempotency_key": f.firing_id,
            "parameters": {"fire": {
                "firing_id": f.firing_id, "node": f.node,
                "scheduled": f.scheduled.isoformat(), "started": f.started.isoformat(),
                "finished": f.finished.isoformat(), "lateness_ms": round(f.lateness_ms, 1),
                "status_code": f.status_code, "ok": f.ok,
            }},
        }
