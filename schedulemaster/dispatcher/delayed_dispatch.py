"""The delayed-task dispatcher: claims what falls due in the next moment and fires it on time.

Replaces the original's per-worker 60-slot time wheel (docs/legacy-behaviour.md, Delayed tasks) with the database itself as
the wheel: every ``poll`` seconds one indexed query claims the Ready rows due within
``lookahead`` seconds (oldest first, so a backlog after downtime drains in due order), a
timer fires each at its instant, and outcomes are written back in batches. Memory holds
only what is claimed (bounded by ``max_held``), never the pending backlog.

Guarantees:
* a row is claimed (owner + lease) in the database before its callback leaves, and the
  claim is released in the same transaction that records the outcome. A dispatcher killed
  in between leaves a claim whose lease runs out (or, on SQLite where only one dispatcher
  can exist, is dropped at the next start); the row then fires again, its attempt marked
  ``recovered``, with the same ``Idempotency-Key`` (the task id) so receivers can tell;
* one slow receiver cannot hold up the rest: connections are limited per receiver
  (``per_host``) and so are the rows claimed for one receiver, so the others keep firing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Awaitable, Callable

import aiohttp

from schedulemaster.dispatcher import callback as cb
from schedulemaster.store.delayed_store import (LATE_AFTER, Claimed, DelayedStore, DelayStatus, Outcome,
                                                    Settled)
from schedulemaster.timeutil import utcnow_naive

log = logging.getLogger("schedulemaster.delayed")

MAX_PENDING_MAILS = 200  # creators' failure mails queued at once; beyond it they are logged, not sent


@dataclass
class Window:
    """What happened since the last report (the dispatcher's run log and artifact)."""

    started: float = field(default_factory=time.monotonic)
    fired: int = 0
    succeeded: int = 0
    failed_attempts: int = 0
    final_failures: int = 0
    recovered: int = 0
    late: int = 0
    lateness: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.lateness)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {"seconds": round(time.monotonic() - self.started, 1), "fired": self.fired,
                "succeeded": self.succeeded, "failed_attempts": self.failed_attempts,
                "final_failures": self.final_failures, "recovered": self.recovered, "late": self.late,
                "lateness_p50": pct(0.5), "lateness_p99": pct(0.99),
                "lateness_max": round(lat[-1], 3) if lat else None}


@dataclass
class Notice:
    """Something an operator should see in the dispatcher's Prefect run (and as an event)."""

    level: int
    message: str
    event: str | None = None
    task_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


