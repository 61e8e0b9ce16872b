"""What Prefect's UI reads about firings and queues (through Prefect's API, as the UI does): a
firing's run named by its task's title and instant, its node and an answer outside 2xx as
tags, its node and lateness in its state message; the queues a live node reads shown Ready."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from schedulemaster.coordination.wire import Firing
from schedulemaster.deployments.tasks import run_name, upcoming_run_id
from schedulemaster.master.pool_nodes import nodes_summary
from schedulemaster.master.queue_readiness import queues_read
from schedulemaster.master.record_api import run_message, run_tags

from helpers import AUTH, wait_until

INSTANT = re.compile(r" · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def test_a_run_name_starts_with_the_title_and_stays_short():
    assert run_name("orders sync", "run once") == "orders sync · run once"
    assert run_name("  ", "x") == "task · x"
    long = run_name("长" * 300, "2026-12-07 08:00:00")
    assert long.startswith("长" * 79 + "…") and long.endswith(" · 2026-12-07 08:00:00") and len(long) < 110
    assert len(run_name("child", "next of " + "p" * 500)) == len("child · ") + 80


def test_a_firing_record_carries_its_node_lateness_and_odd_answers():
    from datetime import datetime, timedelta, timezone

    at = datetime(2026, 12, 7, 0, 0, 5, tzinfo=timezone.utc)
    f = Firing(uuid.uuid4(), "fid", "夜间对账", at, at + timedelta(milliseconds=120), at + timedelta(seconds=1),
               True, "HTTP 500 in 880 ms", "worker1", status_code=500, zone="Asia/Shanghai")
    record = f.record()
    assert record.name == "夜间对账 · 2026-12-07 08:00:05"
    assert run_tags(record) == ["node:worker1", "http:500"]
    assert run_message(record) == "worker1 · 0.12 s late · HTTP 500 in 880 ms"
    ok = Firing(uuid.uuid4(), "fid2", "t", at, at, at, True, "HTTP 204 in 3 ms", "w2", status_code=204).record()
    assert run_tags(ok) == ["node:w2"]
    # a plugin firing has no status code; a hostile node name is cut, never an error
    plugin = Firing(uuid.uuid4(), "fid3", "t", at, at, at, False, "boom", "n" * 500).record()
    assert run_tags(plugin) == ["node:" + "n" * 100] and run_message(plugin).endswith(" · 0.00 s late · boom")


def test_live_nodes_read_the_shared_queues_and_their_own():
    assert queues_read([]) == set()
    assert queues_read(["worker1", "worker2"]) == {"default", "tasks", "node-worker1", "node-worker2"}


@pytest.mark.e2e
def test_firing_runs_read_by_title_node_and_answer(system, receiver):
    path = f"/view/{uuid.uuid4().hex[:8]}"
    receiver.on(path, 500, "upstream broke")
    title = f"视图 {uuid.uuid4().hex[:6]}"
    task_id = system.create_http(receiver.url(path), cron="* * * * * ?", Title=title)
    try:
        assert system.post("Start", data={"id": task_id}).json()["Success"]
        receiver.wait_for(path, 2, timeout=60)
        runs = wait_until(lambda: [r for r in system.flow_runs(task_id, 20) if "sm:run-once" not in r["tags"]
                                   and r["state_type"] == "COMPLETED"], timeout=60)
        run = runs[0]
        assert run["name"].startswith(f"{title} · ") and INSTANT.search(run["name"]), run["name"]
        assert "node:worker1" in run["tags"] and "http:500" in run["tags"]  # a success, yet visibly odd
        assert re.match(r"worker1 · -?\d+\.\d\d s late · HTTP 500 in \d+ ms$", run["state"]["message"])

        assert system.post("RunOnce", data={"id": task_id}).json()["Success"]
        once = wait_until(lambda: [r for r in system.flow_runs(task_id, 50) if "sm:run-once" in r["tags"]], timeout=30)
        assert once[0]["name"].startswith(f"{title} · run once ")
    finally:
        system.post("Stop", data={"id": task_id})


def test_the_nodes_summary_says_each_nodes_facts():
    from types import SimpleNamespace as NS

    workers = [NS(name="b;x\ny", status="ONLINE"), NS(name="a", status="OFFLINE")]
    infos = {"a": NS(priority=3, max_concurrency=7, host="m1")}
    assert nodes_summary(workers, {"a"}, infos, {"a": 2}).endswith(
        ": a (offline, disabled (休息), priority 3, max concurrency 7, running firings 2, machine m1); "
        "b,x y (online, enabled, running firings 0).")
    assert nodes_summary([], set(), {}, {}).endswith("none has registered.")


@pytest.mark.e2e
def test_the_work_pools_page_lists_the_nodes(system):
    """Prefect's Workers tab has no field for a node's priority, max concurrency, enabled flag or
    running firings: the pool's description (shown on its page) has them."""
    system.wait_node()

    def description() -> str:
        return system.pf("GET", "/work_pools/schedulemaster").json()["description"] or ""

    text = wait_until(lambda: "worker1 (online, enabled, priority " in (d := description()) and d, timeout=60)
    assert re.search(r"worker1 \(online, enabled, priority \d+, max concurrency \d+, running firings \d+", text)


