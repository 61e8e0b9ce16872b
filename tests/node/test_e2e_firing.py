"""HTTP tasks firing for real: server, node and receiver are real processes and sockets."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx
import pytest

from helpers import wait_until

pytestmark = pytest.mark.e2e


def recorded(system, task_id, count):
    """Wait until Prefect holds `count` firing runs of the task."""
    return wait_until(lambda: (lambda runs: runs if len(runs) >= count else None)(
        [r for r in system.flow_runs(task_id) if "fire" in r["parameters"]]), timeout=40)


def test_http_task_fires_on_its_cron_and_pause_resume_stop_work(system, receiver):
    headers = json.dumps([{"ParamKey": "x-token", "ParamValue": "abc", "ParamRemark": "r"}])
    tid = system.create_http(receiver.url("/cron"), cron="0/2 * * * * ?", Title="every two seconds",
                             HttpHeaders=headers, HttpBody='{"order":\r\n 42}', RunNow="true")
    hits = receiver.wait_for("/cron", 3, timeout=30)
    for h in hits:
        assert h.method == "POST" and h.body == b'{"order": 42}'
        assert h.headers["content-type"] == "application/json; charset=utf-8"
        assert h.headers["x-token"] == "abc" and h.headers["idempotency-key"]
    assert len({h.headers["idempotency-key"] for h in hits}) == len(hits)

    runs = recorded(system, tid, 3)
    by_key = {r["idempotency_key"]: r for r in runs}
    for h in hits[:3]:
        run = by_key.get(h.headers["idempotency-key"])
        if run is None:  # the most recent firing may not be recorded yet
            continue
        assert run["state_type"] == "COMPLETED"
        fire = run["parameters"]["fire"]
        scheduled = datetime.fromisoformat(fire["scheduled"])
        assert scheduled.second % 2 == 0 and scheduled.microsecond == 0  # a Quartz instant
        assert fire["node"] == "worker1" and fire["status_code"] == 200
        # the run carries the firing's real times, so Prefect's own lateness is the firing's
        assert datetime.fromisoformat(run["expected_start_time"]) == scheduled
        assert datetime.fromisoformat(run["start_time"]) == datetime.fromisoformat(fire["started"])
        assert datetime.fromisoformat(run["end_time"]) == datetime.fromisoformat(fire["finished"])
        logs = system.run_logs(run["id"])
        assert any(m.startswith("即将请求：") for m in logs)
        assert any(m.startswith("请求结束，响应码：200") for m in logs)
        assert any(m.startswith("任务[every two seconds]运行成功！") for m in logs)

    schedules = system.pf("GET", f"/deployments/{tid}").json()["schedules"]
    assert [(x["slug"], x["active"], x["schedule"]["cron"]) for x in schedules] == [
        ("quartz 0/2 * * * * ?", True, "* * * * * 0/2")]  # on while the task runs; never run by Prefect's scheduler
    # created READY and never polled, so the foreman never turns the task "Not Ready"
    wait_until(lambda: system.pf("GET", f"/deployments/{tid}").json()["status"] == "READY", timeout=45)

    d = system.detail(tid)
    assert d["TotalRunCount"] >= 3 and d["LastRunTime"] is not None and d["Status"] == 1

    assert system.post("Pause", data={"id": tid}).json()["Success"]
    time.sleep(1.5)  # a firing already in flight may still land
    paused_at = len(receiver.at("/cron"))
    time.sleep(4)
    assert len(receiver.at("/cron")) == paused_at

    assert system.post("Resume", data={"id": tid}).json()["Success"]
    receiver.wait_for("/cron", paused_at + 2, timeout=20)

    assert system.post("Stop", data={"id": tid}).json()["Success"]
    time.sleep(1.5)
    stopped_at = len(receiver.at("/cron"))
    time.sleep(4)
    assert len(receiver.at("/cron")) == stopped_at


def test_run_once_goes_through_a_real_prefect_worker_run(system, receiver):
    tid = system.create_http(receiver.url("/once"), cron="0 0 3 * * ?", Title="run once", RunNow="true")
    assert system.post("RunOnce", data={"id": tid}).json() == {
        "Success": True, "Status": 1, "Message": "任务运行成功!", "Data": None}
    hit = receiver.wait_for("/once", 1, timeout=30)[0]
    run = wait_until(lambda: next((r for r in system.flow_runs(tid)
                                   if r["id"] == hit.headers["idempotency-key"]
                                   and r["state_type"] == "COMPLETED"), None), timeout=30)
    assert "sm:run-once" in run["tags"]
    # run by the node itself (node/direct_runs.py), labelled as Prefect's worker labels a run
    assert run["labels"]["prefect.worker.name"] == "worker1" and run["labels"]["schedulemaster.incarnation"]
    assert run["start_time"] and [s["type"] for s in system.pf(
        "GET", f"/flow_run_states/?flow_run_id={run['id']}").json()] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    logs = wait_until(lambda: (m := system.run_logs(run["id"])) and any(x.startswith("任务[run once]运行成功！") for x in m) and m)
    assert any(x.startswith("Run by node worker1 directly") for x in logs)
    system.post("Stop", data={"id": tid})


def test_form_get_task_sends_query_string_and_body(system, receiver):
    body = json.dumps([{"ParamKey": "a", "ParamValue": "1 2"}, {"ParamKey": "b", "ParamValue": "中"}])
    tid = system.create_http(receiver.url("/form"), cron="0/2 * * * * ?", Title="form get", HttpMethod="GET",
                             HttpContentType="application/x-www-form-urlencoded", HttpBody=body, RunNow="true")
    hit = receiver.wait_for("/form", 1)[0]
    assert hit.method == "GET" and hit.path == "/form?a=1+2&b=%E4%B8%AD"
    assert hit.body == b"a=1+2&b=%E4%B8%AD"
    assert hit.headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"
    system.post("Stop", data={"id": tid})


def test_non_2xx_counts_as_success_and_timeouts_fail(system, receiver):
    receiver.on("/err", status=500, text="boom")
    receiver.on("/slow", delay=3.0)
    err = system.create_http(receiver.url("/err"), cron="0/2 * * * * ?", Title="500s", RunNow="true")
    slow = system.create_http(receiver.url("/slow"), cron="0/2 * * * * ?", Title="slow", RunNow="true",
                              HttpHeaders='[{"ParamKey":"sm-timeout","ParamValue":"1"}]')
    receiver.wait_for("/err", 1)
    receiver.wait_for("/slow", 1)
    err_run = recorded(system, err, 1)[0]
    assert err_run["state_type"] == "COMPLETED"  # the original's rule, kept by default
    assert any("响应码：500" in m for m in system.run_logs(err_run["id"]))
    slow_run = recorded(system, slow, 1)[0]
    assert slow_run["state_type"] == "FAILED"
    assert "timeout: no answer within 1 s" in slow_run["state"]["message"]
    assert any(m.startswith('任务"slow"运行失败！，ERROR：timeout') for m in system.run_logs(slow_run["id"]))
    system.post("Stop", data={"id": err})
    system.post("Stop", data={"id": slow})


def test_one_shot_task_fires_once_at_its_start_date(system, receiver):
    at = datetime.fromtimestamp(time.time() + 6).replace(microsecond=0)
    tid = system.create_http(receiver.url("/oneshot"), cron="", RunLoop="false", Title="one shot",
                             StartDate=_local(system, at), RunNow="true")
    hit = receiver.wait_for("/oneshot", 1, timeout=30)[0]
    assert hit.at >= at.timestamp() - 0.5
    time.sleep(4)
    assert len(receiver.at("/oneshot")) == 1
    system.post("Stop", data={"id": tid})


def _local(system, at: datetime) -> str:
    """A naive local time of this machine, written in the system's zone (how clients send it)."""
    from zoneinfo import ZoneInfo

    return at.astimezone().astimezone(ZoneInfo(system.timezone)).strftime("%Y-%m-%d %H:%M:%S")


