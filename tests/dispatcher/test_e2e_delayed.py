"""Delayed tasks against the real system: the legacy Create, the callbacks at a real receiver,
retries and the creator's mail at a real SMTP sink, the console operations, the batch
extension, bad input, what the Prefect UI shows, and a SIGKILL of the dispatcher."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiosmtpd.controller import Controller

from helpers import AUTH, dotnet_form, free_port, md5, wait_until

pytestmark = pytest.mark.e2e

FAST = {"DelayTask_RetryTimes": "2", "DelayTask_RetrySpans": "2", "DelayTask_RequestTimeout": "2"}
DEFAULTS = {"DelayTask_RetryTimes": "3", "DelayTask_RetrySpans": "10", "DelayTask_RequestTimeout": "100",
            "DelayTask_DelayPattern": "Relative"}


def api(system, method, path, headers=None, **kw) -> httpx.Response:
    return httpx.request(method, f"{system.api}/api/{path}", headers=AUTH if headers is None else headers,
                         timeout=60, **kw)


def save_config(system, **values) -> None:
    body = api(system, "POST", "System/SaveConfig", data=values).json()
    assert body["Success"], body


def create(system, receiver_url: str, headers=None, **fields) -> httpx.Response:
    data = {"SourceApp": "e2e", "Topic": "t", "ContentKey": uuid.uuid4().hex[:12], "DelayTimeSpan": "2",
            "NotifyUrl": receiver_url, "NotifyDataType": "application/json", "NotifyBody": '{"k":1}', **fields}
    return api(system, "POST", "DelayTask/Create", headers=headers, data=data)


def created_id(resp: httpx.Response) -> str:
    body = resp.json()
    assert body["Success"], body
    return body["Data"]


def detail(system, task_id: str) -> dict | None:
    return api(system, "GET", "DelayTask/QueryDetail", params={"id": task_id}).json()["Data"]


def listing(system, **params) -> dict:
    body = api(system, "GET", "DelayTask/QueryList", params={"pageSize": 1000, **params}).json()
    assert body["Success"], body
    return body["Data"]


def local_now(system) -> datetime:
    return datetime.now(ZoneInfo(system.timezone)).replace(tzinfo=None)


@pytest.fixture(scope="module")
def fast_retries(system):
    """Two retries 2 s and 4 s apart, a 2 s callback timeout (the dispatcher reads settings every 2 s)."""
    save_config(system, **FAST)
    time.sleep(3)
    yield
    save_config(system, **DEFAULTS)


class Sink:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp(system):
    sink = Sink()
    ctl = Controller(sink, hostname="127.0.0.1", port=free_port())
    ctl.start()
    save_config(system, Email_SmtpServer="127.0.0.1", Email_SmtpPort=str(ctl.port), Email_FromAccount="sm@example.com")
    yield sink
    ctl.stop()


# ---- the legacy Create ----------------------------------------------------------------------
def test_the_create_request_replayed_as_a_dotnet_form_post(system, receiver, fast_retries):
    """The DelayTask/Create form, encoded byte for byte as .NET's FormUrlEncodedContent sends it."""
    receiver.on("/dt/doc", 200, '{"code":0,"msg":"success"}', "application/json")
    key = f"ORDER-{uuid.uuid4().hex[:8]}"
    form = [("SourceApp", "order-service"), ("Topic", "order.timeout"), ("ContentKey", key),
            ("DelayTimeSpan", "3"), ("NotifyUrl", receiver.url("/dt/doc")), ("NotifyDataType", "application/json"),
            ("NotifyBody", '{"orderNo":"' + key + '",\r\n"action":"close"}'), ("Remark", "订单超时关闭")]
    sent = time.time()
    resp = httpx.post(f"{system.api}/api/delaytask/create", content=dotnet_form(form), timeout=30, headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json; charset=utf-8"
    body = resp.json()
    assert body == {"Success": True, "Status": 1, "Message": "任务启动成功!", "Data": body["Data"]}
    assert "\\u4efb\\u52a1" in resp.text  # non-ASCII escaped as System.Text.Json wrote it
    task_id = str(uuid.UUID(body["Data"]))
    [hit] = receiver.wait_for("/dt/doc", 1, timeout=20)
    assert 2.0 <= hit.at - sent <= 5.5
    assert hit.method == "POST" and hit.headers["idempotency-key"] == task_id
    assert hit.headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(hit.body) == {"orderNo": key, "action": "close"}   # CR-LF removed, as the original
    d = wait_until(lambda: (d := detail(system, task_id)) and d["Status"] == 3 and d, timeout=10)
    assert d["FinishTime"] and d["FailedRetrys"] == 0 and d["Remark"] == "订单超时关闭"
    assert d["CreateUserName"] == "admin" and d["DelayTimeSpan"] == 3 and d["StatusText"] == "执行成功"
    [attempt] = d["AttemptLog"]
    assert attempt["Success"] and attempt["StatusCode"] == 200 and attempt["Kind"] == "first"
    assert "success" in attempt["Excerpt"] and attempt["LatenessSeconds"] < 1.5


def test_a_form_callback_is_sent_form_encoded(system, receiver, fast_retries):
    receiver.on("/dt/form", 200, "success")
    created_id(create(system, receiver.url("/dt/form"), NotifyDataType="application/x-www-form-urlencoded",
                      NotifyBody='[{"Key":"orderNo","Value":"A 1"},{"Key":"n","Value":"2"}]', DelayTimeSpan="1"))
    [hit] = receiver.wait_for("/dt/form", 1, timeout=15)
    assert hit.body == b"orderNo=A+1&n=2"
    assert hit.headers["content-type"] == "application/x-www-form-urlencoded"


def test_absolute_mode_by_the_setting_and_by_the_request(system, receiver, fast_retries):
    receiver.on("/dt/abs", 200, "success")
    save_config(system, DelayTask_DelayPattern="Absolute")
    try:
        time.sleep(1.1)  # the legacy API's settings cache
        due = local_now(system).replace(microsecond=0) + timedelta(seconds=4)
        key = uuid.uuid4().hex
        task_id = created_id(create(system, receiver.url("/dt/abs"), ContentKey=key,
                                    DelayAbsoluteTime=due.strftime("%Y-%m-%d %H:%M:%S")))
        past = create(system, receiver.url("/dt/abs"), ContentKey=key + "-past",
                      DelayAbsoluteTime=(due - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")).json()
        assert not past["Success"] and "DelayAbsoluteTime" in past["Message"] and past["Data"] is None
        assert listing(system, contentKey=key + "-past")["total"] == 0    # nothing written
    finally:
        save_config(system, DelayTask_DelayPattern="Relative")
    [hit] = receiver.wait_for("/dt/abs", 1, timeout=20)
    arrived = datetime.fromtimestamp(hit.at, ZoneInfo(system.timezone)).replace(tzinfo=None)
    assert -0.05 <= (arrived - due).total_seconds() < 1.5
    assert hit.headers["idempotency-key"] == task_id
    # the extension field picks the mode per request, whatever the setting
    time.sleep(1.1)
    due2 = local_now(system).replace(microsecond=0) + timedelta(seconds=3)
    created_id(create(system, receiver.url("/dt/abs"), DelayPattern="Absolute",
                      DelayAbsoluteTime=due2.strftime("%Y-%m-%d %H:%M:%S")))
    receiver.wait_for("/dt/abs", 2, timeout=20)


def test_client_supplied_id_is_kept_and_a_duplicate_refused(system, receiver):
    given = str(uuid.uuid4())
    assert created_id(create(system, receiver.url("/dt/never"), Id=given.upper(), DelayTimeSpan="3600")) == given
    again = create(system, receiver.url("/dt/never"), Id=given, DelayTimeSpan="3600").json()
    assert again == {"Success": False, "Status": 0, "Message": "任务ID已存在!", "Data": given}
    assert detail(system, given)["DelayTimeSpan"] == 3600
    api(system, "POST", "DelayTask/Void", data={"id": given})


# ---- failing receivers: retries, Failed, the creator's mail, and the Prefect view ---------------
def creator_headers(system, name: str, mail: str | None) -> dict:
    data = {"UserName": name, "RealName": f"{name} 真名", "Password": "secret1"}
    if mail:
        data["Email"] = mail
    assert api(system, "POST", "Account/Create", data=data).json()["Success"]
    return {"ms_auth_user": name, "ms_auth_secret": md5(name + md5("secret1") + name)}


@pytest.mark.parametrize("path,status,text,delay", [
    ("/dt/no-success", 200, "ok, done", 0.0),
    ("/dt/error-500", 500, "success", 0.0),
    ("/dt/hangs", 200, "success", 4.0),
])
def test_failing_receivers_are_retried_at_the_spacing_then_failed_and_the_creator_mailed(
        system, receiver, fast_retries, smtp, path, status, text, delay):
    receiver.on(path, status, text, delay=delay)
    creator = f"c{uuid.uuid4().hex[:8]}"
    headers = creator_headers(system, creator, f"{creator}@example.com")
    key = uuid.uuid4().hex[:10]
    task_id = created_id(create(system, receiver.url(path), headers=headers, ContentKey=key, Topic="pay.retry",
                                DelayTimeSpan="1"))
    hits = receiver.wait_for(path, 3, timeout=40)
    timeout = 2.0 if delay else 0.0
    gaps = [hits[1].at - hits[0].at, hits[2].at - hits[1].at]
    # RetrySpans × FailedRetrys after the failed attempt ended (a hanging one ends at the timeout)
    assert 2 + timeout - 0.3 <= gaps[0] <= 2 + timeout + 1.5, gaps
    assert 4 + timeout - 0.3 <= gaps[1] <= 4 + timeout + 1.5, gaps
    d = wait_until(lambda: (d := detail(system, task_id)) and d["Status"] == 4 and d, timeout=15)
    assert d["FailedRetrys"] == 2 and d["Remark"] == "重试2次后失败结束" and d["NextAttemptTime"] is None
    assert [a["Kind"] for a in reversed(d["AttemptLog"])] == ["first", "retry", "retry"]
    assert not any(a["Success"] for a in d["AttemptLog"])
    time.sleep(2)
    assert len(receiver.at(path)) == 3   # nothing after the final failure
    subject = f"延时任务执行失败 — pay.retry/{key}"
    msg = wait_until(lambda: next((m for m in smtp.messages if m["Subject"] == subject), None), timeout=20)
    assert f"{creator}@example.com" in msg["To"]
    html = msg.get_body(("html",)).get_content()
    assert task_id in html and receiver.url(path) in html
    # the Prefect view: a line in the dispatcher's run log and a schedulemaster.delayed.failed event
    lines = wait_until(lambda: [x for x in dispatcher_log(system) if task_id in x and "failed after 2 retries" in x],
                       timeout=20)
    assert lines
    events = wait_until(lambda: failed_events(system, task_id), timeout=20)
    assert events[0]["payload"]["content_key"] == key


def dispatcher_runs(system, state: str | None = None) -> list[dict]:
    flt = {"flow_runs": {"tags": {"all_": ["dispatcher:dispatcher"]}}, "limit": 50, "sort": "START_TIME_DESC"}
    if state:
        flt["flow_runs"]["state"] = {"type": {"any_": [state]}}
    return system.pf("POST", "/flow_runs/filter", json=flt, timeout=30).json()


def dispatcher_log(system) -> list[str]:
    runs = dispatcher_runs(system)
    r = system.pf("POST", "/logs/filter", timeout=30, json={
        "logs": {"flow_run_id": {"any_": [x["id"] for x in runs]}}, "limit": 200, "sort": "TIMESTAMP_DESC"})
    return [x["message"] for x in r.json()]


def failed_events(system, task_id: str) -> list[dict]:
    r = system.pf("POST", "/events/filter", timeout=30, json={"filter": {
        "event": {"name": ["schedulemaster.delayed.failed"]},
        "resource": {"id": [f"schedulemaster.delayed.{task_id}"]},
        "occurred": {"since": (datetime.utcnow() - timedelta(hours=1)).isoformat() + "Z"}}, "limit": 10})
    return r.json().get("events", []) if r.status_code == 200 else []


def test_the_dispatcher_is_one_deployment_with_a_running_run_and_an_artifact(system):
    dep = system.pf("GET", "/deployments/name/schedulemaster-delayed/dispatcher", timeout=30)
    assert dep.status_code == 200, dep.text
    running = wait_until(lambda: dispatcher_runs(system, "RUNNING"), timeout=30)
    assert len(running) == 1 and running[0]["deployment_id"] == dep.json()["id"]
    art = wait_until(lambda: system.pf("POST", "/artifacts/latest/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["delayed-dispatcher"]}}}).json(), timeout=30)
    rows = json.loads(art[0]["data"]) if isinstance(art[0]["data"], str) else art[0]["data"]
    assert any("Ready" in r["what"] for r in rows)

    # one card per run, updated in place at each report (every 5 s here), not one a report
    def of_run() -> list[dict]:
        return system.pf("POST", "/artifacts/filter", timeout=30, json={
            "artifacts": {"flow_run_id": {"any_": [running[0]["id"]]}, "key": {"any_": ["delayed-dispatcher"]}}}).json()

    first = wait_until(of_run, timeout=30)
    later = wait_until(lambda: (a := of_run()) and a[0]["description"] != first[0]["description"] and a, timeout=30)
    assert len(first) == 1 and len(later) == 1 and later[0]["id"] == first[0]["id"]
    wait_until(lambda: any(x.startswith("last ") and ("fired" in x or "nothing fell due" in x)
                           for x in dispatcher_log(system)), timeout=30)


# ---- console operations ----------------------------------------------------------------------
def action(system, name: str, task_id: str, in_query: bool = False) -> dict:
    if in_query:
        return api(system, "POST", f"DelayTask/{name}", params={"id": task_id}).json()
    return api(system, "POST", f"DelayTask/{name}", data={"id": task_id}).json()


def test_void_execute_reset_and_their_state_rules(system, receiver, fast_retries):
    receiver.on("/dt/ops", 200, "success")
    task_id = created_id(create(system, receiver.url("/dt/ops"), DelayTimeSpan="600"))
    assert action(system, "Reset", task_id) == {"Success": False, "Status": 0, "Message": "任务已就绪，无需重置!",
                                                "Data": task_id}
    assert action(system, "Void", task_id)["Message"] == "任务已作废!"
    assert detail(system, task_id)["Status"] == 0
    assert action(system, "Void", task_id)["Message"] == "当前状态下不能作废!"
    assert action(system, "Execute", task_id)["Message"] == "当前状态下不能执行!"
    assert action(system, "Start", task_id, in_query=True)["Message"] == "任务已重置!"   # the console's name
    d = detail(system, task_id)
    assert d["Status"] == 2 and d["NextAttemptTime"]
    assert action(system, "Execute", task_id)["Message"] == "任务已提交执行!"
    receiver.wait_for("/dt/ops", 1, timeout=10)
    wait_until(lambda: detail(system, task_id)["Status"] == 3, timeout=10)
    assert action(system, "Execute", task_id)["Message"] == "当前状态下不能执行!"
    assert action(system, "Stop", task_id)["Message"] == "当前状态下不能作废!"
    missing = str(uuid.uuid4())
    for name in ("Void", "Execute", "Reset"):
        assert action(system, name, missing) == {"Success": False, "Status": 0, "Message": "任务不存在!", "Data": None}
    bad = api(system, "POST", "DelayTask/Void", data={"id": "not-a-guid"})
    assert bad.status_code == 400 and "id" in bad.json()["errors"]


def test_execute_on_a_failed_task_is_one_manual_try(system, receiver, fast_retries):
    receiver.on("/dt/later-ok", 500, "down")
    task_id = created_id(create(system, receiver.url("/dt/later-ok"), DelayTimeSpan="1"))
    wait_until(lambda: detail(system, task_id)["Status"] == 4, timeout=30)
    receiver.on("/dt/later-ok", 200, "success")
    assert action(system, "Execute", task_id)["Success"]
    d = wait_until(lambda: (d := detail(system, task_id)) and d["Status"] == 3 and d, timeout=15)
    assert d["Remark"].endswith(" | 手动执行回调成功") and d["AttemptLog"][0]["Kind"] == "manual"
    assert len(receiver.at("/dt/later-ok")) == 4


# ---- batch --------------------------------------------------------------------------------------
def item(url: str, **over) -> dict:
    return {"SourceApp": "batch", "Topic": "b", "ContentKey": uuid.uuid4().hex[:10], "DelayTimeSpan": 3600,
            "NotifyUrl": url, "NotifyDataType": "application/json", "NotifyBody": '{"x":1}', **over}


def test_batch_create_is_all_or_none(system, receiver):
    topic = f"batch-{uuid.uuid4().hex[:8]}"
    url = receiver.url("/dt/batch")
    items = [item(url, Topic=topic) for _ in range(200)]
    body = api(system, "POST", "DelayTask/CreateBatch", json=items).json()
    assert body["Success"] and len(body["Data"]) == 200 and len(set(body["Data"])) == 200
    assert listing(system, topic=topic)["total"] == 200
    topic2 = f"batch-{uuid.uuid4().hex[:8]}"
    bad_url = [item(url, Topic=topic2) for _ in range(5)] + [item("ftp://x/", Topic=topic2)]
    answer = api(system, "POST", "DelayTask/CreateBatch", json=bad_url).json()
    assert not answer["Success"] and answer["Message"].startswith("第 5 项") and answer["Data"] == {"Index": 5}
    invalid = [item(url, Topic=topic2), item(url, Topic="")]
    resp = api(system, "POST", "DelayTask/CreateBatch", json=invalid)
    assert resp.status_code == 400 and "[1].Topic" in resp.json()["errors"]
    dup = str(uuid.uuid4())
    answer = api(system, "POST", "DelayTask/CreateBatch", json=[item(url, Topic=topic2, Id=dup),
                                                                item(url, Topic=topic2, Id=dup)]).json()
    assert not answer["Success"] and answer["Data"] == {"Ids": [dup]}
    existing = body["Data"][0]
    answer = api(system, "POST", "DelayTask/CreateBatch", json=[item(url, Topic=topic2),
                                                                item(url, Topic=topic2, Id=existing)]).json()
    assert not answer["Success"] and answer["Message"] == "任务ID已存在!"
    assert listing(system, topic=topic2)["total"] == 0     # nothing of any refused batch


@pytest.mark.parametrize("body,ctype", [(b"not json", "application/json"), (b"{}", "application/json"),
                                        (b"[]", "application/json"), (b"[1,2]", "application/json"),
                                        (b"\xff\xfe", "application/json"), (b"a=1", "application/x-www-form-urlencoded"),
                                        (b"[" * 100_000 + b"]" * 100_000, "application/json")])
def test_malformed_batches_are_400(system, body, ctype):
    resp = api(system, "POST", "DelayTask/CreateBatch", content=body, headers={**AUTH, "Content-Type": ctype})
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("application/problem+json")


def test_oversized_batches_are_refused(system, receiver):
    too_many = [item(receiver.url("/x")) for _ in range(10_001)]
    resp = api(system, "POST", "DelayTask/CreateBatch", json=too_many)
    assert resp.status_code == 400
    huge = b"[" + b",".join([b'{"a":"' + b"x" * 1000 + b'"}'] * 17_000) + b"]"
    assert api(system, "POST", "DelayTask/CreateBatch", content=huge,
               headers={**AUTH, "Content-Type": "application/json"}).status_code == 413


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("change,code,needle", [
    ({"SourceApp": ""}, 400, "SourceApp"),
    ({"Topic": "x" * 101}, 400, "Topic"),
    ({"NotifyBody": "x" * 1001}, 400, "NotifyBody"),
    ({"NotifyUrl": "http://x/" + "a" * 250}, 400, "NotifyUrl"),
    ({"DelayTimeSpan": "abc"}, 400, "DelayTimeSpan"),
    ({"DelayTimeSpan": "99999999999"}, 400, "DelayTimeSpan"),
    ({"DelayAbsoluteTime": "tomorrow"}, 400, "DelayAbsoluteTime"),
    ({"Id": "xyz"}, 400, "Id"),
    ({"Id": "' OR 1=1 --"}, 400, "Id"),
    ({"DelayTimeSpan": "-5"}, 200, "DelayTimeSpan"),
    ({"DelayTimeSpan": "0"}, 200, "DelayTimeSpan"),
    ({"DelayTimeSpan": "2000000000"}, 200, "DelayTimeSpan"),
    ({"DelayPattern": "Absolute", "DelayAbsoluteTime": "2001-01-01 00:00:00"}, 200, "DelayAbsoluteTime"),
    ({"DelayPattern": "Absolute"}, 200, "DelayAbsoluteTime"),
    ({"DelayPattern": "Later"}, 200, "DelayPattern"),
    ({"NotifyUrl": "ftp://127.0.0.1/x"}, 200, "NotifyUrl"),
    ({"NotifyUrl": "javascript:alert(1)"}, 200, "NotifyUrl"),
    ({"NotifyUrl": "/relative/path"}, 200, "NotifyUrl"),
    ({"NotifyDataType": "application/x-www-form-urlencoded", "NotifyBody": '{"a":"1"}'}, 200, "JSON"),
    ({"NotifyDataType": "application/x-www-form-urlencoded", "NotifyBody": "a=1&b=2"}, 200, "JSON"),
    ({"Topic": "a\u0000b"}, 200, "NUL"),
    ({"DelayPattern": "Absolute", "DelayAbsoluteTime": "0001-01-01 00:00:00"}, 200, "DelayAbsoluteTime"),
    ({"DelayPattern": "Absolute", "DelayAbsoluteTime": "9999-12-31 23:59:59"}, 200, "DelayAbsoluteTime"),
])
def test_bad_input_gets_a_clear_error_and_changes_nothing(system, receiver, change, code, needle):
    key = f"bad-{uuid.uuid4().hex}"
    resp = create(system, receiver.url("/dt/bad"), ContentKey=key, **change)
    assert resp.status_code == code
    body = resp.json()
    if code == 400:
        assert needle in body["errors"], body
    else:
        assert body["Success"] is False and body["Status"] == 0 and needle in body["Message"], body
    assert listing(system, contentKey=key)["total"] == 0


def test_a_chunked_body_over_the_limit_is_refused_too(system):
    def chunks():
        for _ in range(2000):
            yield b"a=" + b"x" * 1024 + b"&"
    resp = httpx.post(f"{system.api}/api/DelayTask/Create", content=chunks(), timeout=60,
                      headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413 and resp.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("params", [{"startDate": "0001-01-01"}, {"endDate": "9999-12-31"},
                                    {"startDate": "0001-01-01", "endDate": "9999-12-31 23:59:59"}])
def test_extreme_dates_in_the_list_filter_are_answered(system, params):
    body = api(system, "GET", "DelayTask/QueryList", params={**params, "topic": "none-such"}).json()
    assert body["Success"] and body["Data"]["total"] == 0


def test_oversized_json_and_unauthenticated_requests(system, receiver):
    big = api(system, "POST", "DelayTask/Create", content=b"a=" + b"x" * (1024 * 1024 + 10),
              headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    as_json = api(system, "POST", "DelayTask/Create", json={"SourceApp": "a"})
    assert as_json.status_code == 400 and "NotifyUrl" in as_json.json()["errors"]   # JSON binds nothing
    key = uuid.uuid4().hex
    assert create(system, receiver.url("/dt/x"), headers={}, ContentKey=key).status_code == 401
    wrong = {"ms_auth_user": "admin", "ms_auth_secret": "0" * 32}
    resp = create(system, receiver.url("/dt/x"), headers=wrong, ContentKey=key)
    assert resp.status_code == 401 and resp.json()["title"] == "Unauthorized"
    assert create(system, receiver.url("/dt/x"), headers={}, SourceApp="").status_code == 400   # validation first
    assert listing(system, contentKey=key)["total"] == 0


@pytest.mark.parametrize("text", ["订单-超时 🚚", "'; DROP TABLE scheduledelayeds; --", "<script>alert(1)</script>",
                                  "%00%0d%0a", "\u202e\ufeff"])
def test_hostile_text_is_stored_verbatim(system, receiver, text):
    key = uuid.uuid4().hex
    task_id = created_id(create(system, receiver.url("/dt/never"), Topic=text[:100], ContentKey=key,
                                DelayTimeSpan="3600", Remark=text))
    d = detail(system, task_id)
    assert d["Topic"] == text and d["Remark"] == text
    assert listing(system, topic=text)["total"] >= 1
    api(system, "POST", "DelayTask/Void", data={"id": task_id})


def test_list_filters_and_paging(system, receiver):
    topic = f"list-{uuid.uuid4().hex[:8]}"
    ids = [created_id(create(system, receiver.url("/dt/never"), Topic=topic, SourceApp=f"app{i % 2}",
                             DelayTimeSpan="3600")) for i in range(5)]
    action(system, "Void", ids[0])
    assert listing(system, topic=topic)["total"] == 5
    assert [r["Id"] for r in listing(system, topic=topic)["rows"]] == ids[::-1]     # newest first
    assert listing(system, topic=topic, status=0)["total"] == 1
    assert listing(system, topic=topic, sourceApp="app1")["total"] == 2
    page = listing(system, topic=topic, pageNumber=2, pageSize=2)
    assert page["total"] == 5 and [r["Id"] for r in page["rows"]] == ids[::-1][2:4]
    today = local_now(system).strftime("%Y-%m-%d")
    assert listing(system, topic=topic, startDate=today)["total"] == 5
    assert listing(system, topic=topic, endDate=today)["total"] == 5       # a bare date: the whole day
    yesterday = (local_now(system) - timedelta(days=1)).strftime("%Y-%m-%d")
    assert listing(system, topic=topic, endDate=yesterday)["total"] == 0
    resp = api(system, "GET", "DelayTask/QueryList", params={"status": "x"})
    assert resp.status_code == 400
    for task_id in ids[1:]:
        action(system, "Void", task_id)


# ---- crash safety -------------------------------------------------------------------------------
def dispatcher_pid(system) -> int:
    for pid in system.child_pids():
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"dispatcher" in args:
            return pid
    raise AssertionError("no dispatcher process under up")


def test_sigkill_of_the_dispatcher_with_callbacks_in_flight_loses_nothing(system, receiver, fast_retries):
    """300 callbacks fall due together at a receiver that takes 0.5 s to answer; the dispatcher
    is killed while ~100 are in flight. The restarted dispatcher sends everything. Every arrival
    is a recorded attempt (a timed-out attempt is retried, and may have arrived) except the one
    whose outcome died with the dispatcher, which is re-sent as kind "recovered"."""
    receiver.on("/dt/crash", 200, "success", delay=0.5)
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    url = receiver.url("/dt/crash")
    before = len(receiver.at("/dt/crash"))
    resp = api(system, "POST", "DelayTask/CreateBatch", json=[item(url, Topic=topic, DelayTimeSpan=2)
                                                              for _ in range(300)]).json()
    assert resp["Success"]
    ids = set(resp["Data"])
    old = dispatcher_pid(system)
    wait_until(lambda: len(receiver.at("/dt/crash")) - before >= 40, timeout=30, interval=0.02)
    os.kill(old, signal.SIGKILL)
    kill_at = time.time()
    wait_until(lambda: listing(system, topic=topic, status=3)["total"] == 300, timeout=120, interval=1)
    assert dispatcher_pid(system) != old
    arrivals = Counter(h.headers["idempotency-key"] for h in receiver.at("/dt/crash")[before:])
    assert set(arrivals) == ids                                   # every one arrived
    logs = {i: detail(system, i)["AttemptLog"] for i in ids}
    recovered = {i for i, log in logs.items() if any(a["Kind"] == "recovered" for a in log)}
    # every arrival is a recorded attempt, except the one whose outcome died with the dispatcher
    unrecorded = {i: (arrivals[i], logs[i]) for i in ids if arrivals[i] > len(logs[i]) + (i in recovered)}
    assert not unrecorded, (len(unrecorded), [(i, [h.at for h in receiver.at("/dt/crash")
                                                    if h.headers["idempotency-key"] == i], logs[i])
                                               for i in list(unrecorded)[:2]], time.time(), kill_at)
    twice = {i for i, log in logs.items() if arrivals[i] > 1 and all(a["Success"] for a in log)}
    assert twice <= recovered                                     # duplicates only where the outcome was unknown
    assert recovered, "the kill should have hit callbacks in flight"
    wait_until(lambda: any("sent again after a dispatcher crash" in x for x in dispatcher_log(system)),
               timeout=20)
    crashed = dispatcher_runs(system, "CRASHED")
    assert crashed and "without closing" in crashed[0]["state"]["message"]
