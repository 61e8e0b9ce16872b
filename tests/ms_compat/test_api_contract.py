"""The legacy Task API against a real running system: shapes, messages, status machine, bad input."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
import pytest

from helpers import ADMIN_SECRET, AUTH, dotnet_form, md5
from schedulemaster.store.db import Store, SystemUser

pytestmark = pytest.mark.e2e

# The two C# requests of the original's docs (docs/2-使用API接入任务.md), field for field.
TODAY = datetime.now().strftime("%Y-%m-%d 00:00:00")
ASSEMBLY_FORM = [
    ("MetaType", "1"), ("RunLoop", "true"), ("CronExpression", "33 0/8 * * * ?"),
    ("Remark", "By Xunit Tester Created"), ("StartDate", TODAY), ("Title", "程序集接口测试任务"),
    ("AssemblyName", "Hos.ScheduleMaster.Demo"), ("ClassName", "Hos.ScheduleMaster.Demo.Simple"),
    ("CustomParamsJson", '[{"ParamKey":"k1","ParamValue":"1111","ParamRemark":"r1"},'
                         '{"ParamKey":"k2","ParamValue":"2222","ParamRemark":"r2"}]'),
    ("Keepers", "1"), ("Keepers", "2"),
]
HTTP_FORM = [
    ("MetaType", "2"), ("RunLoop", "true"), ("CronExpression", "22 0/8 * * * ?"),
    ("Remark", "By Xunit Tester Created"), ("StartDate", TODAY), ("Title", "Http接口测试任务"),
    ("HttpRequestUrl", "http://localhost:56655/api/1.0/value/jsonpost"), ("HttpMethod", "POST"),
    ("HttpContentType", "application/json"), ("HttpHeaders", "[]"),
    ("HttpBody", '{ "Posts": [{ "PostId": 666, "Title": "tester", "Content":"testtesttest" }], '
                 '"BlogId": 111, "Url":"qweqrrttryrtyrtrtrt" }'),
]
DOTNET_HEADERS = {"ms_auth_user": "admin",
                  "ms_auth_secret": md5("admin" + md5("111111") + "admin"),
                  "Content-Type": "application/x-www-form-urlencoded"}


def send_dotnet(system, form):
    return httpx.post(f"{system.api}/api/Task/Create", content=dotnet_form(form), headers=DOTNET_HEADERS,
                      timeout=30)


def total(system) -> int:
    return system.get("QueryList", {"pageNumber": 1, "pageSize": 1}).json()["total"]


def test_admin_secret_is_computed_the_original_way():
    assert md5("admin" + md5("111111") + "admin") == ADMIN_SECRET == "811a5cb95196217ed3fda54cf73b9244"


def test_csharp_assembly_create_replayed_byte_for_byte(system):
    r = send_dotnet(system, ASSEMBLY_FORM)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert set(body) == {"Success", "Status", "Message", "Data"}
    assert body["Success"] is True and body["Status"] == 1 and body["Message"] == "任务创建成功!"
    task_id = str(uuid.UUID(body["Data"]))
    assert "\\u4efb\\u52a1" in r.text  # non-ASCII escaped, as System.Text.Json wrote it
    d = system.detail(task_id)
    assert d["Id"] == task_id and d["Title"] == "程序集接口测试任务" and d["MetaType"] == 1
    assert d["RunLoop"] is True and d["CronExpression"] == "33 0/8 * * * ?"
    assert d["AssemblyName"] == "Hos.ScheduleMaster.Demo" and d["ClassName"] == "Hos.ScheduleMaster.Demo.Simple"
    assert d["CustomParamsJson"] == dict(ASSEMBLY_FORM)["CustomParamsJson"]
    assert d["Remark"] == "By Xunit Tester Created" and d["Status"] == 0
    assert d["StartDate"] == TODAY.replace(" ", "T") and d["EndDate"] is None
    assert d["CreateUserName"] == "admin" and d["CreateUserId"] == 1
    assert d["TotalRunCount"] == 0 and d["LastRunTime"] is None and d["NextRunTime"] is None
    datetime.strptime(d["CreateTime"], "%Y-%m-%d %H:%M:%S")
    # the deployment carries the rest (keepers are not in the entity view)
    dep = system.pf("GET", f"/deployments/{task_id}").json()
    assert dep["name"] == "程序集接口测试任务"
    assert dep["parameters"]["task"]["Keepers"] == [1, 2]


def test_csharp_http_create_replayed_byte_for_byte(system):
    r = send_dotnet(system, HTTP_FORM)
    body = r.json()
    assert body == {"Success": True, "Status": 1, "Message": "任务创建成功!", "Data": body["Data"]}
    d = system.detail(body["Data"])
    assert d["MetaType"] == 2 and d["Title"] == "Http接口测试任务" and d["AssemblyName"] is None
    dep = system.pf("GET", f"/deployments/{body['Data']}").json()
    http = dep["parameters"]["task"]["Http"]
    assert http == {"RequestUrl": "http://localhost:56655/api/1.0/value/jsonpost", "Method": "POST",
                    "ContentType": "application/json", "Headers": "[]", "Body": dict(HTTP_FORM)["HttpBody"]}
    assert dep["paused"] is True and "sm:stopped" in dep["tags"]


# ---- auth ---------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {}, {"ms_auth_user": "admin"}, {"ms_auth_secret": ADMIN_SECRET},
    {"ms_auth_user": "admin", "ms_auth_secret": ADMIN_SECRET.upper()},
    {"ms_auth_user": "admin", "ms_auth_secret": "x" * 5000},
    {"ms_auth_user": "nobody", "ms_auth_secret": md5("nobody" + md5("111111") + "nobody")},
    {"ms_auth_user": "admin' OR '1'='1", "ms_auth_secret": ADMIN_SECRET},
])
def test_bad_credentials_get_401_problem_details(system, headers):
    r = system.get("QueryList", {"pageNumber": 1, "pageSize": 10}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["status"] == 401 and p["title"] == "Unauthorized"
    assert p["type"] == "https://tools.ietf.org/html/rfc7235#section-3.1"


def test_disabled_user_gets_401_and_available_user_passes(system):
    store = Store(f"sqlite:///{system.data_dir.resolve() / 'schedulemaster.db'}")
    from sqlmodel import Session

    with Session(store.engine) as s:
        s.add(SystemUser(username="ops", password=md5("pw1"), realname="Ops", status=1))
        s.add(SystemUser(username="gone", password=md5("pw2"), realname="Gone", status=0))
        s.commit()
    ok = {"ms_auth_user": "ops", "ms_auth_secret": md5("ops" + md5("pw1") + "ops")}
    assert system.get("QueryList", {"pageNumber": 1, "pageSize": 1}, headers=ok).status_code == 200
    off = {"ms_auth_user": "gone", "ms_auth_secret": md5("gone" + md5("pw2") + "gone")}
    assert system.get("QueryList", {"pageNumber": 1, "pageSize": 1}, headers=off).status_code == 401


def test_validation_runs_before_auth(system):
    r = system.post("Create", data={"MetaType": "2"}, headers={})
    assert r.status_code == 400 and r.json()["errors"]["Title"] == ["The Title field is required."]


# ---- validation (400 ValidationProblemDetails) ---------------------------------------

BASE = {"Title": "v", "MetaType": "2", "RunLoop": "true", "CronExpression": "0/5 * * * * ?",
        "HttpRequestUrl": "http://127.0.0.1:9/x", "HttpMethod": "POST", "HttpContentType": "application/json"}


@pytest.mark.parametrize("change,key,message", [
    ({"Title": None}, "Title", "The Title field is required."),
    ({"Title": ""}, "Title", "The Title field is required."),
    ({"Title": "   "}, "Title", "The Title field is required."),
    ({"Title": "x" * 101}, "Title", "The field Title must be a string or array type with a maximum length of '100'."),
    ({"Remark": "r" * 501}, "Remark", "The field Remark must be a string or array type with a maximum length of '500'."),
    ({"CronExpression": "0 " * 30}, "CronExpression", None),
    ({"HttpRequestUrl": "http://a/" + "b" * 500}, "HttpRequestUrl", None),
    ({"HttpBody": "{" * 2001}, "HttpBody", None),
    ({"MetaType": "abc"}, "MetaType", "The value 'abc' is not valid for MetaType."),
    ({"MetaType": "99999999999"}, "MetaType", None),
    ({"MetaType": ""}, "MetaType", "The value '' is invalid."),
    ({"RunLoop": "yes"}, "RunLoop", "The value 'yes' is not valid for RunLoop."),
    ({"StartDate": "2026-02-30"}, "StartDate", "The value '2026-02-30' is not valid for StartDate."),
    ({"EndDate": "tomorrow"}, "EndDate", None),
    ({"Keepers": "one"}, "Keepers", "The value 'one' is not valid for Keepers."),
    ({"Nexts": "not-a-guid"}, "Nexts", None),
    ({"RunNow": "1"}, "RunNow", None),
])
def test_invalid_models_get_400_and_change_nothing(system, change, key, message):
    before = total(system)
    data = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    r = system.post("Create", data=data)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["title"] == "One or more validation errors occurred." and p["status"] == 400
    assert p["type"] == "https://tools.ietf.org/html/rfc7231#section-6.5.1"
    assert key in p["errors"]
    if message:
        assert p["errors"][key] == [message]
    assert total(system) == before


def test_json_body_binds_nothing(system):
    r = httpx.post(f"{system.api}/api/Task/Create", json=BASE, headers=AUTH)
    assert r.status_code == 400 and "Title" in r.json()["errors"]


@pytest.mark.parametrize("body,ctype", [
    (b"--xx\r\nContent-Disposition: form-data; name=\"Title\"\r\n\r\nbroken", "multipart/form-data; boundary=xx"),
    (b"\xff\xfe\x00garbage=%%%", "application/x-www-form-urlencoded"),
])
def test_malformed_bodies_are_400_not_500(system, body, ctype):
    r = httpx.post(f"{system.api}/api/Task/Create", content=body, headers={**AUTH, "Content-Type": ctype})
    assert r.status_code == 400


def test_oversized_body_is_refused(system):
    before = total(system)
    r = system.post("Create", data={**BASE, "Remark": "x" * (2 * 1024 * 1024)})
    assert r.status_code == 413
    assert total(system) == before


# ---- business refusals (envelope, Success:false) -------------------------------------

@pytest.mark.parametrize("change,needle", [
    ({"MetaType": "3"}, "MetaType"),
    ({"MetaType": "0"}, "MetaType"),
    ({"CronExpression": None}, "cron"),
    ({"CronExpression": "0 0 12 * * *"}, "field 6"),
    ({"CronExpression": "every day"}, "cron"),
    ({"HttpRequestUrl": None}, "HttpRequestUrl"),
    ({"HttpRequestUrl": "file:///etc/passwd"}, "HttpRequestUrl"),
    ({"HttpMethod": "GE T"}, "HttpMethod"),
    ({"HttpContentType": "application/x-www-form-urlencoded", "HttpBody": "a=1"}, "HttpBody"),
    ({"HttpHeaders": "{not json"}, "HttpHeaders"),
    ({"CustomParamsJson": "{\"k\":1}"}, "CustomParamsJson"),
    ({"StartDate": "2026-12-02", "EndDate": "2026-12-01"}, "EndDate"),
    ({"Nexts": str(uuid.uuid4())}, "子任务不存在"),
    ({"Executors": "a/b"}, "节点名称"),
])
def test_nonsense_is_refused_with_a_clear_message(system, change, needle):
    before = total(system)
    data = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    body = system.post("Create", data=data).json()
    assert body["Success"] is False and body["Status"] == 0 and needle in body["Message"], body
    assert body["Data"] is None
    assert total(system) == before


def test_assembly_task_needs_assembly_and_class(system):
    body = system.post("Create", data={"Title": "a", "MetaType": "1", "RunLoop": "false"}).json()
    assert body["Success"] is False and "AssemblyName" in body["Message"]


@pytest.mark.parametrize("title", [
    "Robert'); DROP TABLE schedules;--", "<script>alert(1)</script>", "a/b%c&d>e<f", "名字 with ☃ and \t tab",
    "{{ event.resource.name }}",
])
def test_hostile_titles_are_stored_verbatim(system, title):
    body = system.post("Create", data={**BASE, "Title": title}).json()
    assert body["Success"], body
    assert system.detail(body["Data"])["Title"] == title


# ---- the status machine and every message of the TaskController---------------------------------

def test_status_machine_and_messages(system, receiver):
    tid = system.create_http(receiver.url("/machine"), cron="0 0 3 * * ?", Title="machine")
    act = lambda a, i=tid: system.post(a, data={"id": i}).json()  # noqa: E731
    unknown = str(uuid.uuid4())
    assert act("Start", unknown) == {"Success": False, "Status": 0, "Message": "任务信息不能为空！", "Data": None}
    assert act("Pause")["Message"] == "当前任务状态下不能暂停!"
    assert act("Resume")["Message"] == "当前任务状态下不能恢复运行!"
    assert act("RunOnce")["Message"] == "任务不在运行状态下!"
    assert act("Stop")["Message"] == "当前任务状态下不能停止!"
    assert act("Start") == {"Success": True, "Status": 1, "Message": "任务启动成功!", "Data": None}
    d = system.detail(tid)
    assert d["Status"] == 1 and d["NextRunTime"] is not None and len(d["NextFireTimes"]) == 5
    assert d["NextFireTimes"][0].endswith("03:00:00")
    assert act("Start")["Message"] == "任务在停止状态下才能启动！"
    assert act("Delete")["Message"] == "当前任务状态下不能删除!"
    edit = system.post("Edit", data={**BASE, "Id": tid}).json()
    assert edit["Message"] == "在停止状态下才能编辑任务信息!"
    assert act("Pause") == {"Success": True, "Status": 1, "Message": "任务暂停成功!", "Data": None}
    d = system.detail(tid)
    assert d["Status"] == 2 and d["NextRunTime"] is None
    assert system.pf("GET", f"/deployments/{tid}").json()["paused"] is True
    assert act("Pause")["Message"] == "当前任务状态下不能暂停!"
    assert act("RunOnce")["Message"] == "任务不在运行状态下!"
    assert act("Resume")["Message"] == "任务恢复成功!"
    assert system.detail(tid)["Status"] == 1
    assert act("Resume")["Message"] == "当前任务状态下不能恢复运行!"
    assert act("Stop")["Message"] == "任务已停止运行!"
    assert system.detail(tid)["Status"] == 0
    assert act("Stop")["Message"] == "当前任务状态下不能停止!"
    # Edit in Stop, including the title (the deployment's name follows)
    edit = system.post("Edit", data={**BASE, "Id": tid, "Title": "machine renamed"}).json()
    assert edit == {"Success": True, "Status": 1, "Message": "任务编辑成功!", "Data": None}
    assert system.detail(tid)["Title"] == "machine renamed"
    assert system.pf("GET", f"/deployments/{tid}").json()["name"] == "machine renamed"
    assert system.post("Edit", data={**BASE, "Id": unknown}).json()["Message"] == "任务不存在!"
    assert act("Delete") == {"Success": True, "Status": 1, "Message": "任务已删除!", "Data": None}
    assert system.detail(tid) is None
    assert act("Delete")["Message"] == "当前任务状态下不能删除!"


def test_end_date_in_the_past_refuses_start(system):
    past = (datetime.now() - timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    tid = system.post("Create", data={**BASE, "Title": "expired", "StartDate": "2020-01-01",
                                      "EndDate": past}).json()["Data"]
    assert system.post("Start", data={"id": tid}).json()["Message"] == "任务结束时间不能小于当前时间！"
    assert system.detail(tid)["Status"] == 0


def test_plugin_task_start_fails_cleanly(system):
    tid = send_dotnet(system, ASSEMBLY_FORM).json()["Data"]
    assert system.post("Start", data={"id": tid}).json() == {
        "Success": False, "Status": 0, "Message": "任务启动失败!", "Data": None}
    assert system.detail(tid)["Status"] == 0


def test_run_now_answers_with_the_start_outcome(system):
    body = system.post("Create", data={**BASE, "Title": "runnow", "CronExpression": "0 0 4 * * ?",
                                       "RunNow": "true"}).json()
    assert body["Message"] == "任务创建成功！启动状态为：成功" and body["Success"]
    assert system.detail(body["Data"])["Status"] == 1
    system.post("Stop", data={"id": body["Data"]})


def test_id_from_query_string_and_bad_ids(system):
    tid = system.post("Create", data={**BASE, "Title": "query id"}).json()["Data"]
    r = httpx.post(f"{system.api}/api/Task/Start?id={tid}", headers=AUTH)  # v2.1 clients
    assert r.json()["Message"] == "任务启动成功!"
    assert system.post("Stop", data={}, params={"id": tid}).json()["Message"] == "任务已停止运行!"
    bad = system.post("Start", data={"id": "12345"})
    assert bad.status_code == 400 and "id" in bad.json()["errors"]
    missing = system.post("Start", data={}).json()
    assert missing["Message"] == "任务信息不能为空！"
    assert system.get("QueryTaskDetail", {"id": "zzz"}).status_code == 400
    assert system.get("QueryTaskDetail", {}).json() == {"Success": True, "Status": 1, "Message": "请求数据成功",
                                                        "Data": None}
    assert system.post("Start", data={"id": "{" + tid + "}"}).json()["Message"] == "任务启动成功!"
    system.post("Stop", data={"id": tid})


def test_routes_are_case_insensitive_and_methods_checked(system):
    r = httpx.get(f"{system.api}/api/task/querylist?pageNumber=1&pageSize=2", headers=AUTH)
    assert r.status_code == 200 and set(r.json()) == {"total", "rows"}
    assert httpx.get(f"{system.api}/api/Task/Create", headers=AUTH).status_code == 405
    assert httpx.post(f"{system.api}/api/Task/QueryList", headers=AUTH).status_code == 405
    assert httpx.get(f"{system.api}/api/Task/Nope", headers=AUTH).status_code == 404


def test_query_list_shape_paging_and_filter(system):
    ids = [system.post("Create", data={**BASE, "Title": f"page-{i}"}).json()["Data"] for i in range(3)]
    r = system.get("QueryList", {"name": "page-", "pageNumber": 1, "pageSize": 2}).json()
    assert r["total"] == 3 and [row["Id"] for row in r["rows"]] == ids[::-1][:2]  # newest first
    row = r["rows"][0]
    assert row["MetaType"] == 0 and row["Keepers"] == [] and row["CustomParamsJson"] == "[]"
    assert row["RunNow"] is False and row["Status"] == 0 and row["Title"] == "page-2"
    page2 = system.get("QueryList", {"name": "page-", "pageNumber": 2, "pageSize": 2}).json()
    assert [row["Id"] for row in page2["rows"]] == [ids[0]]
    weird = system.get("QueryList", {"name": "page-", "pageNumber": -5, "pageSize": 0}).json()
    assert weird["total"] == 3 and len(weird["rows"]) == 3  # < 1 means 1 and 10
    missing = system.get("QueryList", {"pageNumber": 1}).json()
    assert missing["Success"] is False and "pageSize" in missing["Message"]
    assert system.get("QueryList", {"pageNumber": "x", "pageSize": 1}).status_code == 400


def test_nexts_cycles_are_refused(system):
    a = system.post("Create", data={**BASE, "Title": "chain A"}).json()["Data"]
    b = system.post("Create", data={**BASE, "Title": "chain B", "Nexts": a}).json()["Data"]
    c = system.post("Create", data={**BASE, "Title": "chain C", "Nexts": b}).json()["Data"]
    r = system.post("Edit", data={**BASE, "Id": a, "Title": "chain A", "Nexts": c}).json()
    assert r["Success"] is False and "循环" in r["Message"]
    assert "chain A → chain C → chain B → chain A" in r["Message"]
    assert system.post("Edit", data={**BASE, "Id": a, "Title": "chain A", "Nexts": a}).json()["Success"] is False
    # deleting a child drops the reference from its parent, as the original did
    assert system.post("Delete", data={"id": a}).json()["Success"]
    assert system.pf("GET", f"/deployments/{b}").json()["parameters"]["task"]["Nexts"] == []