def test_prefect_scheduler_creates_runs_for_a_cron_deployment(system):
    """Guards the pins: with sqlalchemy 2.1 the scheduler silently creates no runs."""
    flow_id = system.pf("POST", "/flows/", json={"name": "pins-check"}).json()["id"]
    dep = system.pf("POST", "/deployments/", json={
        "name": "pins-check", "flow_id": flow_id,  # no work pool: nobody runs these
        "schedules": [{"schedule": {"cron": "* * * * *", "timezone": "UTC"}, "active": True}],
    })
    assert dep.status_code in (200, 201), dep.text
    dep_id = dep.json()["id"]

    def scheduled():
        r = system.pf("POST", "/flow_runs/filter", json={
            "deployments": {"id": {"any_": [dep_id]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
        return len(r.json()) >= 3

    try:
        wait_until(scheduled, timeout=90, interval=1)
    finally:
        system.pf("DELETE", f"/deployments/{dep_id}")


def test_a_run_started_from_the_prefect_ui_is_executed_by_the_node(system, receiver):
    """The UI's Quick run creates a Scheduled run in the deployment's own queue."""
    tid = system.create_http(receiver.url("/ui"), cron="0 0 3 * * ?", Title="ui run", RunNow="true")
    r = system.pf("POST", f"/deployments/{tid}/create_flow_run", json={"state": {"type": "SCHEDULED"}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    hit = receiver.wait_for("/ui", 1, timeout=30)[0]
    assert hit.headers["idempotency-key"] == run_id
    wait_until(lambda: system.pf("GET", f"/flow_runs/{run_id}").json()["state_type"] == "COMPLETED")
    system.post("Stop", data={"id": tid})


def test_run_history_as_the_console_showed_it(system, receiver):
    from helpers import AUTH

    receiver.on("/hist-fail", status=500, text="boom")
    ok = system.create_http(receiver.url("/hist"), cron="0/2 * * * * ?", Title="history ok", RunNow="true")
    recorded(system, ok, 2)
    assert system.post("RunOnce", data={"id": ok}).json()["Success"]
    system.post("Stop", data={"id": ok})

    def get(path, **params):
        r = httpx.get(f"{system.api}/api/{path}", params=params, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    traces = get("Task/QueryTraces", id=ok, pageNumber=1, pageSize=50)["Data"]
    assert traces["total"] >= 2 and len(traces["rows"]) == min(traces["total"], 50)
    row = next(t for t in traces["rows"] if t["Kind"] == "firing")  # the newest (the RunOnce may be newer)
    assert row["Node"] == "worker1" and row["Result"] == 1
    assert row["ElapsedTime"] >= 0 and row["StartTime"] and row["EndTime"]
    assert get("Task/QueryTraces", id=ok, result=2, pageNumber=1, pageSize=50)["Data"]["total"] == 0
    # the RunOnce, taken from the shared queue: its node is the worker that ran it
    once = wait_until(lambda: next((t for t in get("Task/QueryTraces", id=ok, pageNumber=1, pageSize=50)["Data"]["rows"]
                                    if t["Kind"] == "run-once" and t["Result"] == 1), None))
    assert once["Node"] == "worker1", once

    logs = wait_until(lambda: get("Task/QueryTraceLogs", id=ok, traceId=row["TraceId"])["Data"] or None)
    assert [entry["Category"] for entry in logs] == [1, 1, 1]
    assert logs[0]["Message"].startswith("即将请求：") and logs[-1]["Message"].startswith("任务[history ok]运行成功！")

    system_logs = get("System/QueryLogs", taskId=ok, pageNumber=1, pageSize=5)["Data"]
    assert system_logs["total"] >= 6 and len(system_logs["rows"]) == 5
    assert {entry["ScheduleId"] for entry in system_logs["rows"]} == {ok}
    assert get("System/QueryLogs", taskId=ok, category=3, pageNumber=1, pageSize=5)["Data"]["total"] == 0

    bad = httpx.get(f"{system.api}/api/Task/QueryTraces", params={"id": "not-a-guid"}, headers=AUTH)
    assert bad.status_code == 400
    assert httpx.get(f"{system.api}/api/System/QueryLogs", headers={"ms_auth_user": "admin"}).status_code == 401


def test_recording_the_same_firing_twice_leaves_one_run_and_one_copy_of_its_logs(system):
    import uuid as _uuid
    from datetime import timezone as _tz

    tid = system.create_http("http://127.0.0.1:9/never", cron="0 0 0 1 1 ? 2099", Title="record twice")
    now = datetime.now(_tz.utc).isoformat()
    fid = str(_uuid.uuid4())
    body = [{"task_id": tid, "firing_id": fid, "name": "twice", "scheduled": now, "started": now,
             "finished": now, "ok": True, "message": "HTTP 200", "fire": {"firing_id": fid},
             "logs": [{"level": 20, "message": "only once, please", "timestamp": now}]}]
    # only a registered node records (the Prefect credential lets a process register as one)
    assert system.pf("POST", "/schedulemaster/firings", json=body).status_code == 403
    node = {"x-sm-node-token": system.pf("POST", "/schedulemaster/nodes/register", json={
        "name": "recording-test", "priority": 0, "max_concurrency": 1, "incarnation": str(_uuid.uuid4())}
    ).json()["token"]}
    for _ in range(2):  # a retry after a timeout whose first attempt had committed
        r = system.pf("POST", "/schedulemaster/firings", json=body, timeout=60, headers=node)
        assert r.status_code == 200 and r.json()["recorded"] == 1
    runs = [x for x in system.flow_runs(tid) if x["idempotency_key"] == fid]
    assert len(runs) == 1
    assert system.run_logs(runs[0]["id"]).count("only once, please") == 1
    bad = system.pf("POST", "/schedulemaster/firings", json=[{"task_id": "nope"}], timeout=60, headers=node)
    assert bad.status_code == 422
    unknown = dict(body[0], task_id=str(_uuid.uuid4()), firing_id=str(_uuid.uuid4()))
    r = system.pf("POST", "/schedulemaster/firings", json=[unknown], timeout=60, headers=node)
    assert r.json() == {"recorded": 0, "unknown_tasks": [unknown["task_id"]]}


def test_a_run_once_parent_runs_its_child_as_a_subflow(system, receiver):
    """The node runs a RunOnce itself (node/direct_runs.py); its child still hangs under it."""
    child = system.create_http(receiver.url("/once-chain/child"), cron="0 0 3 * * ?", Title="once child",
                               RunNow="true")
    parent = system.create_http(receiver.url("/once-chain/parent"), cron="0 0 3 * * ?", Title="once parent",
                                Nexts=child, RunNow="true")
    assert system.post("RunOnce", data={"id": parent}).json()["Success"]
    receiver.wait_for("/once-chain/child", 1, timeout=30)
    once = wait_until(lambda: next((r for r in system.flow_runs(parent) if "sm:run-once" in r["tags"]
                                    and r["state_type"] == "COMPLETED"), None), timeout=30)
    child_run = wait_until(lambda: next((r for r in system.flow_runs(child) if r["parent_task_run_id"]), None),
                           timeout=30)
    assert "sm:next" in child_run["tags"] and child_run["name"] == "once child · next of once parent"
    link = system.pf("GET", f"/task_runs/{child_run['parent_task_run_id']}").json()
    assert link["flow_run_id"] == once["id"] and link["name"] == "next → once child"
    wait_until(lambda: child_run["id"] and system.pf("GET", f"/flow_runs/{child_run['id']}").json()["state_type"]
               == "COMPLETED", timeout=30)
    # both became Completed through Prefect's API (not the recording path): counted all the same
    for tid in (parent, child):
        wait_until(lambda: system.detail(tid)["TotalRunCount"] == 1 or None, timeout=15)
        assert system.detail(tid)["LastRunTime"] is not None
    for tid in (parent, child):
        system.post("Stop", data={"id": tid})


def test_a_scheduled_parents_child_runs_on_the_node_that_owns_it(system, receiver):
    """The parent's node creates the child's run in the child task's own queue (node/firing.py
    trigger_children); the child's node, woken by the master, takes it: once per parent firing."""
    node = system.start_node("childnode")
    try:
        system.wait_node("childnode")
        child = system.create_http(receiver.url("/sched-chain/child"), cron="0 0 3 * * ?", Title="sched child",
                                   Executors="childnode", RunNow="true")
        parent = system.create_http(receiver.url("/sched-chain/parent"), cron="0/2 * * * * ?",
                                    Title="sched parent", Executors="worker1", Nexts=child, RunNow="true")
        receiver.wait_for("/sched-chain/child", 3, timeout=60)
        system.post("Stop", data={"id": parent})
        time.sleep(1)  # the last parent firing's child arrives
        fired = [r for r in system.flow_runs(parent) if "fire" in r["parameters"]]
        wait_until(lambda: len(receiver.at("/sched-chain/child")) >= len(fired) or None, timeout=30)
        children = wait_until(lambda: (lambda rs: rs if len(rs) >= len(fired) and all(
            r["state_type"] == "COMPLETED" for r in rs) else None)(
            [r for r in system.flow_runs(child) if "sm:next" in r["tags"]]), timeout=30)
        assert len(receiver.at("/sched-chain/child")) == len(children) == len(fired)  # once each
        assert {r["labels"].get("prefect.worker.name") for r in children} == {"childnode"}
        assert {r["parameters"]["fire"]["node"] for r in fired} == {"worker1"}
        system.post("Stop", data={"id": child})
    finally:
        system.forget_node(node, "childnode")
