"""Nodes hear at once of a flow run for their worker (schedulemaster/master/new_runs.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from schedulemaster.master.new_runs import NewRuns

from helpers import wait_until


def asgi_app(status: int):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


async def call(app, method: str, path: str) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent


def test_a_created_run_wakes_the_waiting_nodes_and_nothing_else_does():
    async def main():
        runs = NewRuns(asgi_app(201))
        first = await runs.wait("", 0)  # a new waiter learns the token at once
        waiter = asyncio.ensure_future(runs.wait(first, 5))
        await asyncio.sleep(0.05)
        for method, path in (("GET", "/api/flow_runs/x"), ("POST", "/api/flow_runs/filter"),
                             ("POST", "/api/deployments/filter"), ("PATCH", "/api/deployments/x")):
            await call(runs, method, path)
        assert not waiter.done()
        sent = await call(runs, "POST", "/api/deployments/0b9ec3c8-5d0b-4f0e-9a41-6c1b3c1a5f10/create_flow_run")
        assert sent[0]["status"] == 201  # the answer passes untouched
        assert await asyncio.wait_for(waiter, 1) != first
        refused = NewRuns(asgi_app(422))
        token = await refused.wait("", 0)
        await call(refused, "POST", "/api/flow_runs/")
        assert await refused.wait(token, 0.05) == token  # no run, no wake-up
        refused.release()
        started = time.monotonic()
        assert await refused.wait(token, 5) == token and time.monotonic() - started < 1

    asyncio.run(main())


@pytest.mark.e2e
def test_a_node_that_polls_rarely_takes_a_run_once_and_a_ui_run_at_once(system, receiver):
    """Its worker polls every 300 s: only the master's word gets the runs to it in time."""
    node = system.start_node("slowpoll", env={"PREFECT_WORKER_QUERY_SECONDS": "300"})
    try:
        system.wait_node("slowpoll")
        tid = system.create_http(receiver.url("/nudged"), cron="0 0 3 * * ?", Title="nudged", Executors="slowpoll",
                                 RunNow="true")
        log = system.data_dir / "logs" / "extra-slowpoll.log"
        wait_until(lambda: "Worker 'slowpoll' started" in log.read_text(errors="replace"), timeout=30)
        time.sleep(2)  # past the worker's first poll at its start
        assert system.post("RunOnce", data={"id": tid}).json()["Success"]
        receiver.wait_for("/nudged", 1, timeout=30)
        r = system.pf("POST", f"/deployments/{tid}/create_flow_run", json={"state": {"type": "SCHEDULED"}})
        assert r.status_code == 201, r.text
        receiver.wait_for("/nudged", 2, timeout=30)
        system.post("Stop", data={"id": tid})
    finally:
        system.forget_node(node, "slowpoll")


def test_the_runs_created_since_a_token_are_handed_over_while_the_master_holds_them_all():
    import gzip
    import json

    from schedulemaster.master import new_runs as nr

    def gzipped_app(body: bytes):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 201, "headers": [(b"content-encoding", b"gzip")]})
            half = len(body) // 2  # in two chunks, as a streamed answer comes
            await send({"type": "http.response.body", "body": body[:half], "more_body": True})
            await send({"type": "http.response.body", "body": body[half:]})
        return app

    run = json.dumps({"id": "r1", "parameters": {"x": "运行" * 100}})
    path = "/api/deployments/0b9ec3c8-5d0b-4f0e-9a41-6c1b3c1a5f10/create_flow_run"

    async def main():
        runs = NewRuns(gzipped_app(gzip.compress(run.encode())))
        token = await runs.wait("", 0)
        await call(runs, "POST", path)
        assert runs.runs_since(token) == [run]  # unzipped, as the API wrote it
        runs.created('{"id": "r2"}')
        assert runs.runs_since(token) == [run, '{"id": "r2"}'] and runs.runs_since(runs.token) == []
        assert runs.runs_since("another-boot:0") is None and runs.runs_since("nonsense") is None
        runs.created(None)  # one not kept (too large, or written without its answer)
        assert runs.runs_since(token) is None
        later = runs.token
        for i in range(nr.MAX_HANDED + 1):
            runs.created(f'{{"id": "{i}"}}')
        assert runs.runs_since(later) is None  # more than the master keeps: the node reads its queues
        big = NewRuns(gzipped_app(gzip.compress(b"x" * (nr.MAX_RUN_BYTES + 1))))
        token = big.token
        await call(big, "POST", path)
        assert big.token != token and big.runs_since(token) is None  # woken, but told to read

    asyncio.run(main())


def test_a_node_takes_only_the_handed_runs_it_would_have_found_in_its_queues():
    import uuid
    from datetime import datetime, timedelta, timezone

    from prefect.client.schemas.objects import FlowRun

    from schedulemaster.deployments.tasks import TASKS_QUEUE
    from schedulemaster.node.worker import NodeWorker

    node = object.__new__(NodeWorker)  # only what _handed_runs reads
    node._prefetch_seconds, node._work_pool_name, node._work_queues, node.firing = 10, "pool", {"node-a"}, None
    now = datetime.now(timezone.utc)

    def run(queue="node-a", pool="pool", state="SCHEDULED", start=now, **kw) -> str:
        return FlowRun(flow_id=uuid.uuid4(), work_queue_name=queue, work_pool_name=pool, expected_start_time=start,
                       state={"type": state, "name": state.title()}, **kw).model_dump_json()

    mine, task_run = run(), run(queue=TASKS_QUEUE)
    texts = [mine, task_run, run(pool="other"), run(queue="node-b"), run(state="PENDING"),
             run(start=now + timedelta(minutes=5)), run(queue=TASKS_QUEUE, auto_scheduled=True), "{not json"]
    assert [r.model_dump_json() for r in node._handed_runs(texts)] == [mine, task_run]