@pytest.mark.e2e
def test_the_queues_a_live_node_reads_are_ready(system):
    system.wait_node()

    def statuses() -> dict[str, str]:
        r = system.pf("POST", "/work_pools/schedulemaster/queues/filter", json={})
        r.raise_for_status()
        return {q["name"]: q["status"] for q in r.json()}

    # every queue the live node reads is Ready (`tasks` exists once a task does); a node another
    # test started and stopped leaves its own queue, Not Ready
    read = {"default", "tasks", "node-worker1"}
    ready = wait_until(lambda: (s := statuses()) and {"default", "node-worker1"} <= set(s)
                       and all(v == "READY" for k, v in s.items() if k in read) and s, timeout=60)
    assert all(k in read or k.startswith("node-") for k in ready), ready

    # pausing a queue in the UI is a PATCH whose transaction reads the pool for its event: it
    # hung for SQLite's 60 s busy timeout (the client's 30 s ran out first); the master leaves
    # a paused queue paused and marks it Ready again once resumed
    queue = system.pf("GET", "/work_pools/schedulemaster/queues/default").json()
    for paused, status in ((True, "PAUSED"), (False, "READY")):
        r = system.pf("PATCH", f"/work_queues/{queue['id']}", json={"is_paused": paused}, timeout=30)
        assert r.status_code == 204, r.text
        wait_until(lambda: statuses()["default"] == status, timeout=30)



