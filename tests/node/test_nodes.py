"""Nodes (节点管理): list, disable (休息), enable (启用), delete (删除), on a real system."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import schedulemaster as sm
from schedulemaster.deployments.chain import node_view, online, why_unschedulable
from schedulemaster.deployments.variables import disabled_of, read_node_variables

from helpers import AUTH, run_cli, wait_until


def test_the_disabled_list_is_read_defensively_and_filters_the_live_nodes():
    assert disabled_of({"disabled": ["a", 3, "b"]}) == {"a", "b"}
    for junk in (None, [], "a", {"disabled": "a"}, {"other": ["a"]}):
        assert disabled_of(junk) == set()
    workers = [SimpleNamespace(name=n, status=SimpleNamespace(value=s))
               for n, s in (("w1", "ONLINE"), ("w2", "ONLINE"), ("w3", "OFFLINE"))]
    assert online(workers) == ["w1", "w2"]
    assert online(workers, {"w1"}) == ["w2"]


def test_why_a_running_task_has_no_node():
    known, live, off = {"w1", "w2", "w3"}, {"w1"}, {"w2"}
    assert why_unschedulable([], known, live, off) is None
    assert why_unschedulable(["w3", "w1"], known, live, off) is None
    assert why_unschedulable([], known, set(), off) == "no node is online and enabled"
    assert why_unschedulable(["w2", "w3", "gone"], known, live, off) == (
        "no node it may run on can fire it: w2 is disabled; w3 is offline; gone is not a node of this system")


def task_events(system, task_id: str) -> list[dict]:
    """The master's unschedulable / schedulable events of a task, oldest first."""
    r = system.pf("POST", "/events/filter", json={"filter": {
        "event": {"prefix": ["schedulemaster.task."]},
        "resource": {"id": [f"schedulemaster.task.{task_id}"]}, "order": "ASC"}, "limit": 50})
    r.raise_for_status()
    return r.json()["events"]


def unschedulable_gauge(system) -> float:
    r = httpx.get(f"{system.api}/metrics", headers=AUTH, timeout=30)
    r.raise_for_status()
    return next(s.value for f in text_string_to_metric_families(r.text) for s in f.samples
                if s.name == "schedulemaster_tasks_unschedulable")


@pytest.fixture(scope="module")
def api(system):
    system.wait_node()
    client = sm.LegacyClient(system.api)
    yield client
    client.enable_node("worker1")  # whatever a failed test left
    client.close()


def _row(api, name):
    return next((r for r in api.nodes() if r["NodeName"] == name), None)


@pytest.mark.e2e
def test_a_disabled_node_fires_nothing_until_enabled(api, system, receiver):
    row = _row(api, "worker1")
    assert (row["Status"], row["StatusText"], row["Enabled"]) == (2, "运行", True) and row["LastUpdateTime"]
    task_id = system.create_http(receiver.url("/nodes-flow"), cron="* * * * * ?", Title="nodes-flow")
    assert system.post("Start", data={"id": task_id}).json()["Success"]
    try:
        receiver.wait_for("/nodes-flow", 2, timeout=30)
        assert api.disable_node("worker1") == "节点已休息!"
        assert api.disable_node("worker1") == "节点已休息!"  # idempotent
        row = _row(api, "worker1")
        assert (row["Status"], row["StatusText"], row["Enabled"]) == (1, "空闲", False)
        # the Running task says why it fires nothing, in its detail and in the notebook's frame
        # (the detail reads the nodes at most every 2 s: ms_compat/task_api.py NODE_VIEW_SECONDS)
        wait_until(lambda: system.detail(task_id)["Unschedulable"] == "no node is online and enabled", timeout=10)
        sm.connect(system.api, prefect_auth=system.auth_string)
        frame = sm.tasks()
        assert frame[frame["task_id"] == task_id].iloc[0]["unschedulable"] == "no node is online and enabled"
        nodes = sm.nodes()
        assert list(nodes.columns) == ["name", "status", "enabled", "last_seen", "seconds_since_seen", "priority",
                                       "max_concurrency", "running_firings", "host", "started", "created", "pool"]
        w1 = nodes[nodes["name"] == "worker1"].iloc[0]
        assert (w1["status"], w1["enabled"]) == ("idle", False) and list(nodes["status"].cat.categories) == [
            "offline", "idle", "running"]
        time.sleep(4)  # the node re-reads the list every second here; a firing claimed ahead may land
        settled = len(receiver.at("/nodes-flow"))
        # a RunOnce is accepted but waits in its queue: the disabled node takes no run either
        assert system.post("RunOnce", data={"id": task_id}).json()["Success"]
        time.sleep(5)
        assert len(receiver.at("/nodes-flow")) == settled, "a disabled node kept firing"
        once = [r for r in system.flow_runs(task_id) if "sm:run-once" in r["tags"]]
        assert len(once) == 1 and once[0]["state_type"] == "SCHEDULED", once
        # ... and the master says so once, as a Prefect event (its keepers would be mailed)
        said = wait_until(lambda: task_events(system, task_id), timeout=40)
        assert [e["event"] for e in said] == ["schedulemaster.task.unschedulable"]
        assert said[0]["payload"]["reason"] == "no node is online and enabled"
        gauge = lambda: unschedulable_gauge(system)  # noqa: E731
        during = wait_until(lambda: gauge() >= 1 and gauge(), timeout=10)
        assert {"prefect.resource.id": f"prefect.deployment.{task_id}", "prefect.resource.role": "deployment"} in \
            said[0]["related"]
        assert api.enable_node("worker1") == "节点已启用!"
        receiver.wait_for("/nodes-flow", settled + 2, timeout=30)
        wait_until(lambda: system.detail(task_id)["Unschedulable"] is None, timeout=10)
        again = wait_until(lambda: len(e := task_events(system, task_id)) >= 2 and e, timeout=40)
        assert [e["event"] for e in again] == ["schedulemaster.task.unschedulable", "schedulemaster.task.schedulable"]
        assert gauge() < during
        assert _row(api, "worker1")["Status"] == 2
        wait_until(lambda: [r for r in system.flow_runs(task_id) if r["id"] == once[0]["id"]
                            and r["state_type"] == "COMPLETED"], timeout=30)
    finally:
        api.enable_node("worker1")
        system.post("Stop", data={"id": task_id})
        system.post("Delete", data={"id": task_id})


