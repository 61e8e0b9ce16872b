"""The notebook-friendly Python API (``import schedulemaster as sm``) on a real system.

Functions are decorated here, shipped to the real node with cloudpickle, fired by it and
read back through Prefect; nothing is mocked. The shipping unit tests at the top need no
system.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest

import schedulemaster as sm
from schedulemaster.notebook import shipping
from schedulemaster.node.plugins import instantiate, resolve
from schedulemaster.sdk import TaskBase, TaskContext

from helpers import AUTH, wait_until


# ---- shipping, no system -----------------------------------------------------------------

def _unpack(filename: str, data: bytes, into: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(into)
    return into


def _load(fn, title: str, tmp_path: Path):
    filename, data = shipping.package(fn, title)
    module = filename[:-4]
    target = resolve(module, shipping.CLASS_NAME, _unpack(filename, data, tmp_path / module))
    return instantiate(target)


def test_a_shipped_function_runs_from_its_package_with_its_closure(tmp_path):
    factor = {"k": 3}

    def job(context):
        context.write_log("scaled")
        return context.get_argument("n", int) * factor["k"]

    inst = _load(job, "ship me", tmp_path)
    ctx = TaskContext("t1", {"n": "7"})
    assert inst.run(ctx) == 21 and ctx.logs[0][1] == "scaled"


def test_a_function_without_context_and_a_taskbase_class_ship_too(tmp_path):
    def bare():
        return "bare"

    class Counter(TaskBase):
        def initialize(self):
            self.n = 10

        def run(self, context):
            self.n += 1
            return self.n

    assert _load(bare, "bare", tmp_path).run(TaskContext("t", {})) == "bare"
    inst = _load(Counter, "counter", tmp_path)
    inst.initialize()
    assert [inst.run(TaskContext("t", {})), inst.run(TaskContext("t", {}))] == [11, 12]


def test_a_function_from_a_local_module_is_shipped_by_value(tmp_path):
    """A helper module beside the notebook is not installed on the nodes: its code travels."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "nb_helpers_x1.py").write_text("def helper(x):\n    return x + 1\n\ndef job(context):\n"
                                          "    return helper(41)\n")
    sys.path.insert(0, str(src))
    try:
        import nb_helpers_x1

        filename, data = shipping.package(nb_helpers_x1.job, "local module")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("nb_helpers_x1", None)
    module = filename[:-4]
    target = resolve(module, shipping.CLASS_NAME, _unpack(filename, data, tmp_path / "out" / module))
    assert "nb_helpers_x1" not in sys.modules
    assert instantiate(target).run(TaskContext("t", {})) == 42


SOURCE = """
import json

LIMIT = {limit}

class Job(TaskBase):
    def run(self, context):
        return json.dumps(helper(context))

def helper(context):
    return LIMIT * 2

def job(context):
    return helper(context)
"""


def _cell(limit: int = 5, filename: str = "/tmp/ipykernel_1/cell.py") -> dict:
    """A notebook cell run in a fresh namespace, as a kernel runs it (the file name differs
    after a kernel restart)."""
    namespace = {"__name__": "__main__", "TaskBase": TaskBase}
    exec(compile(SOURCE.format(limit=limit), filename, "exec"), namespace)
    return namespace


def test_the_fingerprint_is_stable_where_the_pickle_is_not():
    a, b = _cell(), _cell(filename="/tmp/ipykernel_2/other.py")       # run again, after a restart
    for name in ("job", "Job"):
        assert shipping.fingerprint(a[name]) == shipping.fingerprint(b[name])
    # cloudpickle gives every notebook class a random id: the bytes differ, the name does not
    assert shipping.dumps(a["Job"]) != shipping.dumps(b["Job"])
    assert shipping.package(a["Job"], "t")[0] == shipping.package(b["Job"], "t")[0]
    changed = _cell(limit=6)                                            # a global the code uses
    assert shipping.fingerprint(changed["job"]) != shipping.fingerprint(a["job"])
    assert shipping.fingerprint(changed["Job"]) != shipping.fingerprint(a["Job"])

    def closure(n):
        def f(context):
            return n
        return f

    assert shipping.fingerprint(closure(1)) == shipping.fingerprint(closure(1))
    assert shipping.fingerprint(closure(1)) != shipping.fingerprint(closure(2))
    # package names differ with the title and with the code, and only with them
    assert shipping.package(a["job"], "t")[0] != shipping.package(changed["job"], "t")[0]
    assert shipping.package(a["job"], "t")[0] != shipping.package(a["job"], "u")[0]


