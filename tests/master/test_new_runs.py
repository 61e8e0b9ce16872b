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
        system.stop_node(node)
