"""The dispatcher in-process against a real SQLite store and real HTTP receivers: a backlog
that fell due while nothing ran, and a slow receiver next to a fast one."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from aiohttp import web

from helpers import serve_aiohttp
from schedulemaster.dispatcher.delayed_dispatch import Dispatcher
from schedulemaster.ms_compat.delayed_api import row_for_create
from schedulemaster.store.delayed_store import DelayStatus
from schedulemaster.timeutil import utcnow_naive
from schedulemaster.store.db import Store

USER = SimpleNamespace(username="admin")


async def start_receiver(delay: float = 0.0):
    arrivals: list[tuple[str, float]] = []

    async def handler(request: web.Request):
        arrivals.append((request.headers["Idempotency-Key"], time.time()))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="success")

    app = web.Application()
    app.router.add_post("/cb", handler)
    base, runner = await serve_aiohttp(app)
    return f"{base}/cb", arrivals, runner


def rows(url: str, dues) -> list[dict]:
    out = []
    for due in dues:
        m = {"Id": None, "SourceApp": "t", "Topic": "t", "ContentKey": "k", "DelayTimeSpan": 1,
             "DelayAbsoluteTime": None, "NotifyUrl": url, "NotifyDataType": "application/json",
             "NotifyBody": "{}", "Remark": None, "Executors": None, "DelayPattern": None}
        row = row_for_create(m, USER, "UTC", "Relative", utcnow_naive())
        row["dueat"] = due
        out.append(row)
    return out


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    s.init()
    return s


async def run_until(dispatcher: Dispatcher, done, timeout: float = 20.0) -> None:
    task = asyncio.create_task(dispatcher.run())
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await asyncio.sleep(0.2)  # let the last outcomes settle
        dispatcher.stop()
        await task


async def test_a_backlog_that_fell_due_while_down_fires_at_start_oldest_first_and_is_reported_late(store):
    url, arrivals, runner = await start_receiver()
    now = utcnow_naive()
    backlog = rows(url, [now - timedelta(seconds=s) for s in (30, 300, 5, 60)])
    store.delayed.create(backlog).result(10)
    d = Dispatcher(store.delayed, "t", lambda: {}, single=True)
    await run_until(d, lambda: len(arrivals) == 4)
    await runner.cleanup()
    order = [i for i, _ in arrivals]
    assert order == [backlog[1]["id"], backlog[3]["id"], backlog[0]["id"], backlog[2]["id"]]
    assert all(store.delayed.get(r["id"])["status"] == DelayStatus.Successed for r in backlog)
    notices = []
    while not d.notices.empty():
        notices.append(d.notices.get_nowait())
    late = [n for n in notices if "late" in n.message]
    assert len(late) == 4 and d.total.late == 4


async def test_a_slow_receiver_does_not_hold_up_the_others(store):
    slow_url, slow_hits, slow_runner = await start_receiver(delay=3.0)
    fast_url, fast_hits, fast_runner = await start_receiver()
    due = utcnow_naive() + timedelta(seconds=0.3)
    slow = rows(slow_url, [due] * 40)
    fast = rows(fast_url.replace("127.0.0.1", "localhost"), [due + timedelta(milliseconds=50)] * 40)
    store.delayed.create(slow + fast).result(10)
    d = Dispatcher(store.delayed, "t", lambda: {"DelayTask_RequestTimeout": "10"}, per_host=4, single=True)
    started = time.time()
    await run_until(d, lambda: len(fast_hits) == 40 and len(slow_hits) >= 8, timeout=15)
    await slow_runner.cleanup()
    await fast_runner.cleanup()
    assert len(fast_hits) == 40
    assert max(t for _, t in fast_hits) - started < 2.0      # while the slow one answers 4 at a time
    times = sorted(t for _, t in slow_hits)                   # each answer takes 3 s: never more than
    assert all(times[i + 4] - times[i] > 2.5 for i in range(len(times) - 4))   # per_host (4) at once


async def test_a_clean_stop_finishes_what_is_in_flight_and_gives_back_the_rest(store):
    url, arrivals, runner = await start_receiver(delay=0.5)
    now = utcnow_naive()
    soon = rows(url, [now] * 3)
    later = rows(url, [now + timedelta(seconds=0.45)] * 3)   # claimed (within the look-ahead), not yet fired
    store.delayed.create(soon + later).result(10)
    d = Dispatcher(store.delayed, "t", lambda: {}, single=True)
    task = asyncio.create_task(d.run())
    while len(arrivals) < 3:
        await asyncio.sleep(0.02)
    d.stop()
    await task
    await runner.cleanup()
    assert all(store.delayed.get(r["id"])["status"] == DelayStatus.Successed for r in soon)
    for r in later:
        row = store.delayed.get(r["id"])
        assert row["status"] == DelayStatus.Ready and row["claimedby"] is None and row["attempts"] == 0


async def test_a_settings_read_that_fails_does_not_stop_dispatching(store):
    """The settings come from the database; while it is away the defaults hold and outcomes settle."""
    url, arrivals, runner = await start_receiver()
    rows_ = rows(url, [utcnow_naive()] * 5)
    store.delayed.create(rows_).result(10)

    def broken():
        raise RuntimeError("database is away")

    d = Dispatcher(store.delayed, "t", broken, single=True)
    await run_until(d, lambda: all(store.delayed.get(r["id"])["status"] == DelayStatus.Successed for r in rows_))
    await runner.cleanup()
    assert len(arrivals) == 5 and not d.held and not d.host_held


async def test_execute_on_a_row_already_claimed_fires_it_once_now(store):
    """An operator's 执行 releases a claim the dispatcher holds in memory: one claim, one send."""
    url, arrivals, runner = await start_receiver()
    [row] = rows(url, [utcnow_naive() + timedelta(seconds=0.45)])
    row["dueat"] = utcnow_naive() + timedelta(seconds=0.45)
    store.delayed.create([row]).result(10)
    d = Dispatcher(store.delayed, "t", lambda: {}, single=True, lookahead=10.0)
    task = asyncio.create_task(d.run())
    while row["id"] not in d.held:
        await asyncio.sleep(0.01)
    store.delayed.transition(row["id"], "execute", utcnow_naive())
    while store.delayed.get(row["id"])["status"] != DelayStatus.Successed:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    d.stop()
    await task
    await runner.cleanup()
    assert len(arrivals) == 1
    got = store.delayed.get(row["id"])
    assert got["attempts"] == 1 and got["claimedby"] is None
    assert not d.held and not d.host_held


