"""`schedulemaster up` as a user runs it: ready, stops cleanly, Running tasks resume, and delayed
tasks that fell due while everything was down fire at start-up, oldest first, marked late; the
next fire times in Prefect's UI switched off at a restart leave none behind."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from schedulemaster.deployments.tasks import upcoming_run_id

from helpers import AUTH, System, wait_until

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_restart_resumes_running_tasks_and_sigterm_leaves_no_orphans(tmp_path, receiver):
    s = System(tmp_path / "data").start()
    try:
        out = "".join(s.output)
        assert "admin / 111111" in out and f":{s.api_port}" in out and f":{s.prefect_port}/" in out
        tid = s.create_http(receiver.url("/resume"), cron="* * * * * ?", Title="resumes", RunNow="true")
        receiver.wait_for("/resume", 2)
        wait_until(lambda: s.pf("GET", f"/flow_runs/{upcoming_run_id(tid)}").status_code == 200)  # next fire shown
        children = s.child_pids()
        assert len(children) == 3   # master, node worker1, delayed-task dispatcher
        delayed = []
        for span in (6, 4, 5):       # due while everything is down
            r = httpx.post(f"{s.api}/api/DelayTask/Create", headers=AUTH, timeout=30, data={
                "SourceApp": "up", "Topic": "down", "ContentKey": f"due+{span}", "DelayTimeSpan": str(span),
                "NotifyUrl": receiver.url("/while-down"), "NotifyDataType": "application/json", "NotifyBody": "{}"})
            delayed.append((span, r.json()["Data"]))
    finally:
        code = s.stop(signal.SIGTERM)
    assert code == 0
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in children), "a child outlived `up`"
    time.sleep(2)
    stopped = len(receiver.at("/resume"))
    time.sleep(2)
    assert len(receiver.at("/resume")) == stopped  # nothing fires while everything is down

    assert receiver.at("/while-down") == []
    time.sleep(4)                # every delayed task is overdue now

    s.env["SM_UI_NEXT_RUNS"] = "off"
    s.start()  # same data dir
    try:
        receiver.wait_for("/resume", stopped + 2, timeout=60)
        assert s.detail(tid)["Status"] == 1
        # switched off: the stand-in left from the first start is removed, the task fires on
        wait_until(lambda: s.pf("GET", f"/flow_runs/{upcoming_run_id(tid)}").status_code == 404, timeout=30)
        children = s.child_pids()
        assert len(children) == 3
        hits = receiver.wait_for("/while-down", 3, timeout=60)
        assert sorted(h.headers["idempotency-key"] for h in hits) == sorted(task_id for _, task_id in delayed)
        fired = []
        for _, task_id in sorted(delayed):
            d = httpx.get(f"{s.api}/api/DelayTask/QueryDetail", params={"id": task_id}, headers=AUTH).json()["Data"]
            [attempt] = d["AttemptLog"]
            assert d["Status"] == 3 and attempt["Late"] and attempt["LatenessSeconds"] > 2
            fired.append(attempt["FireTime"])
        assert fired == sorted(fired)    # sent oldest first (they arrive concurrently, in any order)
    finally:
        s.stop(signal.SIGINT)  # Ctrl-C
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in children)
