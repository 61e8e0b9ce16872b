"""Executor nodes across processes, in distributed mode (Prefect and the store on the PostgreSQL
of this machine): routing by Executors, disable, kill -9 and failover, a bounded chaos run,
and bad input. Three nodes: `up`'s worker1 plus worker2 and worker3 in their own processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
import pytest

import schedulemaster as sm
from schedulemaster.deployments.chain import owner
from schedulemaster.node.firing import firing_id

from helpers import AUTH, PG, System, drop_databases, free_port, require_postgres, wait_until


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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_postgres()
    db = f"sm_fo_{uuid.uuid4().hex[:8]}"
    s = System(tmp_path_factory.mktemp("sm-fo"), env={"SM_DATABASE_URL": f"{PG}/{db}"}).start()
    s.store_url = f"{PG}/{db}"
    s.nodes = {n: s.start_node(n) for n in ("worker2", "worker3")}
    try:
        for n in s.nodes:
            s.wait_node(n, timeout=120)
        yield s
    finally:
        for p in s.nodes.values():
            s.stop_node(p)
        s.stop()
        drop_databases(db, f"{db}_prefect")


def legacy(system) -> sm.LegacyClient:
    return sm.LegacyClient(system.api)


def node_status(system, name: str) -> int | None:
    row = next((r for r in legacy(system).nodes() if r["NodeName"] == name), None)
    return None if row is None else row["Status"]


def fired_on(system, task_id: str) -> Counter:
    return Counter(((r["parameters"].get("fire") or {}).get("node")
                    or (r.get("labels") or {}).get("prefect.worker.name")) for r in system.flow_runs(task_id, 200))


def unfinished_claims(system, node: str | None = None) -> int:
    with psycopg.connect(system.store_url) as conn:
        sql = "SELECT count(*) FROM sm_firing_claims WHERE finished_at IS NULL"
        return conn.execute(sql + (" AND node = %s" if node else ""), (node,) if node else ()).fetchone()[0]


def held_runs(system, node: str) -> list[dict]:
    r = system.pf("POST", "/flow_runs/filter", timeout=30, json={
        "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}, "limit": 200})
    return [x for x in r.json() if (x.get("labels") or {}).get("prefect.worker.name") == node]


def every_second(system, receiver, path: str, title: str, **fields) -> str:
    task_id = system.create_http(receiver.url(path), cron="* * * * * ?", Title=title, **fields)
    assert system.post("Start", data={"id": task_id}).json()["Success"]
    return task_id


def stop_all(system, ids) -> None:
    for t in ids:
        system.post("Stop", data={"id": t})


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
        time.sleep(8)  # nodes re-read the disabled list every 5 s
        w3, w13 = len(receiver.at("/fo/w3")), len(receiver.at("/fo/w13"))
        time.sleep(6)
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
def test_chaos_random_kills_lose_and_duplicate_nothing(cluster, receiver):
    """Seconds-level firings on three nodes while worker2 and worker3 are killed -9 and
    restarted at random: every (task, instant) arrives, and twice only when marked a re-run."""
    s = cluster
    rng = random.Random(6)
    ids = [every_second(s, receiver, f"/fo/chaos{i}", f"fo-chaos{i}") for i in range(6)]
    start = datetime.now(timezone.utc)
    kills = 0
    try:
        deadline = time.monotonic() + 70
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(8, 16))
            victim = rng.choice(["worker2", "worker3"])
            if s.nodes[victim].poll() is None:
                s.nodes[victim].send_signal(signal.SIGKILL)
                s.nodes[victim].wait()
                kills += 1
            time.sleep(rng.uniform(3, 8))
            s.nodes[victim] = s.start_node(victim, "--wait-for-name", "60")
        time.sleep(45)  # the last kill's firings are taken over while the tasks still run
    finally:
        end = datetime.now(timezone.utc)
        stop_all(s, ids)
    for n in ("worker2", "worker3"):
        s.wait_node(n, timeout=120)
    wait_until(lambda: unfinished_claims(s) == 0, timeout=120, interval=1)
    lost, unmarked, arrivals = [], [], 0
    for i, t in enumerate(ids):
        keys = Counter(h.headers["idempotency-key"] for h in receiver.at(f"/fo/chaos{i}"))
        arrivals += sum(keys.values())
        first = start.replace(microsecond=0) + timedelta(seconds=3)
        expected = [firing_id(uuid.UUID(t), first + timedelta(seconds=k))
                    for k in range(int((end - first).total_seconds()) - 3)]
        lost += [(f"fo-chaos{i}", f"{first + timedelta(seconds=k):%H:%M:%S}") for k, key in enumerate(expected)
                 if key not in keys]
        reruns = {(r["parameters"].get("rerun") or {}).get("idempotency_key")
                  for r in s.flow_runs(t, 200) if "sm:rerun" in r["tags"]}
        unmarked += [k for k, n in keys.items() if n > 1 and k not in reruns]
    print(f"chaos: {kills} kills, {arrivals} arrivals, {len(lost)} lost, {len(unmarked)} unmarked duplicates")
    assert kills >= 3
    assert lost == [] and unmarked == []


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