async def test_a_callback_voided_while_queued_behind_a_slow_receiver_is_not_sent(store):
    url, arrivals, runner = await start_receiver(delay=2.0)
    queue = rows(url, [utcnow_naive()] * 6)
    store.delayed.create(queue).result(10)
    d = Dispatcher(store.delayed, "t", lambda: {"DelayTask_RequestTimeout": "10"}, per_host=1, single=True)
    task = asyncio.create_task(d.run())
    while not arrivals:
        await asyncio.sleep(0.02)
    voided = [r["id"] for r in queue if r["id"] != arrivals[0][0]][:3]
    for i in voided:
        store.delayed.transition(i, "void", utcnow_naive())
    while any(store.delayed.get(r["id"])["status"] == DelayStatus.Ready for r in queue):
        await asyncio.sleep(0.1)
    d.stop()
    await task
    await runner.cleanup()
    sent = {i for i, _ in arrivals}
    assert not sent & set(voided) and len(sent) == 3
    assert all(store.delayed.get(i)["status"] == DelayStatus.Deleted for i in voided)
    assert not d.held and not d.host_held


async def test_a_stop_while_callbacks_wait_for_a_slot_gives_them_back_unsent(store):
    """Stopping waits up to the request timeout for what is under way; then a callback still in
    flight keeps its claim (outcome unknown: re-sent as recovered), the ones still waiting for a
    slot were never sent and are given back as if never claimed."""
    url, arrivals, runner = await start_receiver(delay=5.0)
    queue = rows(url, [utcnow_naive()] * 4)
    store.delayed.create(queue).result(10)
    d = Dispatcher(store.delayed, "t", lambda: {"DelayTask_RequestTimeout": "7"}, per_host=1, single=True)
    task = asyncio.create_task(d.run())
    while not arrivals:
        await asyncio.sleep(0.02)
    d.stop()
    await task
    await runner.cleanup()
    sent = [i for i, _ in arrivals]
    assert len(sent) == 2          # the first answered within the grace period, the second was cut off
    states = {r["id"]: store.delayed.get(r["id"]) for r in queue}
    assert states[sent[0]]["status"] == DelayStatus.Successed
    assert states[sent[1]]["claimedby"] is not None and states[sent[1]]["attempts"] == 0
    for i, got in states.items():
        if i not in sent:
            assert got["status"] == DelayStatus.Ready and got["claimedby"] is None and got["attempts"] == 0