def test_a_helper_module_beside_the_notebook_travels_too(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "nb_util_y2.py").write_text("def clean(x):\n    return x.strip().upper()\n")
    sys.path.insert(0, str(src))
    try:
        namespace = {"__name__": "__main__"}
        exec("from nb_util_y2 import clean\ndef job(context):\n    return clean(' ok ')\n", namespace)
        filename, data = shipping.package(namespace["job"], "uses a helper module")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("nb_util_y2", None)
    module = filename[:-4]
    target = resolve(module, shipping.CLASS_NAME, _unpack(filename, data, tmp_path / "out" / module))
    assert instantiate(target).run(TaskContext("t", {})) == "OK" and "nb_util_y2" not in sys.modules


def test_a_function_calling_another_task_ships_that_tasks_function(tmp_path):
    from schedulemaster.notebook.handles import ScheduledFunction

    def helper(context):
        return "from helper"

    handle = ScheduledFunction("00000000-0000-0000-0000-000000000001", "helper", helper)

    def job(context):
        return handle(context)

    assert _load(job, "calls a task", tmp_path).run(TaskContext("t", {})) == "from helper"


def test_a_function_too_big_for_a_package_is_refused(monkeypatch):
    import schedulemaster.packages as packages

    monkeypatch.setattr(packages, "MAX_PACKAGE_BYTES", 10_000)
    blob = os.urandom(50_000)

    def job(context):
        return len(blob)

    with pytest.raises(sm.UnshippableError, match="more than the 10,000 a plugin package may have"):
        shipping.package(job, "big")


def test_delete_says_when_the_api_is_away():
    """Only a task that is gone counts as deleted; an API that does not answer is an error."""
    from schedulemaster.notebook.connection import Connection
    from schedulemaster.notebook.handles import Task

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    conn = Connection(sm.LegacyClient(dead), dead + "/api", "UTC", "schedulemaster")
    with pytest.raises(sm.LegacyUnavailable):
        Task(str(uuid.uuid4()), "t", conn).delete()


def test_a_package_from_another_python_is_refused_on_the_node_with_why(tmp_path):
    def job(context):
        return 1

    filename, data = shipping.package(job, "old python")
    module = filename[:-4]
    pkg = _unpack(filename, data, tmp_path / module)
    meta_path = pkg / module / shipping.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["python"] = "3.99"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"shipped from Python 3\.99; this node runs Python 3\.\d+"):
        resolve(module, shipping.CLASS_NAME, pkg)


def test_unshippable_functions_are_refused_naming_what_to_change():
    sock = socket.socket()
    lock = threading.Lock()
    try:
        def uses_socket(context):
            sock.send(b"x")

        with pytest.raises(sm.UnshippableError, match=r"uses_socket cannot be shipped.*`sock` \(socket\.socket"):
            shipping.package(uses_socket, "s")

        def uses_lock(context):
            with lock:
                pass

        with pytest.raises(sm.UnshippableError, match=r"`lock`.*Create such objects inside the function"):
            shipping.package(uses_lock, "l")
    finally:
        sock.close()

    def gen(context):
        yield 1

    def two(a, b):
        pass

    def kw_only(*, context):
        pass

    with pytest.raises(sm.UnshippableError, match="generator"):
        shipping.package(gen, "g")
    with pytest.raises(sm.UnshippableError, match="one argument"):
        shipping.package(two, "two")
    with pytest.raises(sm.UnshippableError, match="one argument"):
        shipping.package(kw_only, "kw")
    with pytest.raises(sm.UnshippableError, match="not a TaskBase subclass"):
        shipping.package(dict, "dict")
    with pytest.raises(sm.UnshippableError, match="not a function"):
        shipping.dumps(42)


@pytest.mark.parametrize("title", ["sync orders", "同步订单", "../../etc/passwd", "a" * 100, "x\ty\n", "🙂"])
def test_package_names_are_importable_and_one_per_title(title):
    from schedulemaster.packages import NAME

    name = shipping.module_name(title, "0123456789abcdef")
    assert NAME.match(name) and name.startswith("smfn_") and len(name) <= 70
    assert name == shipping.module_name(title, "0123456789abcdef")
    assert name != shipping.module_name(title + " ", "0123456789abcdef")
    assert name != shipping.module_name(title, "fedcba9876543210")