@pytest.mark.e2e
async def test_a_node_reads_the_disabled_list_and_the_settings_in_one_call(api, system):
    """What every node re-reads every few seconds (firing.refresh_nodes), from the real server."""
    api.disable_node("worker1")
    try:
        async with httpx.AsyncClient(base_url=system.prefect, auth=system.prefect_auth, timeout=30) as client:
            disabled, settings = await read_node_variables(client)
    finally:
        api.enable_node("worker1")
    assert disabled == {"worker1"}
    assert settings.get("Http_RequestTimeout") and not any(k.endswith("Pwd") for k in settings), settings


@pytest.mark.e2e
async def test_a_pool_not_made_yet_has_no_nodes_and_is_no_error(api, system):
    """The master's services look at the pool before the first node makes it: that is an
    empty pool (it was a warning at every start), while the real pool shows its node."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(system.prefect, auth_string=system.auth_string) as client:
        missing = await node_view(client, "no-such-pool")
        real = await node_view(client, "schedulemaster")
    assert (missing.known, missing.live) == (frozenset(), frozenset())
    assert "worker1" in real.live


def test_delete_only_an_offline_node(api, system):
    with pytest.raises(sm.LegacyError, match="节点在线，不能删除"):
        api.delete_node("worker1")
    # a worker that heartbeats once and goes quiet: Prefect marks it offline
    r = system.pf("POST", "/work_pools/schedulemaster/workers/heartbeat", timeout=30,
                   json={"name": "ghost-node", "heartbeat_interval_seconds": 1})
    assert r.status_code == 204, r.text
    assert _row(api, "ghost-node") is not None
    api.disable_node("ghost-node")
    wait_until(lambda: _row(api, "ghost-node")["Status"] == 0, timeout=90, interval=1)
    assert _row(api, "ghost-node")["StatusText"] == "下线"
    assert api.delete_node("ghost-node") == "节点已删除!"
    assert _row(api, "ghost-node") is None
    with pytest.raises(sm.LegacyError, match="节点不存在!"):
        api.delete_node("ghost-node")
    # forgotten with it: a node of that name coming back starts enabled
    assert "ghost-node" not in disabled_of(system.pf("POST", "/variables/filter", timeout=30, json={
        "variables": {"name": {"any_": ["schedulemaster_nodes"]}}}).json()[0]["value"])


@pytest.mark.e2e
def test_node_requests_with_bad_input_change_nothing(api, system):
    before = api.nodes()
    for call, exc, match in [
        (lambda: api.disable_node("no-such-node"), sm.LegacyError, "节点不存在!"),
        (lambda: api.enable_node("x" * 101), sm.LegacyValidationError, "maximum length"),
        (lambda: api.call("POST", "Node/Disable"), sm.LegacyValidationError, "name"),
        (lambda: api.call("POST", "Node/Disable", data={"name": "   "}), sm.LegacyValidationError, "name"),
        (lambda: api.delete_node("../../etc"), sm.LegacyError, "节点不存在!"),
        (lambda: sm.LegacyClient(system.api, "admin", "wrong").nodes(), sm.LegacyAuthError, "401"),
    ]:
        with pytest.raises(exc, match=match):
            call()
    after = api.nodes()
    assert [(r["NodeName"], r["Enabled"]) for r in after] == [(r["NodeName"], r["Enabled"]) for r in before]
    assert httpx.get(f"{system.api}/api/Node/QueryList").status_code == 401


@pytest.mark.e2e
def test_nodes_cli(api, system):
    def run(*args):
        return run_cli("nodes", *args, "--api", system.api)

    listed = run("list")
    assert listed.returncode == 0 and "worker1" in listed.stdout and "运行" in listed.stdout
    missing = run("disable", "no-such-node")
    assert missing.returncode == 1 and "节点不存在!" in missing.stderr
    assert _row(api, "worker1")["Enabled"] is True
    assert "Priority" in listed.stdout and "RunningFirings" in listed.stdout
    # edit: nothing to change, or values out of range, are refused before any request
    for args, match in [(("edit", "worker1"), "give --priority and/or --maxc"),
                        (("edit", "worker1", "--priority", "-1"), "--priority"),
                        (("edit", "worker1", "--maxc", "0"), "--maxc"),
                        (("edit", "worker1", "--maxc", "x"), "--maxc")]:
        r = run(*args)
        assert r.returncode == 2 and match in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    assert (_row(api, "worker1")["Priority"], _row(api, "worker1")["MaxConcurrency"]) == (1, 20)
    assert run("edit", "no-such-node", "--priority", "2").returncode == 1
    with pytest.raises(sm.LegacyError, match="节点不存在"):
        api.edit_node("no-such-node", priority=2)
    assert api.edit_node("worker1", priority=1, max_concurrency=20) == "节点已保存!"  # the values it has
    try:
        done = run("edit", "worker1", "--maxc", "30")
        assert done.returncode == 0, done.stderr
        assert _row(api, "worker1")["MaxConcurrency"] == 30
    finally:
        run("edit", "worker1", "--maxc", "20")
    assert _row(api, "worker1")["MaxConcurrency"] == 20


@pytest.mark.e2e
def test_prefects_own_worker_command_starts_a_whole_node(api, system, receiver):
    """`prefect worker start --type schedulemaster-node` is a complete node: it registers with
    its priority and limit, and fires a task pinned to it."""
    import os
    import signal

    env = {**os.environ, **system.env, **system.client_env, "SM_DATA_DIR": str(system.data_dir),
           "SM_TIMEZONE": system.timezone, "SM_PREFECT_PORT": str(system.prefect_port),
           "PREFECT_API_URL": system.prefect, "SM_NODE_PRIORITY": "0",  # 0: it takes no unpinned task
           "PYTHONUNBUFFERED": "1"}
    prefect_cli = os.path.join(os.path.dirname(sys.executable), "prefect")
    log_path = system.data_dir / "logs" / "extra-pf-node.log"
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:  # owner-only, as the system's own logs
        proc = subprocess.Popen([prefect_cli, "worker", "start", "--pool", "schedulemaster", "--type",
                                 "schedulemaster-node", "--name", "pf-node", "--limit", "4"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    task_id = None
    try:
        row = wait_until(lambda: (r := _row(api, "pf-node")) and r["Status"] == 2 and r, timeout=90, interval=0.5)
        assert (row["Priority"], row["MaxConcurrency"]) == (0, 4), row
        task_id = system.create_http(receiver.url("/pf-node"), cron="* * * * * ?", Title="pf-node",
                                     Executors="pf-node")
        assert system.post("Start", data={"id": task_id}).json()["Success"]
        hits = receiver.wait_for("/pf-node", 2, timeout=30)
        assert hits
        assert "node pf-node started (priority 0, max concurrency 4)" in log_path.read_text(errors="replace")
    finally:
        if task_id:
            system.post("Stop", data={"id": task_id})
            system.post("Delete", data={"id": task_id})
        # Prefect 3.8.8's `worker start` ignores the first SIGTERM/SIGINT and kills itself on the
        # second (docs/prefect-facts.md), so there is no graceful end to wait for here.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