@pytest.mark.e2e
def test_the_schedule_is_on_exactly_while_the_task_runs_and_its_next_fire_is_a_scheduled_run(system, receiver):
    """Prefect's scheduler creates no run for a task; the master keeps one stand-in Scheduled run
    at the next instant (what the Flows page's Next run and the Upcoming tab read), moves it as
    instants pass, and removes it when the task stops running; nothing ever runs it."""
    def active(task_id: str) -> list[bool]:
        return [s["active"] for s in system.pf("GET", f"/deployments/{task_id}").json()["schedules"]]

    def scheduled(deployment_id: str, but: list[str] = ()) -> int:
        r = system.pf("POST", "/flow_runs/count", json={
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}, "id": {"not_any_": list(but)}}})
        r.raise_for_status()
        return r.json()

    def stand_in() -> dict | None:
        r = system.pf("GET", f"/flow_runs/{upcoming}")
        return r.json() if r.status_code == 200 else None

    title = f"next {uuid.uuid4().hex[:6]}"
    task_id = system.create_http(receiver.url("/view/schedule"), cron="0/10 * * * * ?", Title=title)
    upcoming = str(upcoming_run_id(task_id))
    try:
        assert active(task_id) == [False]
        assert system.post("Start", data={"id": task_id}).json()["Success"]
        assert active(task_id) == [True]
        first = wait_until(stand_in, timeout=30)
        at = datetime.fromisoformat(first["expected_start_time"])
        assert at.second % 10 == 0 and at > datetime.now(timezone.utc) - timedelta(seconds=2), first
        assert (first["state_name"], first["flow_id"], first["work_queue_id"]) == ("Scheduled", task_id, None)
        assert first["next_scheduled_start_time"] == first["expected_start_time"]
        assert first["name"].startswith(f"{title} · next fire ") and "sm:upcoming" in first["tags"]
        # the Flows page's Next run and the deployment's Upcoming tab
        nxt = system.pf("POST", "/ui/flows/next-runs", json={"flow_ids": [task_id]}).json()
        assert nxt[task_id]["id"] == upcoming, nxt
        tab = system.pf("POST", "/flow_runs/filter", json={
            "deployments": {"id": {"any_": [task_id]}}, "flow_runs": {"state": {"name": {"any_": ["Scheduled"]}}}}).json()
        assert [r["id"] for r in tab] == [upcoming]
        # the instant passes: the node fires it as its own run, the stand-in moves on, unrun
        moved = wait_until(lambda: (r := stand_in()) and r["expected_start_time"] != first["expected_start_time"] and r,
                           timeout=40)
        assert datetime.fromisoformat(moved["expected_start_time"]) == at + timedelta(seconds=10), moved
        assert moved["state_type"] == "SCHEDULED" and moved["run_count"] == 0 and moved["start_time"] is None
        hits = receiver.wait_for("/view/schedule", 1, timeout=30)
        assert upcoming not in {h.headers.get("idempotency-key") for h in hits}
        traces = wait_until(lambda: (t := httpx.get(
            f"{system.api}/api/Task/QueryTraces", headers=AUTH, timeout=30,
            params={"id": task_id, "pageNumber": 1, "pageSize": 50}).json()["Data"]) and t["rows"] and t,
            timeout=30)  # the firing's record may still be on its way
        assert upcoming not in {r["TraceId"] for r in traces["rows"]}, traces
        # a plain deployment with an active schedule on the same server: Prefect's scheduler
        # runs and fills it with runs, and leaves the task's deployment alone
        flow = system.pf("POST", "/flows/", json={"name": f"plain-{uuid.uuid4().hex[:6]}"}).json()
        plain = system.pf("POST", "/deployments/", json={
            "name": "plain", "flow_id": flow["id"], "schedules": [{"schedule": {"interval": 3600}, "active": True}]}).json()
        wait_until(lambda: scheduled(plain["id"]) > 0, timeout=90, interval=1)
        assert scheduled(task_id, but=[upcoming]) == 0
        assert system.post("Pause", data={"id": task_id}).json()["Success"]
        assert active(task_id) == [False]
        wait_until(lambda: stand_in() is None, timeout=30)
        assert system.post("Resume", data={"id": task_id}).json()["Success"]
        assert active(task_id) == [True]
        wait_until(stand_in, timeout=30)
        assert system.post("Stop", data={"id": task_id}).json()["Success"]
        assert active(task_id) == [False]
        wait_until(lambda: stand_in() is None, timeout=30)
        system.pf("DELETE", f"/deployments/{plain['id']}")
        # deleted while Running (the Prefect UI's delete): the stand-in goes with the deployment
        assert system.post("Start", data={"id": task_id}).json()["Success"]
        wait_until(stand_in, timeout=30)
        assert system.pf("DELETE", f"/deployments/{task_id}").status_code == 204
        wait_until(lambda: stand_in() is None, timeout=30)
    finally:
        system.post("Stop", data={"id": task_id})