class Dispatcher:
    def __init__(self, store: DelayedStore, name: str, configs: Callable[[], dict[str, str]], *,
                 max_held: int = 5000, per_host: int = 100, poll: float = 0.1, lookahead: float = 0.5,
                 lease: float = 30.0, single: bool = False,
                 on_final_failure: Callable[[Settled, Outcome], Awaitable[None]] | None = None):
        self.store = store
        self.me = f"{name}:{uuid.uuid4().hex[:12]}"[:64]
        self.configs = configs
        self.max_held = max_held
        self.per_host = per_host
        # claimed-but-unsettled rows one receiver may hold: enough for ~1,000/s to one fast
        # receiver (claimed 0.5 s ahead), few enough that a hung one leaves most for the rest
        self.host_cap = max(10, min(max_held // 4, per_host * 10))
        self.poll = poll
        self.lookahead = timedelta(seconds=lookahead)
        self.lease = timedelta(seconds=lease)
        self.single = single
        self.on_final_failure = on_final_failure
        self.held: dict[str, Claimed] = {}
        self.host_held: dict[str, int] = defaultdict(int)
        self.outcomes: list[Outcome] = []
        self._has_outcomes = asyncio.Event()
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.sending: set[asyncio.Task] = set()
        self.seq = 0
        self.window = Window()
        self.total = Window()
        self.notices: asyncio.Queue[Notice] = asyncio.Queue(maxsize=10_000)
        self.db = ThreadPoolExecutor(1, thread_name_prefix="delayed-db")  # one writer: SQLite's rule
        self._stopping = asyncio.Event()
        self._closing = False
        self.session: aiohttp.ClientSession | None = None
        self.host_slots: dict[str, asyncio.Semaphore] = {}
        self.queued: set[str] = set()    # due, waiting for a slot to their receiver
        self.unsent: list[str] = []      # cancelled at shutdown before they were sent
        self.revoked: dict[str, int] = {}  # of those, id -> claim seq voided / reset / taken over meanwhile
        self.mails_pending = 0

    # ---- settings ----------------------------------------------------------------
    def _int_setting(self, key: str, default: int) -> int:
        """A setting as an int; the default when it is bad or the settings cannot be read now
        (a database blip must not stop a loop: ``configs`` keeps its last good values)."""
        try:
            return int(str(self.configs().get(key, default)).strip())
        except Exception:
            return default

    @property
    def timeout(self) -> float:
        return float(max(1, self._int_setting("DelayTask_RequestTimeout", 100)))

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    def notice(self, n: Notice) -> None:
        try:
            self.notices.put_nowait(n)
        except asyncio.QueueFull:
            pass

    # ---- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Dispatch until ``stop()``; then finish what is in flight and give back the rest."""
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=self.max_held, limit_per_host=self.per_host, keepalive_timeout=4.0))
        if self.single:
            released = await self._db(self.store.release_all)
            if released:
                self.notice(Notice(logging.WARNING, f"{released} callbacks were in flight when the previous "
                                   "dispatcher stopped without finishing: they are sent again (same Idempotency-Key)"))
        parts = [asyncio.create_task(self._claim_loop(), name="claim"),
                 asyncio.create_task(self._settle_loop(), name="settle"),
                 asyncio.create_task(self._renew_loop(), name="renew"),
                 asyncio.create_task(self._revoke_loop(), name="revoke")]
        try:
            await self._stopping.wait()
        finally:
            self._closing = True
            await asyncio.gather(parts[0], return_exceptions=True)   # ends after its current claim
            for handle in self.timers.values():
                handle.cancel()
            unfired = list(self.timers)
            self.timers.clear()
            if self.sending:
                await asyncio.wait(self.sending, timeout=min(self.timeout, 15.0))
            for t in self.sending:  # still in flight: their outcome is unknown (re-sent as recovered)
                t.cancel()
            self._has_outcomes.set()
            await asyncio.gather(parts[1], return_exceptions=True)   # ends after its current batch
            for part in parts[2:]:
                part.cancel()
            await asyncio.gather(*parts[2:], return_exceptions=True)
            for attempt in range(10):  # known outcomes must reach the database, or they are re-sent
                await self._settle_all()
                if not self.outcomes:
                    break
                await asyncio.sleep(1.0)
            if self.outcomes:
                log.error("%d callback outcomes could not be recorded before stopping: they will be sent again",
                          len(self.outcomes))
            unfired += self.unsent
            if unfired:
                try:
                    await self._db(self.store.release, self.me, unfired)
                except Exception as exc:
                    log.error("could not give back %d unfired claims (their lease will expire): %s", len(unfired), exc)
            await self.session.close()
            self.db.shutdown(wait=True)

    def stop(self) -> None:
        self._stopping.set()

    async def _claim_loop(self) -> None:
        while not self._closing:
            got = 0
            room = self.max_held - len(self.held)
            if room > 0:
                try:
                    got = await self._claim(min(room, 1000))
                except Exception as exc:  # the database is away: keep what we hold, try again
                    log.error("claiming due callbacks failed: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
            if got < 1000 or len(self.held) >= self.max_held:
                await asyncio.sleep(self.poll)

    async def _claim(self, limit: int) -> int:
        now = utcnow_naive()
        if self.store.nothing_due(now + self.lookahead):  # a pragma, no thread hop (SQLite, idle)
            return 0
        busy = {h for h, n in self.host_held.items() if n >= self.host_cap}
        self.seq += 1
        claimed = await self._db(self.store.claim, self.me, self.seq, now + self.lookahead, now,
                                 self.lease, limit, busy)
        loop = asyncio.get_running_loop()
        over: list[Claimed] = []
        for c in claimed:
            old = self.held.get(c.id)
            if old is not None:
                # A row we hold came back: an operator's 执行 released it, or our lease lapsed
                # while the database was away. One claim in memory: it settles as the newest.
                old.seq = c.seq
                if c.id in self.timers and c.dueat < old.dueat:  # "execute now" on a row not yet fired
                    self.timers.pop(c.id).cancel()
                    c.host = old.host
                    self.held[c.id] = c
                    self.timers[c.id] = loop.call_later(0.0, self._start, c)
                continue
            if self.host_held[c.host] >= self.host_cap:
                over.append(c)  # one receiver's share is full: give the rest back
                continue
            self.held[c.id] = c
            self.host_held[c.host] += 1
            delay = (c.dueat - utcnow_naive()).total_seconds()
            self.timers[c.id] = loop.call_later(max(0.0, delay), self._start, c)
        if over:
            await self._db(self.store.hand_back, self.me, over)
        return len(claimed) - len(over)

    def _start(self, c: Claimed) -> None:
        self.timers.pop(c.id, None)
        task = asyncio.get_running_loop().create_task(self._fire(c))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _fire(self, c: Claimed) -> None:
        slots = self.host_slots.get(c.host)
        if slots is None:
            slots = self.host_slots[c.host] = asyncio.Semaphore(self.per_host)
        self.queued.add(c.id)
        sending = False
        try:
            async with slots:  # the timeout below covers the request, not the wait for a connection
                if self.revoked.pop(c.id, None) == c.seq:  # voided or reset while it waited behind a slow receiver
                    self._forget(c)
                    return
                self.queued.discard(c.id)
                sending = True
                await self._send(c)
        except asyncio.CancelledError:
            if not sending:  # stopped while waiting for a slot: never sent, so given back, not "recovered"
                self.unsent.append(c.id)
            raise
        finally:
            self.queued.discard(c.id)

    def _forget(self, c: Claimed) -> None:
        if self.held.get(c.id) is c:
            del self.held[c.id]
            self._host_done(c.host)

    def _host_done(self, host: str) -> None:
        self.host_held[host] -= 1
        if self.host_held[host] <= 0:
            del self.host_held[host]

    async def _send(self, c: Claimed) -> None:
        fired = utcnow_naive()
        late = (fired - c.dueat).total_seconds()
        try:
            req = cb.build(c.id, c.notifyurl, c.notifydatatype, c.notifybody)
        except cb.CallbackError as exc:
            answer = cb.Answer(False, None, None, str(exc), 0.0)
        else:
            answer = await cb.send(self.session, req, self.timeout)
        for w in (self.window, self.total):
            w.fired += 1
            w.lateness.append(late)
            w.late += late > LATE_AFTER
            w.recovered += c.recovered
            if answer.success:
                w.succeeded += 1
            else:
                w.failed_attempts += 1
        for w in (self.window, self.total):  # bounded even when nobody takes the window (Prefect away)
            if len(w.lateness) > 100_000:
                del w.lateness[:50_000]
        if c.recovered:
            self.notice(Notice(logging.WARNING, f"{c.id} [{c.topic}/{c.contentkey}] sent again after a dispatcher "
                               f"crash (a dead dispatcher held it: it may have been sent, its outcome is unknown): "
                               f"{answer.error or 'success'}",
                               "schedulemaster.delayed.recovered", c.id))
        elif late > LATE_AFTER:
            self.notice(Notice(logging.WARNING, f"{c.id} [{c.topic}/{c.contentkey}] fired {late:.1f} s late "
                               f"(it fell due while no dispatcher ran)", None, c.id))
        self.outcomes.append(Outcome(c, fired, answer.success, answer.status, answer.excerpt, answer.error,
                                     answer.elapsed_ms))
        self._has_outcomes.set()

    async def _settle_loop(self) -> None:
        while not (self._closing and not self.sending):
            await asyncio.sleep(0.05)  # outcomes arriving together are written together
            if not self.outcomes and not self._closing:  # idle: wait for one, not 20 wake-ups a second
                self._has_outcomes.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._has_outcomes.wait(), 1.0)
                continue
            try:
                await self._settle_all()
            except Exception as exc:  # never let this loop die: held rows would never be released
                log.error("recording callback outcomes failed (kept, retried): %s", exc)
                await asyncio.sleep(1.0)

    async def _settle_all(self) -> None:
        while self.outcomes:
            batch, self.outcomes = self.outcomes[:500], self.outcomes[500:]
            cfg_retry = self._int_setting("DelayTask_RetryTimes", 3)
            cfg_span = self._int_setting("DelayTask_RetrySpans", 10)
            try:
                settled = await self._db(self.store.settle, self.me, batch, cfg_retry, cfg_span)
            except Exception as exc:  # keep the outcomes (and their leases): written next time
                log.error("recording %d callback outcomes failed (kept, retried): %s", len(batch), exc)
                self.outcomes[:0] = batch
                await asyncio.sleep(1.0)
                return
            by_id = {o.claim.id: o for o in batch}
            for s in settled:
                if self.held.get(s.claim.id) is s.claim:
                    del self.held[s.claim.id]
                    self._host_done(s.claim.host)
                if s.status == DelayStatus.Failed and not s.stale:
                    self._final_failure(s, by_id[s.claim.id])

    def _final_failure(self, s: Settled, o: Outcome) -> None:
        c = s.claim
        self.window.final_failures += 1
        self.total.final_failures += 1
        what = ("manual execute failed" if c.manual
                else f"failed after {c.failedretrys} {'retry' if c.failedretrys == 1 else 'retries'}")
        self.notice(Notice(logging.ERROR, f"{c.id} [{c.sourceapp} {c.topic}/{c.contentkey}] {what}: {o.error}",
                           "schedulemaster.delayed.failed", c.id,
                           {"topic": c.topic, "content_key": c.contentkey, "source_app": c.sourceapp,
                            "url": c.notifyurl, "error": o.error, "status_code": o.statuscode}))
        if self.on_final_failure is None:
            return
        if self.mails_pending >= MAX_PENDING_MAILS:  # a storm of failures: the log and events still say it
            log.error("delayed task %s failed for good; its creator is not mailed (%d mails already queued)",
                      c.id, self.mails_pending)
            return
        self.mails_pending += 1

        async def mail() -> None:
            try:
                await self.on_final_failure(s, o)
            finally:
                self.mails_pending -= 1

        task = asyncio.get_running_loop().create_task(mail())
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _revoke_loop(self) -> None:
        """Once a second, one query: which rows queued behind a slow receiver were voided,
        reset or taken over meanwhile (they are dropped instead of sent)."""
        while True:
            await asyncio.sleep(1.0)
            waiting = [self.held[i] for i in self.queued if i in self.held]
            if not waiting:
                continue
            asked = {c.id: c.seq for c in waiting}
            try:
                gone = await self._db(self.store.not_mine, self.me, list(asked.items()))
            except Exception as exc:
                log.warning("checking queued callbacks failed: %s", exc)
                continue
            self.revoked = {i: seq for i, seq in self.revoked.items() if i in self.queued}
            self.revoked.update({i: asked[i] for i in gone})

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.lease.total_seconds() / 4))
            try:
                await self._db(self.store.renew, self.me, list(self.held), self.lease)
            except Exception as exc:
                log.error("renewing the leases of held callbacks failed: %s", exc)

    def take_window(self) -> dict[str, Any]:
        summary, self.window = self.window.summary(), Window()
        summary["held"] = len(self.held)
        return summary
