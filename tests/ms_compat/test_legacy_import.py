"""Importing an original ScheduleMaster database: from the MariaDB of this machine
(127.0.0.1:3306, root) with the original's MySQL types, and from its PostgreSQL, into a
running system; every item checked through the legacy API and Prefect's API."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pymysql
import pytest

from helpers import AUTH, System, wait_until
from legacy_source import MYSQL_SCHEMA, POSTGRES_SCHEMA, Source, fill, md5
from schedulemaster.ms_compat.legacy_import import SourceError, plan_import, read_source
from schedulemaster.store.db import DEFAULT_CONFIGS

TZ = "Asia/Shanghai"  # the original's workers' wall clock, and the target system's zone
KNOWN = {k for k, *_ in DEFAULT_CONFIGS}


def mysql(db: str | None = None):
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=db,
                           charset="utf8mb4", autocommit=True)


def local_now() -> datetime:
    return datetime.now(ZoneInfo(TZ)).replace(tzinfo=None)


@pytest.fixture(scope="module")
def source(receiver):
    try:
        admin = mysql()
    except pymysql.MySQLError as exc:
        pytest.fail(f"MariaDB is not reachable at 127.0.0.1:3306 (root): {exc}")
    db = f"sm_src_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    src = Source(url=f"mysql://root@127.0.0.1:3306/{db}")
    conn = mysql(db)
    fill(conn.cursor(), MYSQL_SCHEMA, src, receiver.url(""), local_now())
    conn.close()
    yield src
    admin.cursor().execute(f"DROP DATABASE {db}")
    admin.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    s = System(tmp_path_factory.mktemp("sm-import"), timezone=TZ).start()
    yield s
    s.stop()


def run_import(target_system: System | None, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    extra = {"SM_PREFECT_PORT": str(target_system.prefect_port), **target_system.client_env} if target_system else {}
    return subprocess.run([sys.executable, "-m", "schedulemaster.cli", "import", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "250", **extra, **(env or {})})


def deployment(system: System, task_id: str) -> dict:
    r = system.pf("GET", f"/deployments/{task_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def task_count(system: System) -> int:
    """Deployments of tasks: each on its own flow, tagged (the dispatcher's deployment is tagged
    schedulemaster too, its flow is not)."""
    r = system.pf("POST", "/deployments/count", json={
        "deployments": {"tags": {"all_": ["schedulemaster"]}}, "flows": {"tags": {"all_": ["schedulemaster"]}}})
    return r.json()


def secret(user: str, password: str) -> dict:
    return {"ms_auth_user": user, "ms_auth_secret": md5(user + md5(password) + user)}


def legacy(system: System, method: str, path: str, headers=None, **kw) -> httpx.Response:
    return httpx.request(method, f"{system.api}/api/{path}", headers=AUTH if headers is None else headers,
                         timeout=60, **kw)


def edit(system: System, task_id: str, **changes) -> dict:
    spec = deployment(system, task_id)["parameters"]["task"]
    form = {"Id": task_id, "Title": spec["Title"], "MetaType": "2", "RunLoop": str(spec["RunLoop"]).lower(),
            "CronExpression": spec["CronExpression"] or "", "HttpRequestUrl": spec["Http"]["RequestUrl"],
            "HttpMethod": spec["Http"]["Method"], "HttpContentType": spec["Http"]["ContentType"], **changes}
    return system.post("Edit", data=form).json()


def source_execute(src: Source, sql: str, *params) -> None:
    conn = mysql(src.url.rsplit("/", 1)[1])
    conn.cursor().execute(sql, params)
    conn.close()


# ---- the source judged alone -------------------------------------------------------------

def test_the_plan_judges_each_row_of_the_original(source):
    plan = plan_import(read_source(source.url), known_configs=KNOWN)
    items = {i.key: i for i in plan.items}
    http = items[source.HTTP]
    assert http.action == "import" and http.title == "订单同步"
    assert http.payload["keepers"] == [1, source.dev_id] and any("keepers [999, 4]" in n for n in http.notes)
    assert http.payload["nexts"] == [source.CHILD] and any("2 child task(s)" in n for n in http.notes)
    assert http.payload["executors"] == ["worker1"] and any("comes in Stopped" in n for n in http.notes)
    assert http.level == 1 and items[source.CHILD].level == 0
    assert any("Python port" in n for n in items[source.PLUGIN].notes)
    assert items[source.BAD_CRON].action == "cannot" and "invalid cron" in items[source.BAD_CRON].notes[0]
    assert items[source.NOHTTP].action == "cannot" and "schedulehttpoptions" in items[source.NOHTTP].notes[0]
    assert items[source.ODD].action == "cannot" and source.DELETED not in items
    assert items[source.CHILD].payload["customparamsjson"] == "[]"
    cycle = [items[source.CYCLE_A].payload["nexts"], items[source.CYCLE_B].payload["nexts"]]
    assert sorted(map(len, cycle)) == [0, 1], "exactly one edge of the A -> B -> A cycle is dropped"
    assert items["admin"].action == "import" and items["broken"].action == "cannot"
    assert items["ghost"].action == "skip" and "disabled" in items["ops"].notes
    assert items["Http_RequestTimeout"].action == "import" and items["Legacy_Unknown"].action == "cannot"
    assert items[source.CREATED].action == "import" and items[source.BAD_URL].action == "cannot"
    assert source.DONE not in items
    assert plan.history == {"scheduletraces": 4, "systemlogs": 3}


# ---- into a running system ---------------------------------------------------------------

def test_a_dry_run_says_what_would_happen_and_changes_nothing(source, target):
    before = task_count(target)
    r = run_import(target, "--from", source.url, "--dry-run", "--with-history")
    assert r.returncode == 3, r.stdout + r.stderr  # some rows cannot come over
    assert "what the import would do (nothing was changed)" in r.stdout
    assert "坏表达式" in r.stdout and "invalid cron" in r.stdout and "would be created" in r.stdout
    assert "3 traces of imported tasks would become runs" in r.stdout and "Next steps" in r.stdout
    assert task_count(target) == before and target.detail(source.HTTP) is None
    assert legacy(target, "GET", "Account/QueryList", headers=secret("dev", source.passwords["dev"]),
                  params={"pageNumber": 1, "pageSize": 10}).status_code == 401
    configs = {c["Key"]: c["Value"] for c in legacy(target, "GET", "System/Configs").json()["Data"]}
    assert configs["Http_RequestTimeout"] == "10" and configs["Email_SmtpServer"] == ""
    assert legacy(target, "GET", "DelayTask/QueryDetail", params={"id": source.CREATED}).json()["Data"] is None


def test_the_import_carries_tasks_users_settings_delayed_tasks_and_history(source, target, receiver):
    r = run_import(target, "--from", source.url, "--with-history")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "import summary" in r.stdout
    assert "3 traces recorded as runs (with their logs), 0 already recorded, 0 failed, 1 skipped" in r.stdout
    # tasks: the same ids and fields, Stopped until a deliberate switch-over
    d = target.detail(source.HTTP)
    assert d["Title"] == "订单同步" and d["CronExpression"] == "0/30 * * * * ?" and d["Status"] == 0
    assert d["Remark"] == "每30秒" and d["CreateTime"] == "2024-03-01 09:30:00" and d["CreateUserName"] == "admin"
    assert json.loads(d["CustomParamsJson"]) == [{"ParamKey": "shop", "ParamValue": "上海店", "ParamRemark": "门店"}]
    spec = deployment(target, source.HTTP)["parameters"]["task"]
    assert spec["Keepers"] == [1, source.dev_id] and spec["Executors"] == ["worker1"]
    assert spec["Nexts"] == [source.CHILD] and spec["TimeZone"] == TZ
    assert spec["Http"]["RequestUrl"].endswith("/orders") and spec["Http"]["Method"] == "POST"
    assert "X-Shop" in spec["Http"]["Headers"] and spec["Http"]["Body"] == '{"sync":true}'
    assert target.detail(source.PLUGIN)["AssemblyName"] == "Hos.Demo"
    nexts = [deployment(target, t)["parameters"]["task"]["Nexts"] for t in (source.CYCLE_A, source.CYCLE_B)]
    assert sorted(map(len, nexts)) == [0, 1]
    for gone in (source.BAD_CRON, source.NOHTTP, source.ODD, source.DELETED):
        assert target.detail(gone) is None
    # users: stored hashes kept, so secrets computed the original way work; ids kept
    accounts = legacy(target, "GET", "Account/QueryList", headers=secret("dev", source.passwords["dev"]),
                      params={"pageNumber": 1, "pageSize": 50}).json()
    assert accounts["Success"], accounts
    by_name = {u["UserName"]: u for u in accounts["Data"]["rows"]}
    assert by_name["dev"]["Id"] == source.dev_id and by_name["ops"]["Status"] == 0
    assert "ghost" not in by_name and "broken" not in by_name
    assert legacy(target, "GET", "Task/QueryList", headers=secret("ops", source.passwords["ops"]),
                  params={"pageNumber": 1, "pageSize": 1}).status_code == 401  # disabled
    # settings: valid ones carried, an invalid one reported and left alone
    configs = {c["Key"]: c["Value"] for c in legacy(target, "GET", "System/Configs").json()["Data"]}
    assert configs["Http_RequestTimeout"] == "20" and configs["DelayTask_RetryTimes"] == "2"
    assert configs["DelayTask_RetrySpans"] == "10" and "DelayTask_RetrySpans" in r.stdout
    # delayed tasks: same ids, due times kept; the overdue one fires at once, the next on time
    late = receiver.wait_for("/late", 1, timeout=60)
    assert late[0].headers["idempotency-key"] == source.READY_LATE
    soon = receiver.wait_for("/soon", 1, timeout=90)
    assert soon[0].headers["idempotency-key"] == source.SOON and json.loads(soon[0].body) == {"orderNo": "A5"}
    created = legacy(target, "GET", "DelayTask/QueryDetail", params={"id": source.CREATED}).json()["Data"]
    assert created["Status"] == 2 and created["Topic"] == "订单超时"
    due = datetime.fromisoformat(created["NextAttemptTime"].replace(" ", "T"))
    assert abs((due - (datetime.fromisoformat(created["CreateTime"].replace(" ", "T")) + timedelta(hours=1)))
               .total_seconds()) < 2
    for gone in (source.BAD_URL, source.DONE, source.BAD_FORM):
        assert legacy(target, "GET", "DelayTask/QueryDetail", params={"id": gone}).json()["Data"] is None
    # history: traces are runs of their task, with the original's log lines
    runs = {r["name"]: r for r in target.flow_runs(source.HTTP)}
    assert sorted(r["state_type"] for r in runs.values()) == ["COMPLETED", "FAILED", "FAILED"]
    failed = next(r for r in runs.values() if r["state"]["message"] == "imported: failed in the original")
    text = "\n".join(target.run_logs(failed["id"]))
    assert "请求失败：连接超时" in text and "System.TimeoutException" in text
    assert target.detail(source.HTTP)["TotalRunCount"] == 1


def accounts(system: System) -> list[dict]:
    return legacy(system, "GET", "Account/QueryList", params={"pageNumber": 1, "pageSize": 100}).json()["Data"]["rows"]


def test_running_it_again_duplicates_nothing(source, target, tmp_path):
    tasks = task_count(target)
    runs = len(target.flow_runs(source.HTTP))
    users = accounts(target)
    r = run_import(target, "--from", source.url, "--with-history", "--report", str(tmp_path / "r.json"))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "0 traces recorded as runs (with their logs), 3 already recorded" in r.stdout
    assert task_count(target) == tasks and len(target.flow_runs(source.HTTP)) == runs
    assert accounts(target) == users and "Иван" in {u["UserName"] for u in users}
    outcomes = {(i["kind"], i["action"]) for i in json.loads((tmp_path / "r.json").read_text())["items"]
                if i["kind"] in ("task", "user", "setting", "delayed")}
    assert outcomes <= {(k, a) for k in ("task", "user", "setting", "delayed") for a in ("kept", "cannot", "skip",
                                                                                         "failed")}
    assert ("task", "kept") in outcomes and ("user", "kept") in outcomes
    rows = legacy(target, "GET", "DelayTask/QueryList", params={"pageNumber": 1, "pageSize": 100,
                                                                "sourceApp": "shop"}).json()["Data"]
    assert rows["total"] == 3


def test_changes_are_updated_and_changes_on_both_sides_are_conflicts(source, target):
    source_execute(source, "UPDATE schedules SET title = %s WHERE id = %s", "子任务（新）", source.CHILD)
    # pausing a task in the original is not an edit: with an edit here it is no conflict
    source_execute(source, "UPDATE schedules SET status = 2 WHERE id = %s", source.CYCLE_A)
    assert edit(target, source.CYCLE_A, Title="循环A（这里改）")["Success"]
    assert edit(target, source.PAUSED, Title="这里改的")["Success"]
    source_execute(source, "UPDATE schedules SET title = %s WHERE id = %s", "循环B（原系统改）", source.CYCLE_B)
    assert edit(target, source.CYCLE_B, Title="循环B（这里改）")["Success"]
    r = run_import(target, "--from", source.url)
    assert r.returncode == 3
    assert target.detail(source.CHILD)["Title"] == "子任务（新）"          # changed there: updated
    assert target.detail(source.PAUSED)["Title"] == "这里改的"              # changed here: kept
    assert target.detail(source.CYCLE_B)["Title"] == "循环B（这里改）"      # both: conflict
    row = next(line for line in r.stdout.splitlines() if source.CYCLE_B in line)
    assert "conflict" in row and "changed in the original and here" in row
    assert target.detail(source.CYCLE_A)["Title"] == "循环A（这里改）"
    assert "conflict" not in next(line for line in r.stdout.splitlines() if source.CYCLE_A in line)
    r = run_import(target, "--from", source.url, "--overwrite")
    assert target.detail(source.CYCLE_B)["Title"] == "循环B（原系统改）"
    assert target.detail(source.PAUSED)["Title"] == "这里改的"  # a change made only here stays
    r = run_import(target, "--from", source.url)
    assert "conflict" not in r.stdout.split("items that need attention")[-1]


def test_start_switches_over_to_this_system(source, target, receiver, tmp_path):
    r = run_import(target, "--from", source.url, "--start", "--report", str(tmp_path / "report.json"))
    assert r.returncode == 3, r.stdout + r.stderr
    report = {i["key"]: "; ".join(i["notes"]) + " | " + i["action"]
              for i in json.loads((tmp_path / "report.json").read_text())["items"]}
    assert target.detail(source.HTTP)["Status"] == 1
    assert target.detail(source.PAUSED)["Status"] == 2
    assert target.detail(source.PORTED)["Status"] == 1    # a Python port on the nodes: started
    # pinned to worker9, a node this system does not know: named, not started (it would never fire)
    assert target.detail(source.PLUGIN)["Status"] == 0
    assert "does not know: worker9" in report[source.PLUGIN] and "not started: none of its nodes" in report[source.PLUGIN]
    assert "1 task(s) pinned to nodes this system does not know" in r.stdout and "--map-node worker9=" in r.stdout
    assert report[source.HTTP].endswith("; started | kept") or report[source.HTTP].endswith("; started | created")
    assert "started and paused, as in the original" in report[source.PAUSED]
    hit = receiver.wait_for("/orders", 1, timeout=45)[0]  # the imported HTTP task fires here
    assert hit.headers["x-shop"] == "sh" and json.loads(hit.body) == {"sync": True}
    wait_until(lambda: target.detail(source.HTTP)["TotalRunCount"] >= 2, timeout=60)


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("url,needle", [
    ("mysql://root@127.0.0.1:1/none", "cannot read"),
    ("mysql://root@127.0.0.1:3306/information_schema", "not the ScheduleMaster schema"),
    ("not a url", "not a database URL"),
    ("oracle://x@y/z", "cannot use"),
    ("mssql://sa:pw@127.0.0.1:1/schedule_master", "cannot read"),  # the driver is there; no server here
])
def test_unreadable_sources_are_reported(url, needle):
    with pytest.raises(SourceError) as exc:
        read_source(url, timeout=3)
    assert needle in str(exc.value)
    r = run_import(None, "--from", url, "--dry-run")
    assert r.returncode == 1 and needle in r.stderr


def test_a_schema_of_another_version_is_refused_before_anything_is_read():
    admin = mysql()
    db = f"sm_src_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    try:
        conn = mysql(db)
        for statement in filter(str.strip, MYSQL_SCHEMA.split(";")):
            conn.cursor().execute(statement)
        conn.cursor().execute("ALTER TABLE schedules DROP COLUMN customparamsjson")  # as db.sql of v1 had it
        conn.cursor().execute("DROP TABLE scheduledelayeds")
        with pytest.raises(SourceError) as exc:
            read_source(f"mysql://root@127.0.0.1:3306/{db}")
        assert "not the ScheduleMaster schema" in str(exc.value)
        assert "schedules" in str(exc.value) and "scheduledelayeds" in str(exc.value)
    finally:
        admin.cursor().execute(f"DROP DATABASE {db}")


@pytest.mark.parametrize("exists,ledger,source,would,target,overwrite,action", [
    (False, None, "s1", "w1", None, False, "create"),             # first import
    (True, None, "s1", "w1", "w1", False, "keep"),                # already equal here
    (True, None, "s1", "w1", "t0", False, "update"),              # here before the import: the original wins
    (True, ("s1", "t1"), "s1", "w1", "t1", False, "keep"),        # nothing changed
    (True, ("s1", "t1"), "s1", "w1", "t2", False, "keep"),        # changed here only: stays
    (True, ("s1", "t1"), "s2", "w2", "t1", False, "update"),      # changed there only
    (True, ("s1", "t1"), "s2", "w2", "t2", False, "conflict"),    # both
    (True, ("s1", "t1"), "s2", "w2", "t2", True, "update"),       # both, --overwrite
    (True, ("s1", "t1"), "s2", "w2", "w2", False, "update"),      # both, to the same values
    (False, ("s1", "t1"), "s1", "w1", None, False, "conflict"),   # deleted here
    (False, ("s1", "t1"), "s1", "w1", None, True, "create"),      # deleted here, --overwrite
])
def test_the_three_way_decision(exists, ledger, source, would, target, overwrite, action):
    from schedulemaster.ms_compat.import_target import ImportLedger, decide

    row = ImportLedger(kind="task", key="k", sourcefp=ledger[0], targetfp=ledger[1]) if ledger else None
    assert decide(exists, row, source, would, target, overwrite)[0] == action


def test_a_target_that_is_down_changes_nothing_and_says_so(source, tmp_path):
    r = run_import(None, "--from", source.url, "--target", "http://127.0.0.1:1/api")
    assert r.returncode == 1 and "is not reachable" in r.stderr and "nothing was changed" in r.stderr
    r = run_import(None, "--from", source.url, "--target", "http://127.0.0.1:1/api", "--dry-run")
    assert r.returncode == 3 and "judges the original's rows only" in r.stdout
    r = run_import(None, "--from", source.url, "--source-timezone", "Mars/Olympus")
    assert r.returncode == 2 and "unknown time zone" in r.stderr
    r = run_import(None, "--from", source.url, "--report", str(tmp_path / "no" / "such" / "r.json"))
    assert r.returncode == 2 and "--report" in r.stderr


def import_post(system: System, kind: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return system.pf("POST", f"/schedulemaster/import/{kind}", content=content, timeout=60,
                      headers={"content-type": "application/json"}, **kw)


def task_item(**fields) -> dict:
    return {"id": str(uuid.uuid4()), "title": "t", "metatype": 2, "runloop": True, "cronexpression": "0 0 * * * ?",
            "status": 0, "createtime": "2024-01-01T00:00:00", "requesturl": "http://127.0.0.1:9/x",
            "method": "GET", "contenttype": "text/plain", **fields}


@pytest.mark.parametrize("kind,body", [
    ("tasks", {"items": []} | {"options": {"dry_run": "maybe"}}),
    ("tasks", b"{not json"),
    ("tasks", {"items": [task_item(id="not-a-guid")]}),
    ("tasks", {"items": [task_item(title="x" * 101)]}),
    ("tasks", {"items": [task_item(surprise=1)]}),
    ("tasks", {"items": [task_item() for _ in range(501)]}),
    ("tasks", {"items": [task_item()], "options": {"timezone": "Mars/Olympus"}}),
    ("users", {"items": [{"username": "eve", "password": "plaintext", "realname": "e", "status": 1,
                          "createtime": "2024-01-01T00:00:00"}]}),
    ("users", {"items": [{"id": -5, "username": "eve", "password": "0" * 32, "realname": "e", "status": 1,
                          "createtime": "2024-01-01T00:00:00"}]}),
    ("delayed", {"items": [{"id": str(uuid.uuid4()), "sourceapp": "a", "topic": "t", "contentkey": "k",
                            "createtime": "2024-01-01T00:00:00", "status": 3, "notifyurl": "http://x/",
                            "notifydatatype": "application/json", "notifybody": "{}"}]}),
    ("history", {"items": [{"traceid": str(uuid.uuid4()), "scheduleid": str(uuid.uuid4()),
                            "starttime": "2024-01-01T00:00:00", "logs": [{"message": "m"}]}]}),
    ("nothing", {"items": []}),
    ("history", b"[" + b" " * (64 * 1024 * 1024) + b"]"),  # over the body limit: 413
])
def test_the_import_endpoints_refuse_malformed_bodies_whole(target, kind, body):
    before = task_count(target), accounts(target)
    r = import_post(target, kind, body)
    expected = 404 if kind == "nothing" else 413 if isinstance(body, bytes) and len(body) > 1000 else 422
    assert r.status_code == expected, r.text
    assert (task_count(target), accounts(target)) == before


def test_a_delayed_row_that_cannot_fire_is_refused_alone(target):
    base = {"sourceapp": "a", "topic": "t", "contentkey": "k", "createtime": "2024-01-01T00:00:00", "status": 2,
            "notifyurl": "http://127.0.0.1:9/cb", "notifydatatype": "application/json", "notifybody": "{}"}
    no_time = {**base, "id": str(uuid.uuid4()), "pattern": "Absolute"}
    huge_span = {**base, "id": str(uuid.uuid4()), "delaytimespan": 2**31 - 1}
    r = import_post(target, "delayed", {"items": [no_time, huge_span]})
    assert r.status_code == 200, r.text
    first, second = r.json()["outcomes"]
    assert first["action"] == "failed" and "DelayAbsoluteTime" in first["message"]
    assert second["action"] == "created"
    assert legacy(target, "GET", "DelayTask/QueryDetail", params={"id": no_time["id"]}).json()["Data"] is None


def test_a_hostile_row_is_refused_and_the_rest_of_its_batch_goes_on(target):
    bad = task_item(requesturl="javascript:alert(1)", title="<script>")
    nul = task_item(title="nul\x00title")
    good = task_item(title="import 好的")
    r = import_post(target, "tasks", {"items": [bad, nul, good]})
    assert r.status_code == 200, r.text
    outcomes = r.json()["outcomes"]
    assert outcomes[0]["action"] == "failed" and "HttpRequestUrl" in outcomes[0]["message"]
    assert outcomes[1]["action"] == "failed"
    assert outcomes[2]["action"] == "created" and target.detail(good["id"])["Title"] == "import 好的"
    assert target.detail(bad["id"]) is None and target.detail(nul["id"]) is None


# ---- from PostgreSQL, into a system whose store is on PostgreSQL -----------------------------

@pytest.fixture(scope="module")
def pg_source(receiver):
    db = f"sm_src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    src = Source(url=f"postgresql://postgres@127.0.0.1:5432/{db}")
    src.passwords["admin"] = "原系统的密码"  # the original's admin had changed the default
    with psycopg.connect(src.url, autocommit=True) as conn:  # this original ran on UTC wall clocks
        fill(conn.cursor(), POSTGRES_SCHEMA, src, receiver.url("/pg"), datetime.utcnow(), quote='"')
    yield src
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_target(tmp_path_factory):
    db = f"sm_test_{uuid.uuid4().hex[:8]}"
    s = System(tmp_path_factory.mktemp("sm-import-pg"), timezone=TZ,
               env={"SM_STORE_URL": f"postgresql://postgres@127.0.0.1:5432/{db}"}).start()
    yield s
    s.stop()
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_the_same_import_from_postgresql_into_a_postgresql_store(pg_source, pg_target, receiver):
    r = run_import(pg_target, "--from", pg_source.url, "--with-history", "--source-timezone", "UTC")
    assert r.returncode == 3, r.stdout + r.stderr
    # the admin secret computed the original way (from the original's password) works; the default does not
    admin = secret("admin", pg_source.passwords["admin"])
    assert legacy(pg_target, "GET", "Task/QueryList", headers={**AUTH}, params={"pageNumber": 1, "pageSize": 1}
                  ).status_code == 401
    listing = legacy(pg_target, "GET", "Task/QueryList", headers=admin, params={"pageNumber": 1, "pageSize": 10})
    assert listing.status_code == 200 and listing.json()["total"] == 7
    d = legacy(pg_target, "GET", "Task/QueryTaskDetail", headers=admin, params={"id": pg_source.HTTP}).json()["Data"]
    assert d["Title"] == "订单同步" and d["CreateTime"] == "2024-03-01 09:30:00"
    assert deployment(pg_target, pg_source.HTTP)["parameters"]["task"]["Keepers"] == [1, pg_source.dev_id]
    dev = secret("dev", pg_source.passwords["dev"])
    assert legacy(pg_target, "GET", "Task/QueryList", headers=dev,
                  params={"pageNumber": 1, "pageSize": 1}).json()["total"] == 7
    # an explicit id moved PostgreSQL's sequence: the next account does not collide with dev (7)
    made = legacy(pg_target, "POST", "Account/Create", headers=dev,
                  data={"UserName": "newcomer", "RealName": "新人", "Password": "secret-1"}).json()
    assert made["Success"], made
    ids = [u["Id"] for u in legacy(pg_target, "GET", "Account/QueryList", headers=dev,
                                   params={"pageNumber": 1, "pageSize": 50}).json()["Data"]["rows"]]
    assert len(ids) == len(set(ids)) and max(ids) > 8  # dev is 7, Иван 8
    assert receiver.wait_for("/pg/late", 1, timeout=60)[0].headers["idempotency-key"] == pg_source.READY_LATE
    created = legacy(pg_target, "GET", "DelayTask/QueryDetail", headers=admin,
                     params={"id": pg_source.CREATED}).json()["Data"]
    assert created["Status"] == 2 and created["ContentKey"] == "A2"
    # due an hour after its (UTC) creation, shown in this system's zone
    due = datetime.fromisoformat(created["NextAttemptTime"].replace(" ", "T")).replace(tzinfo=ZoneInfo(TZ))
    expected = datetime.now(ZoneInfo("UTC")) + timedelta(hours=1)
    assert abs((due - expected).total_seconds()) < 120, (due, expected)
    assert len(pg_target.flow_runs(pg_source.HTTP)) == 3
    r = run_import(pg_target, "--from", pg_source.url, "--with-history", "--source-timezone", "UTC")
    assert "3 already recorded" in r.stdout and len(pg_target.flow_runs(pg_source.HTTP)) == 3
    names = [u["UserName"] for u in legacy(pg_target, "GET", "Account/QueryList", headers=dev,
                                           params={"pageNumber": 1, "pageSize": 50}).json()["Data"]["rows"]]
    assert names.count("Иван") == 1


def test_the_import_door_is_guarded_by_prefects_auth_string(source, tmp_path):
    """Whoever can import can write accounts and tasks: with PREFECT_SERVER_API_AUTH_STRING set,
    the import endpoints answer only to the same credentials (as the firing recorder does)."""
    auth = "importer:s3cret"
    s = System(tmp_path / "data", timezone=TZ,
               env={"PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}).start()
    try:
        unauthenticated = httpx.post(f"{s.prefect}/schedulemaster/import/settings", json={"items": []}, timeout=60)
        assert unauthenticated.status_code == 401
        r = run_import(s, "--from", source.url, "--dry-run", env={"PREFECT_API_AUTH_STRING": "importer:wrong"})
        assert r.returncode == 3 and "refused the credentials" in r.stdout
        r = run_import(s, "--from", source.url, env={"PREFECT_API_AUTH_STRING": "importer:wrong"})
        assert r.returncode == 1 and "refused the credentials" in r.stderr
        assert s.detail(source.HTTP) is None
        r = run_import(s, "--from", source.url, env={"PREFECT_API_AUTH_STRING": auth})
        assert r.returncode == 3, r.stdout + r.stderr
        assert s.detail(source.HTTP)["Title"] == "订单同步"
    finally:
        s.stop()


def test_a_non_ascii_auth_string_is_refused_before_anything_starts(tmp_path):
    import os

    r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "up", "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PREFECT_SERVER_API_AUTH_STRING": "u:密码"})
    assert r.returncode == 2 and "must be ASCII" in r.stderr and not (tmp_path / "d").exists()


# ---- nodes of the original that this system does not have ----------------------------------

@pytest.mark.parametrize("pair,says", [
    ("worker9", "give OLD=NEW"), ("=worker1", "give OLD=NEW"), ("worker9=", "give OLD=NEW"),
    ("worker9=a,b", "no comma"), ("worker9=" + "w" * 101, "100 characters"), ("a=b=c", "no comma"),
    ("worker9=a\tb", "control character"),
])
def test_a_bad_node_mapping_is_refused_before_anything_is_read(pair, says):
    r = run_import(None, "--from", "mysql://root@127.0.0.1:1/never-read", "--map-node", pair)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "reading" not in r.stdout


def test_two_mappings_of_one_node_are_refused():
    r = run_import(None, "--from", "mysql://root@127.0.0.1:1/never-read", "--map-node", "w9=a", "--map-node", "w9=b")
    assert r.returncode == 2 and "already mapped to a" in r.stderr


def test_a_task_pinned_to_an_unknown_node_is_renamed_by_map_node(source, target, tmp_path):
    """Last in this module: it changes what earlier tests imported."""
    r = run_import(target, "--from", source.url, "--map-node", "worker9=worker1", "--report", str(tmp_path / "r.json"))
    items = {i["key"]: i for i in json.loads((tmp_path / "r.json").read_text())["items"]}
    assert items[source.PLUGIN]["unknown_nodes"] == [] and "nodes renamed: worker9 -> worker1" in \
        "; ".join(items[source.PLUGIN]["notes"]), items[source.PLUGIN]
    assert deployment(target, source.PLUGIN)["parameters"]["task"]["Executors"] == ["worker1"]
    assert "pinned to nodes this system does not know" not in r.stdout
    # imported again with the same mapping: nothing to change
    r = run_import(target, "--from", source.url, "--map-node", "worker9=worker1", "--report", str(tmp_path / "r2.json"))
    again = {i["key"]: i for i in json.loads((tmp_path / "r2.json").read_text())["items"]}
    assert again[source.PLUGIN]["action"] == "kept", again[source.PLUGIN]


def test_the_report_prints_the_originals_text_as_text(tmp_path):
    """Titles, notes and node names from the original are not rich markup: a title '[/x]' once
    stopped the report with a MarkupError after the import had written everything."""
    import io

    from rich.console import Console

    from schedulemaster.cli.import_cli import _report
    from schedulemaster.ms_compat.legacy_import import Item, Plan

    plan = Plan(items=[Item("task", "k1", "[/x] 夜间 [bold]对账", "failed", ["note [/y]"], unknown_nodes=["[/z]"])])
    out = io.StringIO()
    _report(Console(file=out, width=200), plan, dry_run=False, history=False, applied=True,
            path=tmp_path / "r.json")
    assert "[/x] 夜间 [bold]对账" in out.getvalue() and "note [/y]" in out.getvalue()
    assert json.loads((tmp_path / "r.json").read_text())["items"][0]["unknown_nodes"] == ["[/z]"]