@pytest.mark.e2e
def test_a_deleted_tasks_runs_are_found_by_its_title_and_its_flow(system, receiver):
    """Each task is its own flow (Prefect's Flows page is the task list, its dashboard groups by
    task); a deleted task's flow stays, marked, with its runs."""
    title = f"gone {uuid.uuid4().hex[:8]}"
    task_id = system.create_http(receiver.url("/view/gone"), cron="* * * * * ?", Title=title, RunNow="true")
    runs = wait_until(lambda: system.flow_runs(task_id, 5), timeout=60)
    assert {r["flow_id"] for r in runs} == {task_id}
    flow = system.pf("GET", f"/flows/{task_id}").json()
    assert flow["name"] == title and flow["tags"] == ["schedulemaster"]
    system.post("Stop", data={"id": task_id})  # a task is edited stopped
    form = {"Id": task_id, "MetaType": "2", "RunLoop": "true", "CronExpression": "* * * * * ?",
            "HttpRequestUrl": receiver.url("/view/gone"), "HttpMethod": "POST"}
    assert system.post("Edit", data={**form, "Title": title + " renamed"}).json()["Success"]
    assert system.pf("GET", f"/flows/{task_id}").json()["name"] == title + " renamed"
    assert system.post("Edit", data={**form, "Title": title}).json()["Success"]
    assert system.post("Delete", data={"id": task_id}).json()["Success"]

    def by_title() -> list[dict]:  # what the UI's "Search by flow run name" asks
        r = system.pf("POST", "/flow_runs/filter", json={"flow_runs": {"name": {"like_": title}}, "limit": 50})
        r.raise_for_status()
        return r.json()

    runs = wait_until(by_title, timeout=30)
    assert all(r["name"].startswith(f"{title} · ") for r in runs)
    assert system.pf("GET", f"/deployments/{task_id}").status_code == 404
    assert system.pf("GET", f"/flows/{task_id}").json()["tags"] == ["schedulemaster", "sm:deleted"]


@pytest.mark.e2e
def test_the_uis_pause_and_schedule_switches_agree_for_a_task(system, receiver):
    """What the UI sends: PATCH the schedule's `active`, or the deployment's `paused`."""
    task_id = system.create_http(receiver.url("/view/switch"), cron="0 0/5 * * * ?", Title="switched", RunNow="true")

    words = {0: "sm:stopped", 1: "sm:running", 2: "sm:paused"}

    def seen() -> tuple[int, bool, bool]:
        dep = system.pf("GET", f"/deployments/{task_id}").json()
        status = system.detail(task_id)["Status"]
        # the status in words among the tags, one word only, as Prefect's deployments list shows it
        assert [t for t in dep["tags"] if t in words.values()] == [words[status]], dep["tags"]
        return status, dep["paused"], dep["schedules"][0]["active"]

    def switch_schedule(on: bool) -> None:
        schedule = system.pf("GET", f"/deployments/{task_id}").json()["schedules"][0]
        r = system.pf("PATCH", f"/deployments/{task_id}/schedules/{schedule['id']}", json={
            "slug": schedule["slug"], "schedule": schedule["schedule"], "active": on})
        assert r.status_code == 204, r.text

    def pause(paused: bool) -> None:
        r = system.pf("PATCH", f"/deployments/{task_id}", json={"paused": paused})
        assert r.status_code == 204, r.text

    try:
        assert seen() == (1, False, True)
        switch_schedule(False)
        assert seen() == (2, True, False)  # the schedule's switch paused the task
        switch_schedule(True)
        assert seen() == (1, False, True)
        pause(True)
        assert seen() == (2, True, False)  # the pause switch turned the schedule off
        pause(False)
        assert seen() == (1, False, True)
        # Prefect's older pause and resume endpoints
        assert system.pf("POST", f"/deployments/{task_id}/pause_deployment").status_code == 200
        assert seen() == (2, True, False)
        assert system.pf("POST", f"/deployments/{task_id}/resume_deployment").status_code == 200
        assert seen() == (1, False, True)
        assert httpx.patch(f"{system.prefect}/deployments/{task_id}", json={"paused": True}).status_code == 401
        assert seen() == (1, False, True)  # refused by Prefect's credential check: nothing followed
        assert system.post("Stop", data={"id": task_id}).json()["Success"]
        switch_schedule(True)
        assert seen() == (0, True, False)  # a Stopped task is started by the API only
        pause(False)
        assert seen() == (0, True, False)
        # a bad id or a deployment that is not a task: Prefect's answer, nothing else
        assert system.pf("PATCH", f"/deployments/{uuid.uuid4()}", json={"paused": True}).status_code == 404
    finally:
        system.post("Stop", data={"id": task_id})