def test_spans_and_params_are_parsed_or_refused():
    from schedulemaster.notebook.handles import params_json
    from schedulemaster.timeutil import parse_span

    assert parse_span("90s") == timedelta(seconds=90) and parse_span("2h") == timedelta(hours=2)
    assert parse_span(5) == timedelta(seconds=5) and parse_span("1.5m") == timedelta(seconds=90)
    for bad in ("soon", "-5s", "5 parsecs", "", True, None, "1e9999"):
        with pytest.raises(ValueError, match="must be seconds or a text like"):
            parse_span(bad)  # type: ignore[arg-type]
    assert json.loads(params_json({"a": 1, "b": "x", "c": {"d": [1]}})) == [
        {"ParamKey": "a", "ParamValue": "1", "ParamRemark": ""},
        {"ParamKey": "b", "ParamValue": "x", "ParamRemark": ""},
        {"ParamKey": "c", "ParamValue": '{"d": [1]}', "ParamRemark": ""}]
    with pytest.raises(TypeError):
        params_json(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        params_json({"": 1})


def test_legacy_client_refuses_a_url_that_is_not_http():
    for bad in ("127.0.0.1:30000", "ftp://x", "", None):
        with pytest.raises(ValueError, match="must start with http"):
            sm.LegacyClient(bad)  # type: ignore[arg-type]


def test_connect_to_nothing_says_so():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    with pytest.raises(sm.LegacyUnavailable, match=r"cannot reach the legacy API.*\./sm up"):
        sm.connect(f"http://127.0.0.1:{free}")


# ---- on a real system --------------------------------------------------------------------

def until(fn, timeout: float = 30, interval: float = 0.5):
    """``fn()`` once it is not None (``wait_until`` for DataFrames, which have no truth value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value is not None:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s")


@pytest.fixture(scope="module")
def conn(system):
    system.wait_node()
    c = sm.connect(system.api, prefect_auth=system.auth_string)
    yield c
    c.close()


def _titles() -> list[str]:
    return [r["Title"] for r in sm.current().legacy.iter_tasks()]


def _firings(task, at_least: int, timeout: float = 40) -> pd.DataFrame:
    return until(lambda: (lambda df: df if len(df) >= at_least else None)(
        sm.runs(task=task, kind="firing")), timeout=timeout)


def _log_text(run_row) -> str:
    return "\n".join(sm.logs(run_row)["message"].tolist())


@pytest.mark.e2e
def test_decorate_start_fire_read_back_redefine(conn):
    title = f"py-roundtrip-{uuid.uuid4().hex[:6]}"

    def cell(version: str, batch: int):
        """One notebook cell: run again, it decorates the same code at the same place."""
        @sm.task(cron="0/2 * * * * ?", title=title, executors=["worker1"], params={"batch": batch})
        def sync_orders(context):
            context.write_log(f"{version} batch={context.get_argument('batch', int)}")
            return {"n": context.get_argument("batch", int)}

        return sync_orders

    sync_orders = cell("v1", 25)
    assert isinstance(sync_orders, sm.Task) and sync_orders.status == "stopped"
    assert sync_orders(TaskContext("local", {"batch": "3"})) == {"n": 3}  # still callable here
    fires = sync_orders.next_fires(3)
    assert len(fires) == 3 and all(f.second % 2 == 0 and f.utcoffset() is not None for f in fires)
    assert [f.astimezone(timezone.utc) for f in fires] == sorted(f.astimezone(timezone.utc) for f in fires)

    detail = sync_orders.start()
    assert detail["StatusName"] == "running" and detail["AssemblyName"].startswith("smfn_")
    df = _firings(sync_orders, 2)
    row = df.iloc[0]
    assert (row["kind"], row["state"], row["node"], row["task"]) == ("firing", "COMPLETED", "worker1", title)
    assert row["lateness_s"] >= 0 and row["scheduled"].tzinfo is not None
    assert "v1 batch=25" in _log_text(row)

    # the cell run again unchanged writes nothing: no edit, no restart
    starts_before = len(sm.runs(task=sync_orders, kind="start"))
    assert cell("v1", 25).id == sync_orders.id
    assert len(sm.runs(task=sync_orders, kind="start")) == starts_before

    # changed code and params: the same task, restarted with the new code, still running
    first_id = sync_orders.id
    sync_orders = cell("v2", 26)
    assert sync_orders.id == first_id and _titles().count(title) == 1
    assert sync_orders.status == "running"
    assert len(sm.runs(task=sync_orders, kind="start")) == starts_before + 1
    wait_until(lambda: any("v2 batch=26" in _log_text(r) for _, r in
                           sm.runs(task=sync_orders, kind="firing", limit=3).iterrows()), timeout=30)

    assert sync_orders.pause()["StatusName"] == "paused"
    assert sync_orders.pause()["StatusName"] == "paused"       # idempotent
    assert sync_orders.start()["StatusName"] == "running"      # a paused task resumes
    assert sync_orders.stop()["StatusName"] == "stopped"
    assert sync_orders.stop()["StatusName"] == "stopped"
    sync_orders.delete()
    sync_orders.delete()                                        # gone already: nothing to do
    assert title not in _titles()


@pytest.mark.e2e
def test_run_once_waits_and_returns_the_run_with_its_logs(conn):
    @sm.task(title=f"py-once-{uuid.uuid4().hex[:6]}", cron="0 0 0 1 1 ? 2099")
    def once(context):
        context.write_log("ran once")

    with pytest.raises(sm.LegacyError, match="任务不在运行状态下!"):
        once.run_once()
    once.start()
    row = once.run_once(wait=True, timeout=60)
    assert row["kind"] == "run-once" and row["state"] == "COMPLETED"
    assert "ran once" in "\n".join(row["logs"]["message"])
    once.delete()


@pytest.mark.e2e
def test_a_failing_function_is_a_failed_run_with_its_traceback(conn):
    @sm.task(cron="0/2 * * * * ?", title=f"py-fail-{uuid.uuid4().hex[:6]}", start=True)
    def broken(context):
        raise KeyError("no such order")

    row = _firings(broken, 1).iloc[0]
    assert row["state"] == "FAILED" and "KeyError" in row["message"]
    assert "no such order" in _log_text(row) and "Traceback" in _log_text(row)
    broken.delete()


@pytest.mark.e2e
def test_a_start_that_fails_on_the_node_says_why(conn):
    """A package shipped from another Python: the Start fails with the node's reason."""
    def job(context):
        return 1

    title = f"py-badpy-{uuid.uuid4().hex[:6]}"
    filename, data = shipping.package(job, title)
    module = filename[:-4]
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename.endswith(shipping.META_FILE):
                content = json.dumps({**json.loads(content), "python": "3.99"}).encode()
            dst.writestr(item, content)
    conn.legacy.upload_plugin(filename, buf.getvalue())
    task_id = conn.legacy.create_task(Title=title, MetaType=1, RunLoop=True, CronExpression="0/5 * * * * ?",
                                      AssemblyName=module, ClassName="run")
    t = sm.get_task(title)
    assert t.id == task_id and sm.get_task(task_id).title == title
    with pytest.raises(sm.LegacyError, match=r"任务启动失败!.*shipped from Python 3\.99"):
        t.start()
    assert t.status == "stopped"
    t.delete()


@pytest.mark.e2e
def test_task_pages_read_ahead_give_every_task_once(conn, monkeypatch):
    """sm.tasks() reads the master's task pages (keyset: each page the tasks older than the
    last row before) one page ahead in a thread; in pages of 2 the same tasks, each once."""
    from schedulemaster.coordination import wire

    for i in range(5):  # more than two pages, whatever else the shared system holds
        sm.http_task(f"py-pages-{uuid.uuid4().hex[:6]}-{i}", "http://127.0.0.1:9/never")
    whole = sm.tasks()
    monkeypatch.setattr(wire, "MAX_TASKS", 2)
    paged = sm.tasks()
    assert len(whole) >= 5 and paged["task_id"].is_unique
    assert sorted(paged["task_id"]) == sorted(whole["task_id"])
    assert paged.drop(columns=["next_run"]).equals(whole.drop(columns=["next_run"]))


def test_frames_have_typed_columns(conn, receiver):
    title = f"py-frames-{uuid.uuid4().hex[:6]}"
    ht = sm.http_task(title, receiver.url("/py-frames"), "0/2 * * * * ?", method="POST", body={"a": 1},
                      headers={"X-From": "notebook"}, params={"p": 1}, start=True)
    hits = receiver.wait_for("/py-frames", 2, timeout=30)
    assert json.loads(hits[0].body) == {"a": 1} and hits[0].headers["x-from"] == "notebook"
    _firings(ht, 2)

    tz = conn.timezone
    t = sm.tasks()
    assert list(t.columns) == ["task_id", "title", "type", "status", "cron", "run_loop", "start_date",
                               "end_date", "executors", "failover", "keepers", "nexts", "params", "url", "method",
                               "module", "class_name", "created", "last_run", "next_run", "total_runs",
                               "remark", "unschedulable"]
    assert str(t["created"].dtype) == f"datetime64[ns, {tz}]" or str(t["created"].dtype).endswith(f", {tz}]")
    assert isinstance(t["status"].dtype, pd.CategoricalDtype)
    assert list(t["status"].cat.categories) == ["stopped", "running", "paused"]
    assert t["total_runs"].dtype == "int64" and t["run_loop"].dtype == bool
    mine = t[t["title"] == title].iloc[0]
    assert (mine["type"], mine["status"], mine["url"], mine["method"], mine["params"]) == (
        "http", "running", receiver.url("/py-frames"), "POST", {"p": "1"})
    assert mine["total_runs"] >= 2 and mine["last_run"].tzinfo is not None
    assert pd.isna(mine["unschedulable"])  # worker1 fires it
    # the next run is the cron's next even second, computed where the frame is built
    now = pd.Timestamp.now(tz=tz)
    assert now < mine["next_run"] <= now + pd.Timedelta(seconds=2.5) and mine["next_run"].second % 2 == 0
    assert mine["last_run"] <= now
    legacy = next(conn.legacy.iter_tasks(name=title))  # QueryList's numbers for the same task
    assert legacy["TotalRunCount"] >= mine["total_runs"] >= 2

    r = sm.runs(task=title, since="10m")
    assert list(r.columns) == ["run_id", "task_id", "task", "name", "kind", "state", "message", "node",
                               "scheduled", "started", "ended", "duration_s", "lateness_s", "status_code",
                               "tags"]
    assert r["scheduled"].dt.tz is not None and str(r["scheduled"].dt.tz) == tz
    assert isinstance(r["state"].dtype, pd.CategoricalDtype) and isinstance(r["kind"].dtype, pd.CategoricalDtype)
    assert r["duration_s"].dtype == "float64" and r["lateness_s"].dtype == "float64"
    assert str(r["status_code"].dtype) == "Int64" and (r[r["kind"] == "firing"]["status_code"] == 200).all()
    assert r.groupby("state", observed=True).size()["COMPLETED"] >= 2
    assert r["scheduled"].is_monotonic_decreasing

    # paging: a limit stops the read, pages never exceed their size, and together they are everything
    assert len(sm.runs(task=ht, limit=1)) == 1
    everything = sm.runs(task=ht)
    pages = list(sm.iter_runs(task=ht, page_size=1))
    # runs recorded meanwhile shift the offsets: a page may repeat a row, never skip one
    assert all(len(p) == 1 for p in pages) and {r.id for p in pages for r in p} >= set(everything["run_id"].map(uuid.UUID))

    lat = sm.lateness(since="10m", task=ht)
    assert list(lat.columns) == ["task_id", "task", "firings", "p50_s", "p95_s", "p99_s", "max_s"]
    assert lat.iloc[0]["firings"] >= 2 and lat["p99_s"].dtype == "float64"
    assert lat.iloc[0]["p50_s"] <= lat.iloc[0]["p99_s"] <= lat.iloc[0]["max_s"]
    empty = sm.lateness(since="10m", task=sm.http_task(f"{title}-idle", receiver.url("/idle")))
    assert empty.empty and list(empty.columns) == list(lat.columns) and empty["firings"].dtype == "int64"
    ax = sm.plot_lateness(since="10m", task=ht)
    assert ax.get_xlabel().startswith("lateness")

    n = sm.nodes()
    assert list(n.columns) == ["name", "status", "enabled", "last_seen", "seconds_since_seen", "priority",
                               "max_concurrency", "running_firings", "host", "started", "created", "pool"]
    w1 = n[n["name"] == "worker1"].iloc[0]
    assert (w1["status"], w1["enabled"]) == ("running", True) and w1["seconds_since_seen"] < 60
    assert (w1["priority"], w1["max_concurrency"]) == (1, 20) and w1["running_firings"] >= 0
    assert w1["host"] == socket.gethostname() and w1["started"] <= pd.Timestamp.now(tz=tz)
    assert str(n["priority"].dtype) == "Int64" and str(n["started"].dt.tz) == tz
    assert str(n["last_seen"].dt.tz) == tz and n["seconds_since_seen"].dtype == "float64"

    lg = sm.logs(r.iloc[0])
    assert list(lg.columns) == ["time", "level", "logger", "message"] and str(lg["time"].dt.tz) == tz
    assert isinstance(lg["level"].dtype, pd.CategoricalDtype)

    # the URL changes by title: the same task, updated in place and still running
    moved = sm.http_task(title, receiver.url("/py-frames-2"), "0/2 * * * * ?", method="POST", body={"a": 1},
                         headers={"X-From": "notebook"}, params={"p": 1})
    assert moved.id == ht.id and moved.status == "running"
    receiver.wait_for("/py-frames-2", 1, timeout=30)
    for task in (ht, sm.get_task(f"{title}-idle")):
        task.delete()
    # a deleted task's firings stay in Prefect without a title: labelled by id, not dropped
    labels = [label.get_text() for label in sm.plot_lateness(since="10m").get_yticklabels()]
    assert f"(deleted) {ht.id[:8]}" in labels
    assert sm.lateness(since="10m")["task_id"].eq(ht.id).any()


@pytest.mark.e2e
def test_delay_calls_back_and_is_idempotent_with_an_id(conn, receiver):
    topic = f"py-{uuid.uuid4().hex[:6]}"
    fixed = str(uuid.uuid4())
    first = sm.delay(receiver.url("/py-delay"), {"order": 1}, after="1s", topic=topic, id=fixed)
    assert first == fixed
    assert sm.delay(receiver.url("/py-delay"), {"order": 1}, after="1s", topic=topic, id=fixed) == fixed
    at = sm.delay(receiver.url("/py-delay-at"), "x", at=datetime.now(timezone.utc) + timedelta(seconds=2),
                  topic=topic, data_type="text/plain")
    hits = receiver.wait_for("/py-delay", 1, timeout=30)
    assert json.loads(hits[0].body) == {"order": 1} and hits[0].headers["idempotency-key"] == fixed
    receiver.wait_for("/py-delay-at", 1, timeout=30)
    df = until(lambda: (lambda d: d if len(d) == 2 and (d["status"] == "succeeded").all() else None)(
        sm.delayed(topic=topic)), timeout=30)
    assert set(df["delayed_id"]) == {fixed, at}
    assert list(df.columns) == ["delayed_id", "source_app", "topic", "content_key", "status", "due", "pattern",
                                "created", "executed", "finished", "next_attempt", "attempts",
                                "failed_retries", "notify_url", "data_type", "executors", "created_by",
                                "remark"]
    assert isinstance(df["status"].dtype, pd.CategoricalDtype) and df["attempts"].dtype == "int64"
    assert str(df["due"].dt.tz) == conn.timezone and (df["finished"] >= df["created"]).all()
    assert len(sm.delayed(status="succeeded", topic=topic)) == 2 and sm.delayed(status="failed", topic=topic).empty
    assert len(sm.delayed(topic=topic, limit=1)) == 1


@pytest.mark.e2e
def test_chains_with_cycle_checks(conn):
    suffix = uuid.uuid4().hex[:6]

    def parent_cell(cron: str):
        @sm.task(cron=cron, title=f"py-parent-{suffix}")
        def parent(context):
            context.result = {"from": "parent"}

        return parent

    parent = parent_cell("0/3 * * * * ?")

    @sm.task(title=f"py-child-{suffix}")
    def child(context):
        context.write_log(f"got {context.previous_result}")

    assert (parent >> child) is child
    assert parent.spec().Nexts == [child.id]
    assert (parent >> child) is child and parent.spec().Nexts == [child.id]  # idempotent
    parent = parent_cell("0/2 * * * * ?")           # the cell run again with another cron
    assert parent.spec().Nexts == [child.id]     # its Edit keeps the child
    parent.start()
    child.start()
    row = until(lambda: (lambda d: d.iloc[0] if len(d) else None)(
        sm.runs(task=child, kind="child", state="COMPLETED")), timeout=40)
    wait_until(lambda: "got {'from': 'parent'}" in _log_text(row), timeout=15)

    starts = len(sm.runs(task=child, kind="start"))
    with pytest.raises(sm.LegacyError, match=f"子任务形成循环：py-child-{suffix} → py-parent-{suffix} → py-child"):
        child >> parent
    with pytest.raises(sm.LegacyError, match=f"子任务形成循环：py-parent-{suffix} → py-parent-{suffix}$"):
        parent >> parent
    # refused before anything moved: the child was not stopped and started again
    assert child.status == "running" and len(sm.runs(task=child, kind="start")) == starts
    assert child.spec().Nexts == []
    with pytest.raises(TypeError, match="must be a Task"):
        parent >> "not a task"  # type: ignore[operator]

    # an Edit the server refuses leaves the task as it was, running or paused
    for state in ("running", "paused"):
        if state == "paused":
            parent.pause()
        with pytest.raises(sm.LegacyError, match="cron表达式验证失败"):
            parent.edit(CronExpression="not a cron")
        assert parent.status == state and parent.spec().CronExpression == "0/2 * * * * ?"
        assert parent.spec().Nexts == [child.id]
    parent.delete()
    child.delete()


@pytest.mark.e2e
def test_duplicate_titles_and_aware_dates(conn, receiver):
    title = f"py-dup-{uuid.uuid4().hex[:6]}"
    ids = [conn.legacy.create_task(Title=title, MetaType=2, HttpRequestUrl=receiver.url("/dup"))
           for _ in range(2)]
    with pytest.raises(ValueError, match=f"2 tasks are titled '{title}'"):
        sm.http_task(title, receiver.url("/dup2"))
    for task_id in ids:
        conn.legacy.delete(task_id)

    from zoneinfo import ZoneInfo

    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    t = sm.http_task(f"{title}-aware", receiver.url("/aware"), "0 0 * * * ?", start_date=at)
    local = at.astimezone(ZoneInfo(conn.timezone)).strftime("%Y-%m-%d %H:%M:%S")
    assert t.detail()["StartDate"].replace("T", " ") == local
    assert t.next_fires(1)[0] >= at
    t.delete()


@pytest.mark.e2e
def test_policies_are_arguments_kept_by_a_redefinition_and_checked_before_any_write(conn, receiver):
    title = f"py-policy-{uuid.uuid4().hex[:6]}"
    t = sm.http_task(title, receiver.url("/py-policy"), "0 0 3 * * ?", overlap="parallel", max_parallel=4,
                     retries=2, backoff="exponential", timeout=30, fail_on_non_2xx=True, expected_text="OK")
    p = t.detail()["Policy"]
    assert (p["OverlapPolicy"], p["MaxParallel"], p["Retries"], p["RetryBackoff"], p["TimeoutSeconds"],
            p["FailOnNon2xx"], p["ExpectedText"]) == ("parallel", 4, 2, "exponential", 30, True, "OK")
    # defined again without them (a cell run again, edited): what it does not name stays
    sm.http_task(title, receiver.url("/py-policy"), "0 0 4 * * ?", misfire="all")
    p = t.detail()["Policy"]
    assert (p["MisfirePolicy"], p["Retries"], p["ExpectedText"]) == ("all", 2, "OK")
    for kw, message in (({"retries": 11}, "retries: Retries"), ({"overlap": "twice"}, "overlap: OverlapPolicy"),
                        ({"max_parallel": 0}, "max_parallel"), ({"misfire_threshold": -1}, "misfire_threshold")):
        with pytest.raises(ValueError, match=message):
            sm.http_task(title, receiver.url("/py-policy"), "0 0 5 * * ?", **kw)
    with pytest.raises(TypeError, match="fail_on_non_2xx"):
        sm.http_task(title, receiver.url("/py-policy"), fail_on_non_2xx="yes")
    with pytest.raises(ValueError, match="overlap"):
        @sm.task(cron="0 0 3 * * ?", title=f"{title}-fn", overlap="parallel")
        def job(context):
            return 1
    assert t.spec().CronExpression == "0 0 4 * * ?"  # nothing written by the refused calls
    assert not [r for r in conn.legacy.iter_tasks(f"{title}-fn")]
    t.delete()


@pytest.mark.e2e
def test_bad_input_raises_and_changes_nothing(conn, system):
    before = sorted(_titles())
    packages = system.data_dir / "plugins"
    stored = sorted(p.name for p in packages.iterdir()) if packages.exists() else []
    sock = socket.socket()

    def job(context):
        return 1

    def uses(context):
        return sock

    try:
        cases = [
            (lambda: sm.task(cron="0/2 * * *")(job), ValueError, "cron表达式验证失败"),
            (lambda: sm.task(cron="61 * * * * ?")(job), ValueError, "cron表达式验证失败"),
            (lambda: sm.task(cron=5)(job), TypeError, "Quartz expression string"),
            (lambda: sm.task(executors=["no-such-node"])(job), ValueError,
             r"unknown executor 'no-such-node': the nodes of this system are .*worker1"),
            (lambda: sm.task(executors="worker1")(job), TypeError, "list of node names"),
            (lambda: sm.task(failover="maybe")(job), ValueError, "failover must be one of"),
            (lambda: sm.http_task("py-bad-fo", "http://127.0.0.1:1/x", failover=1), ValueError,
             "failover must be one of"),
            (lambda: sm.task(keepers="1")(job), TypeError, "list of user ids"),
            (lambda: sm.task(params=["x"])(job), TypeError, "dict"),
            (lambda: sm.task()(uses), sm.UnshippableError, "`sock`"),
            (lambda: sm.task()(lambda c: 1), ValueError, "lambda has no name"),
            (lambda: sm.task(title="   ")(job), ValueError, "non-empty title"),
            (lambda: sm.task(title="t" * 101)(job), sm.LegacyValidationError, "maximum length"),
            (lambda: sm.task(title="py-bad-dates", start_date=datetime(2030, 1, 2),
                             end_date=datetime(2030, 1, 1))(job), sm.LegacyError, "结束时间不能早于开始时间"),
            (lambda: sm.http_task("py-bad-url", "ftp://x"), ValueError, "absolute http"),
            (lambda: sm.http_task("py-bad-method", "http://127.0.0.1:1/x", method="GE T"), sm.LegacyError,
             "不是有效的HTTP方法"),
            (lambda: sm.delay("http://127.0.0.1:1/x", "b"), ValueError, "exactly one of"),
            (lambda: sm.delay("http://127.0.0.1:1/x", "b", after="-5s"), ValueError, "must be seconds"),
            (lambda: sm.delay("javascript:alert(1)", "b", after=5), sm.LegacyError, "NotifyUrl 必须是 http://"),
            (lambda: sm.delay("http://127.0.0.1:1/x", "b" * 1001, after=5), sm.LegacyValidationError,
             "NotifyBody"),
            (lambda: sm.runs(kind="sometimes"), ValueError, "kind must be one of"),
            (lambda: sm.runs(state="DONE"), ValueError, "state must be one of"),
            (lambda: sm.runs(limit=0), ValueError, "limit must be"),
            (lambda: sm.runs(since="yesterday"), ValueError, "must be seconds or a text"),
            (lambda: sm.runs(task=42), TypeError, "task must be a Task"),
            (lambda: sm.runs(task="no such task title"), sm.LegacyError, "任务不存在"),
            (lambda: sm.delayed(status="lost"), ValueError, "status must be one of"),
            (lambda: sm.logs("not-a-uuid"), ValueError, "not a run id"),
            (lambda: sm.get_task("no such task"), sm.LegacyError, "任务不存在"),
        ]
        for call, exc, match in cases:
            with pytest.raises(exc, match=match):
                call()
    finally:
        sock.close()
    assert sorted(_titles()) == before
    assert (sorted(p.name for p in packages.iterdir()) if packages.exists() else []) == stored

    @sm.task(title=f"py-state-{uuid.uuid4().hex[:6]}")
    def stopped(context):
        return 1

    with pytest.raises(sm.LegacyError, match="当前任务状态下不能暂停!"):
        stopped.pause()
    with pytest.raises(sm.LegacyError, match="当前任务状态下不能恢复运行!"):
        stopped.resume()
    with pytest.raises(ValueError, match="count must be"):
        stopped.next_fires(0)
    assert stopped.next_fires(3) == []  # RunLoop off and no StartDate in the future: nothing scheduled

    def policy() -> str:
        t = sm.tasks()
        return t[t["title"] == stopped.title].iloc[0]["failover"]

    assert policy() == "retry-elsewhere"
    sm.task(title=stopped.title, failover="fail")(stopped.fn)  # the same title: an update
    assert policy() == "fail"
    sm.task(title=stopped.title)(stopped.fn)  # failover not given: kept
    assert policy() == "fail"
    stopped.delete()


@pytest.mark.e2e
def test_legacy_client_envelopes(conn, system):
    api = sm.LegacyClient(system.api, "admin", "111111")
    assert api.secret == AUTH["ms_auth_secret"]
    info = api.info()
    assert info["PrefectApiUrl"] == system.prefect and info["WorkPool"] and info["TimeZone"] == conn.timezone
    assert httpx.get(f"{system.api}/api/System/Info").status_code == 401
    with pytest.raises(sm.LegacyAuthError, match="401"):
        sm.LegacyClient(system.api, "admin", "wrong").info()
    with pytest.raises(sm.LegacyValidationError, match="pageNumber") as caught:
        api.call("GET", "Task/QueryList", params={"pageNumber": "abc", "pageSize": 1})
    assert "pageNumber" in caught.value.errors
    with pytest.raises(sm.LegacyError, match="任务信息不能为空") as failed:
        api.start(str(uuid.uuid4()))
    assert failed.value.status == 0 and failed.value.http_status == 200
    with pytest.raises(sm.LegacyUnavailable, match="HTTP 404"):
        api.call("GET", "No/Such")
    assert api.task(str(uuid.uuid4())) is None
    api.close()


@pytest.mark.e2e
def test_prefect_that_cannot_be_reached_is_one_clear_exception(conn, system):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    probe.close()
    try:
        broken = sm.connect(system.api, prefect_url=dead, prefect_auth=system.auth_string)
        assert broken.prefect_url == dead
        started = time.monotonic()
        with pytest.raises(sm.PrefectUnavailable, match=f"cannot reach Prefect's API at {dead}"):
            sm.runs()
        print(f"PrefectUnavailable after {time.monotonic() - started:.1f} s")
    finally:
        sm.connect(system.api, prefect_auth=system.auth_string)

