"""Record firings in Prefect off the hot path: one flow run per firing, with its log lines.

A worker-path flow run costs the server ~170 ms of CPU per firing; a run created in its
final state through Prefect's models ~28 ms (docs/prefect-facts.md), and written in bulk by the
master 4-7 ms (bench/record.py: 230 records/s on SQLite, 148 on PostgreSQL). So the node
fires first and records afterwards, in batches, through the master's
``/api/schedulemaster/firings`` endpoint (schedulemaster/master/record_api.py: IMMEDIATE transactions,
where Prefect's own bulk endpoint is refused by SQLite under concurrent writes). Every firing still becomes a run of
its task's deployment, with its outcome, its real times and its log lines. Each run's
idempotency key is the firing id, so recording the same firing twice leaves one run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

from schedulemaster.coordination.wire import Firing

log = logging.getLogger("schedulemaster.recorder")

BATCH = 200  # firings per call (the endpoint takes up to 1,000, 50 per transaction)
MAX_PENDING = 200_000


HOLD_MAX = 10.0  # seconds a batch waits at most while the master is busy


class Recorder:
    def __init__(self, master, flush_interval: float = 0.5, master_busy: Callable[[], bool] = lambda: False):
        """``master``: a MasterClient (schedulemaster/coordination/client.py) holding this node's token."""
        self.master = master
        # Firing on time comes before recording: while the master answers claims slowly,
        # the next batch waits (up to HOLD_MAX), so the master's CPU goes to claims first.
        self.master_busy = master_busy
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
        if len(self.pending) >= BATCH:
            self._wake.set()

    async def run(self) -> None:
        backoff = self.flush_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            held = 0.0
            while self.pending and held < HOLD_MAX and self.master_busy():
                await asyncio.sleep(0.5)
                held += 0.5
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
            batch = [self.pending.popleft() for _ in range(min(len(self.pending), BATCH))]
            try:
                await self._record(batch)
            except BaseException:
                self.pending.extendleft(reversed(batch))
                raise

    async def _record(self, batch: list[Firing]) -> None:
        """Record a batch in one call (one transaction on the master)."""
        from prefect.exceptions import PrefectHTTPStatusError
        from pydantic import ValidationError

        records = []
        for f in batch:
            try:
                records.append(f.record())
            except ValidationError as exc:  # the master would refuse the whole batch for it
                self.dropped += 1
                log.error("firing %s of task %s cannot be recorded: %s", f.firing_id[:200], f.task_id, exc)
        try:  # Prefect's client raises on every error status
            result = await self.master.record(records)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code not in (400, 413, 422):
                raise
            # Records the master will never take must not block every later one.
            self.dropped += len(batch)
            log.error("the master refused %d firing records: %s", len(batch), exc.response.text[:500])
            return
        unknown = [str(t) for t in result.unknown_tasks]
        if unknown:
            log.info("%d firing records dropped: their tasks were deleted (%s)",
                     sum(str(f.task_id) in unknown for f in batch), ", ".join(unknown[:5]))
        self.recorded += len(batch)
