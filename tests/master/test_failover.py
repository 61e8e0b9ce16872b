"""Executor nodes across processes, in distributed mode (the cluster of tests/master/conftest.py):
routing by Executors, disable, kill -9 and failover, and bad input (the chaos run is
tests/master/test_failover_chaos.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import httpx
import pytest

from schedulemaster.deployments.chain import owner

from failover_cluster import every_second, fired_on, held_runs, legacy, node_status, stop_all, unfinished_claims
from helpers import AUTH, free_port, wait_until


def test_owner_weights_by_priority_and_never_loops_on_all_zero():
    tasks = [uuid.uuid4() for _ in range(3000)]
    shares = Counter(owner(t, ["a", "b", "c"], {"a": 1, "b": 3, "c": 0}) for t in tasks)
    assert shares["c"] == 0 and 2.4 < shares["b"] / shares["a"] < 3.8, shares
    assert set(Counter(owner(t, ["a", "b"], {"a": 0, "b": 0}) for t in tasks)) == {"a", "b"}
    assert owner(tasks[0], []) is None
    # every process computes the same owner, whatever order it lists the nodes in
    assert all(owner(t, ["a", "b", "c"]) == owner(t, ["c", "a", "b"]) for t in tasks[:200])
    # a node leaving moves only its own tasks
    before = {t: owner(t, ["a", "b", "c"]) for t in tasks}
    after = {t: owner(t, ["a", "b"]) for t in tasks}
    assert all(after[t] == before[t] for t in tasks if before[t] != "c")


@pytest.mark.e2e
def test_each_task_runs_only_on_its_executors_and_a_disabled_node_gets_nothing(cluster, receiver):
    s = cluster
    ids = {
        "w2": every_second(s, receiver, "/fo/w2", "fo-w2", Executors="worker2"),
        "w3": every_second(s, receiver, "/fo/w3", "fo-w3", Executors="worker3"),
        "w13": every_second(s, receiver, "/fo/w13", "fo-w13", Executors=["worker1", "worker3"]),
        "any": every_second(s, receiver, "/fo/any", "fo-any"),
    }
    try:
        for key in ids:
            receiver.wait_for(f"/fo/{key}", 5, timeout=60)
        wait_until(lambda: all(sum(fired_on(s, t).values()) >= 3 for t in ids.values()), timeout=60)
        assert set(fired_on(s, ids["w2"])) == {"worker2"}
        assert set(fired_on(s, ids["w3"])) == {"worker3"}
        assert set(fired_on(s, ids["w13"])) <= {"worker1", "worker3"}
        assert set(fired_on(s, ids["any"])) <= {"worker1", "worker2", "worker3"}
        for key in ids:  # one arrival per firing
            keys = Counter(h.headers["idempotency-key"] for h in receiver.at(f"/fo/{key}"))
            assert max(keys.values()) == 1, keys.most_common(3)

        assert legacy(s).disable_node("worker3") == "节点已休息!"
        # nodes re-read the disabled list every second here (SM_NODES_REFRESH_SECONDS); firings
        # claimed up to two seconds ahead may still land
        time.sleep(4)
        w3, w13 = len(receiver.at("/fo/w3")), len(receiver.at("/fo/w13"))
        time.sleep(5)
        assert len(receiver.at("/fo/w3")) == w3, "a disabled node kept firing"
        assert len(receiver.at("/fo/w13")) >= w13 + 4, "worker1 did not take over fo-w13"
        recent = [r for r in s.flow_runs(ids["w13"], 8) if r["parameters"].get("fire")]
        assert {r["parameters"]["fire"]["node"] for r in recent[:4]} == {"worker1"}
        assert legacy(s).enable_node("worker3") == "节点已启用!"
        receiver.wait_for("/fo/w3", w3 + 1, timeout=30)  # it takes its task up again by itself
    finally:
        legacy(s).enable_node("worker3")
        stop_all(s, ids.values())


@pytest.mark.e2e
def test_a_killed_node_goes_offline_and_its_firings_rerun_elsewhere_or_fail(cluster, receiver):
    s = cluster
    receiver.on("/fo/slow", 200, "success", delay=4)
    receiver.on("/fo/slowfail", 200, "success", delay=4)
    slow = s.create_http(receiver.url("/fo/slow"), cron="0/2 * * * * ?", Title="fo-slow",
                         Executors=["worker2", "worker3"])
    victim = owner(uuid.UUID(slow), ["worker2", "worker3"])
    other = "worker3" if victim == "worker2" else "worker2"
    slowfail = s.create_http(receiver.url("/fo/slowfail"), cron="0/2 * * * * ?", Title="fo-slowfail",
                             Executors=victim, FailoverPolicy="fail")
    ids = [slow, slowfail]
    try:
        for t in ids:
            assert s.post("Start", data={"id": t}).json()["Success"]
        # both in flight on the victim: a request arrived and its 4 s answer is not sent yet
        receiver.wait_for("/fo/slow", 2, timeout=60)
        # (an arrival less than 3 s old is still waiting for its answer; the ages go in the failure message)
        ages = lambda: {p: round(time.time() - receiver.at(p)[-1].at, 1) if receiver.at(p) else None
                        for p in ("/fo/slow", "/fo/slowfail")}
        try:
            wait_until(lambda: all(a is not None and a < 3 for a in ages().values()), timeout=60, interval=0.1)
        except AssertionError:
            raise AssertionError(f"never both in flight: seconds since last arrival {ages()}, counts "
                                 f"{ {p: len(receiver.at(p)) for p in ages()} }, runs on "
                                 f"{ {t: dict(fired_on(s, t)) for t in ids} }, victim {victim}") from None
        in_flight = {p: receiver.at(p)[-1].headers["idempotency-key"] for p in ("/fo/slow", "/fo/slowfail")}
        s.nodes[victim].send_signal(signal.SIGKILL)
        s.nodes[victim].wait()
        killed = time.monotonic()
        wait_until(lambda: node_status(s, victim) == 0, timeout=90, interval=1)
        print(f"{victim} offline {time.monotonic() - killed:.1f} s after kill -9")

        # retry-elsewhere: the same firing runs again on the other node, same Idempotency-Key, logged why
        # (a firing claimed ahead, due within 2 s of the kill, is re-run too: it may have started)
        rerun = wait_until(lambda: [r for r in s.flow_runs(slow) if "sm:rerun" in r["tags"]
                                    and r["parameters"]["rerun"]["idempotency_key"] == in_flight["/fo/slow"]
                                    and r["state_type"] == "COMPLETED"], timeout=120, interval=1)[0]
        print(f"re-run completed {time.monotonic() - killed:.1f} s after kill -9")
        assert rerun["labels"]["prefect.worker.name"] == other
        assert [h for h in receiver.at("/fo/slow") if h.headers["idempotency-key"] == in_flight["/fo/slow"]][1:]
        assert any("重新执行 (re-run)" in line and victim in line for line in s.run_logs(rerun["id"]))
        # fail: the firing is recorded Failed with the reason, and nothing runs it again
        failed = wait_until(lambda: [r for r in s.flow_runs(slowfail) if r["idempotency_key"] == in_flight["/fo/slowfail"]
                                     and r["state_type"] == "FAILED"], timeout=60, interval=1)[0]
        assert "went offline" in failed["state"]["message"] and "failover policy: fail" in failed["state"]["message"]
        assert not [r for r in s.flow_runs(slowfail) if "sm:rerun" in r["tags"]]
        # nothing left claimed or Running under the dead node
        wait_until(lambda: unfinished_claims(s, victim) == 0 and not held_runs(s, victim), timeout=60, interval=1)

        # fo-slowfail may run only on the victim: nothing fires it until it comes back
        time.sleep(3)
        waiting = len(receiver.at("/fo/slowfail"))
        time.sleep(5)
        assert len(receiver.at("/fo/slowfail")) == waiting
        s.nodes[victim] = s.start_node(victim, "--wait-for-name", "60")
        s.wait_node(victim, timeout=120)
        receiver.wait_for("/fo/slowfail", waiting + 1, timeout=60)
    finally:
        stop_all(s, ids)


@pytest.mark.e2e
def test_bad_node_input_is_refused_and_changes_nothing(cluster, tmp_path):
    s = cluster
    api = legacy(s)
    # a name a live node holds
    dup = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "node", "--name", "worker3",
                          "--prefect-port", str(s.prefect_port), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **s.client_env})
    assert dup.returncode == 2 and "node worker3 is live" in dup.stdout + dup.stderr
    # a node without the master's Prefect credential
    stranger = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "node", "--name", "stranger",
                               "--prefect-port", str(s.prefect_port), "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PREFECT_API_AUTH_STRING": "sm:wrong"})
    assert stranger.returncode == 2 and "refused this node's Prefect credential" in stranger.stdout + stranger.stderr
    assert node_status(s, "worker3") == 2
    # a master that is not there
    down = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "node", "--name", "lonely",
                           "--master", f"http://127.0.0.1:{free_port()}/api", "--connect-timeout", "3",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 2 and "did not come up" in down.stdout + down.stderr
    for bad in (["--master", "ftp://x"], ["--name", "a/b"], ["--maxc", "0"], ["--priority", "-1"]):
        r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "node", *bad], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
    # tasks naming unknown nodes, or an unknown policy
    before = s.get("QueryList", {"pageNumber": 1, "pageSize": 50}).json()["total"]
    for fields, match in [({"Executors": "no-such-node"}, "节点不存在：no-such-node"),
                          ({"Executors": ["worker2", "ghost"]}, "节点不存在：ghost"),
                          ({"FailoverPolicy": "maybe"}, "FailoverPolicy"),
                          ({"FailoverPolicy": "x" * 21}, "maximum length")]:
        data = {"Title": "fo-bad", "MetaType": "2", "RunLoop": "true", "CronExpression": "* * * * * ?",
                "HttpRequestUrl": "http://127.0.0.1:9/x", "HttpMethod": "GET", **fields}
        body = s.post("Create", data=data)
        assert match in str(body.json()), (fields, body.json())
    assert s.get("QueryList", {"pageNumber": 1, "pageSize": 50}).json()["total"] == before
    # Node/Edit: bad values change nothing; a good edit shows and the node applies it
    row = lambda: next(r for r in api.nodes() if r["NodeName"] == "worker2")  # noqa: E731
    was = (row()["Priority"], row()["MaxConcurrency"])
    for data, match in [({"name": "worker2", "priority": "-1"}, "priority"),
                        ({"name": "worker2", "priority": "5000"}, "priority"),
                        ({"name": "worker2", "maxConcurrency": "0"}, "maxConcurrency"),
                        ({"name": "worker2", "priority": "abc"}, "priority"),
                        ({"name": "worker2"}, "priority 或 maxConcurrency"),
                        ({"name": "no-such-node", "priority": "2"}, "节点不存在"),
                        ({"priority": "2"}, "name")]:
        r = httpx.post(f"{s.api}/api/Node/Edit", data=data, headers=AUTH, timeout=30)
        assert r.status_code in (200, 400) and match in str(r.json()), (data, r.json())
    assert (row()["Priority"], row()["MaxConcurrency"]) == was
    assert httpx.post(f"{s.api}/api/Node/Edit", data={"name": "worker2", "priority": "3"}, timeout=30).status_code == 401
    r = httpx.post(f"{s.api}/api/Node/Edit", data={"name": "worker2", "priority": "3", "maxConcurrency": "7"},
                   headers=AUTH, timeout=30)
    assert r.json()["Success"], r.text
    assert (row()["Priority"], row()["MaxConcurrency"]) == (3, 7)
    wait_until(lambda: "max concurrency 20 -> 7" in (s.data_dir / "logs" / "extra-worker2.log").read_text(),
               timeout=30)
    # the coordination endpoints refuse what is malformed
    for path, body in [("/schedulemaster/claims", {"node": "w", "incarnation": "x", "firings": []}),
                       ("/schedulemaster/claims", {"node": "a/b", "incarnation": str(uuid.uuid4()), "firings": []}),
                       ("/schedulemaster/claims", {"node": "w", "incarnation": str(uuid.uuid4()), "firings": [
                           {"firing_id": "f", "task_id": str(uuid.uuid4()), "scheduled": "2026-01-01T00:00:00Z"}] * 1001}),
                       ("/schedulemaster/nodes/register", {"name": "", "priority": 1, "max_concurrency": 1,
                                                           "incarnation": str(uuid.uuid4())}),
                       ("/schedulemaster/nodes/register", {"name": "w", "priority": 1, "max_concurrency": 0,
                                                           "incarnation": str(uuid.uuid4())})]:
        assert s.pf("POST", f"{path}", json=body, timeout=30).status_code == 422, (path, body)
    # a process that is not the registered one wins nothing
    r = s.pf("POST", "/schedulemaster/claims", timeout=30, json={
        "node": "worker2", "incarnation": str(uuid.uuid4()),
        "firings": [{"firing_id": "f1", "task_id": str(uuid.uuid4()), "scheduled": "2026-01-01T00:00:00Z"}]})
    assert r.json() == {"won": [], "superseded": True}
