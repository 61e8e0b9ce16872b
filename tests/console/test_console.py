"""The console on the legacy port, against a live system: its doors (session, CSRF, roles),
its forms (errors beside their field, nothing written), its escaping, and, in a real browser
(Playwright on Debian's chromium), an operator's day: sign in, create a task that fires, pause
it and see Prefect report it paused."""

import re
import sqlite3
import uuid

import httpx
import pytest

from helpers import AUTH, wait_until

CHROMIUM = "/usr/bin/chromium"


def sign_in(system, username: str = "admin", password: str = "111111") -> httpx.Client:
    """A client holding a console session, as a browser would after the sign-in form."""
    client = httpx.Client(base_url=system.api, timeout=30)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    answer = client.post("/login", data={"csrf": token, "username": username, "password": password})
    assert answer.status_code == 303 and answer.headers["location"] == "/tasks", answer.text
    return client


def csrf_of(client: httpx.Client, path: str = "/tasks") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def task_form(receiver, title: str, **extra) -> dict[str, str]:
    return {"Title": title, "MetaType": "2", "RunLoop": "true", "CronExpression": "0/2 * * * * ?",
            "HttpRequestUrl": receiver.url(f"/console-{uuid.uuid4().hex[:8]}"), "HttpMethod": "GET", **extra}


def count_tasks(system) -> int:
    return system.get("QueryList", {"pageNumber": 1, "pageSize": 1}).json()["total"]


def test_up_says_where_the_console_is_and_it_asks_for_a_sign_in(system):
    announced = re.search(r"console +(http://\S+)", "".join(system.output)).group(1)
    assert announced.endswith(f":{system.api_port}/")
    page = httpx.get(announced, follow_redirects=True, timeout=30)
    assert page.status_code == 200 and page.url.path == "/login" and 'name="password"' in page.text


def test_every_page_and_action_needs_a_session(system):
    anonymous = httpx.Client(base_url=system.api, timeout=30)
    for path in ("/", "/tasks", "/tasks/new", f"/tasks/{uuid.uuid4()}", f"/tasks/{uuid.uuid4()}/edit"):
        r = anonymous.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    before = count_tasks(system)
    for path in ("/tasks/new", f"/tasks/{uuid.uuid4()}/pause", "/logout"):
        assert anonymous.post(path, data={"Title": "x"}).status_code == 401, path
    assert anonymous.get("/cron/preview", params={"cron": "* * * * * ?"}).status_code == 401
    # a forged or stale cookie is no session
    anonymous.cookies.set("sm_console", "forged-" + "x" * 40)
    assert anonymous.get("/tasks").status_code == 303
    assert count_tasks(system) == before
    # the legacy API is where it was, with its own auth
    assert anonymous.get("/api/Task/QueryList?pageNumber=1&pageSize=1").status_code == 401


def test_sign_in_refuses_bad_passwords_and_forms_without_their_token(system):
    client = httpx.Client(base_url=system.api, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    wrong = client.post("/login", data={"csrf": token, "username": "admin", "password": "nope"})
    assert wrong.status_code == 401 and "sm_console" not in wrong.cookies
    assert "用户名或密码错误" in wrong.text
    # a sign-in posted from elsewhere carries no token of this browser's form
    stranger = httpx.Client(base_url=system.api, timeout=30)
    forged = stranger.post("/login", data={"csrf": "guess", "username": "admin", "password": "111111"})
    assert forged.status_code == 400 and "sm_console" not in forged.cookies
    for hostile in ({"username": "a" * 10_000, "password": "x"}, {"username": "admin\x00", "password": "1"},
                    {"username": "' OR 1=1 --", "password": "' OR 1=1 --"}):
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        r = client.post("/login", data={"csrf": token, **hostile})
        assert r.status_code == 401, hostile


def test_actions_need_the_sessions_csrf_token(system, receiver):
    client = sign_in(system)
    before = count_tasks(system)
    for token in (None, "", "not-the-token"):
        data = task_form(receiver, "csrf-less") | ({} if token is None else {"csrf": token})
        assert client.post("/tasks/new", data=data).status_code == 403
    assert count_tasks(system) == before
    # sign out ends the session at the server: the old cookie opens nothing afterwards
    cookie = client.cookies.get("sm_console")
    assert client.post("/logout", data={"csrf": csrf_of(client)}).status_code == 303
    replay = httpx.Client(base_url=system.api, timeout=30, cookies={"sm_console": cookie})
    assert replay.get("/tasks").status_code == 303


def test_a_form_error_shows_beside_its_field_and_writes_nothing(system, receiver):
    client = sign_in(system)
    before = count_tasks(system)
    csrf = csrf_of(client)
    cases = {
        "CronExpression": task_form(receiver, "bad cron", CronExpression="99 * * * * ?"),
        "HttpRequestUrl": task_form(receiver, "bad url", HttpRequestUrl="ftp://example.org/x"),
        "Title": task_form(receiver, ""),
        "EndDate": task_form(receiver, "ends first", StartDate="2030-01-02 00:00:00", EndDate="2030-01-01 00:00:00"),
        "OverlapPolicy": task_form(receiver, "bad overlap", OverlapPolicy="twice"),
        "Retries": task_form(receiver, "bad retries", Retries="99"),
    }
    for field, data in cases.items():
        r = client.post("/tasks/new", data={"csrf": csrf, **data})
        assert r.status_code == 400, field
        label = re.search(rf'<label class="field invalid" id="field-{field}">.*?</label>', r.text, re.S)
        assert label and 'class="error"' in label.group(0), (field, r.text[:2000])
        # what was typed stays in the form
        if data["Title"]:
            assert f'value="{data["Title"]}"' in r.text
    oversized = client.post("/tasks/new", data={"csrf": csrf, **task_form(receiver, "big", Remark="x" * 300_000)})
    assert oversized.status_code == 413

    def chunks():  # no Content-Length: the size shows only as it arrives
        yield f"csrf={csrf}&Title=chunked&Remark=".encode()
        for _ in range(40):
            yield b"x" * 10_000

    streamed = client.post("/tasks/new", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413
    malformed = client.post("/tasks/new", content=b"\xff\xfe not a form", headers={"content-type": "text/plain"})
    assert malformed.status_code == 403  # no form, no token
    assert count_tasks(system) == before


def test_a_viewer_sees_tasks_but_no_buttons_and_cannot_act(system, receiver):
    name = f"viewer{uuid.uuid4().hex[:6]}"
    made = httpx.post(f"{system.api}/api/Account/Create", headers=AUTH, timeout=30,
                      data={"UserName": name, "RealName": "看客", "Password": "viewer-pw-1", "Role": "viewer"})
    assert made.json()["Success"], made.text
    task_id = system.post("Create", data=task_form(receiver, "seen by a viewer")).json()["Data"]
    viewer = sign_in(system, name, "viewer-pw-1")
    page = viewer.get(f"/tasks/{task_id}")
    assert page.status_code == 200 and "seen by a viewer" in page.text
    assert "act-start" not in page.text and "/edit" not in page.text
    assert 'id="new-task"' not in viewer.get("/tasks").text
    r = viewer.post(f"/tasks/{task_id}/start", data={"csrf": csrf_of(viewer)})
    assert r.status_code == 403
    assert system.get("QueryTaskDetail", {"id": task_id}).json()["Data"]["Status"] == 0  # still stopped


def test_titles_are_shown_as_text(system, receiver):
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    task_id = system.post("Create", data=task_form(receiver, hostile)).json()["Data"]
    client = sign_in(system)
    for path, params in (("/tasks", {"title": "<script>"}), (f"/tasks/{task_id}", {})):
        html = client.get(path, params=params).text
        assert "<script>alert(1)" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script-src 'self'" in client.get("/tasks").headers["content-security-policy"]


def test_the_task_list_filters_by_title_and_status(system, receiver):
    marker = uuid.uuid4().hex[:8]
    running = system.post("Create", data=task_form(receiver, f"{marker} running", RunNow="true")).json()["Data"]
    stopped = system.post("Create", data=task_form(receiver, f"{marker} stopped")).json()["Data"]
    client = sign_in(system)

    def ids(**params) -> set[str]:
        return set(re.findall(r'<tr data-id="([0-9a-f-]{36})">', client.get("/tasks", params=params).text))

    assert ids(title=marker) == {running, stopped}
    assert ids(title=marker, status="running") == {running}
    assert ids(title=marker, status="stopped") == {stopped}
    assert ids(title=marker, status="paused") == set()
    for hostile in ({"page": "-5"}, {"page": "x"}, {"status": "<b>"}, {"title": "'" * 500}):
        assert client.get("/tasks", params=hostile).status_code == 200, hostile
    assert client.get("/tasks/not-a-guid").status_code == 404
    assert client.get(f"/tasks/{uuid.uuid4()}").status_code == 404

    # the running task's runs are on its page, each with its log lines
    page = wait_until(lambda: "run-logs" in (html := client.get(f"/tasks/{running}").text) and html, timeout=60)
    logs_path = re.search(r'href="(/tasks/[0-9a-f-]{36}/runs/[0-9a-f-]{36})" class="run-logs"', page).group(1)
    logs = wait_until(lambda: "<code>" in (html := client.get(logs_path).text) and html, timeout=60)
    assert 'id="run-logs"' in logs
    assert client.get(f"/tasks/{running}/runs/not-a-guid").status_code == 404


def test_the_cron_preview_lists_the_next_five_fire_times(system):
    client = sign_in(system)
    fires = client.get("/cron/preview", params={"cron": "0 0 12 ? * MON-FRI"}).json()["fires"]
    assert len(fires) == 5 and all(f.endswith("12:00:00") for f in fires)
    assert "error" in client.get("/cron/preview", params={"cron": "99 * * * * ?"}).json()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        yield b
        b.close()


def test_an_operators_day_in_a_real_browser(system, receiver, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{system.api}/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "111111")
    page.click("button[type=submit]")
    page.wait_for_url("**/tasks")

    # create an HTTP task through the form; a wrong cron first, shown at its field
    page.click("#new-task")
    path = f"/browser-{uuid.uuid4().hex[:8]}"
    title = f"浏览器任务 {uuid.uuid4().hex[:6]}"
    page.fill("input[name=Title]", title)
    page.fill("input[name=CronExpression]", "0/2 * * * * ? 1999")
    page.fill("input[name=HttpRequestUrl]", receiver.url(path))
    page.check("input[name=RunNow]")
    page.click("#save")
    assert page.locator("#field-CronExpression .error").is_visible()
    page.fill("input[name=CronExpression]", "0/2 * * * * ?")
    # the next five fire times, computed by the server as the cron is typed
    expect(page.locator("#cron-preview")).to_have_text(re.compile(r"^(\S+ \S+ +· +){4}\S+ \S+$"))
    page.click("#save")
    page.wait_for_url(re.compile(r".*/tasks/[0-9a-f-]{36}$"))
    task_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#task-title").inner_text() == title
    receiver.wait_for(path, 1, timeout=30)  # it fires at a real receiver

    # pause it in the console: Prefect's API reports the deployment paused
    page.click("button.act-pause")
    page.wait_for_selector("#task-status.paused")
    assert system.pf("GET", f"/deployments/{task_id}").json()["paused"] is True

    # the English switch
    page.click("#lang")
    page.goto(f"{system.api}/tasks/{task_id}")
    assert page.locator("#task-status").inner_text() == "Paused"
    page.click("#lang")

    # disable the node in the console: the API reports it disabled; enabled again at once
    # (it is this system's only node)
    page.goto(f"{system.api}/nodes")
    try:
        page.click('tr[data-node="worker1"] button.act-disable')
        expect(page.locator('tr[data-node="worker1"] .nstatus')).to_have_attribute("data-enabled", "false")
        nodes = httpx.get(f"{system.api}/api/Node/QueryList", headers=AUTH, timeout=30).json()["Data"]["rows"]
        assert [n["Enabled"] for n in nodes if n["NodeName"] == "worker1"] == [False]
    finally:
        httpx.post(f"{system.api}/api/Node/Enable", headers=AUTH, data={"name": "worker1"}, timeout=30)

    # a delayed task voided in the console is voided in the store
    page.goto(f"{system.api}/delayed/new")
    topic = f"浏览器-{uuid.uuid4().hex[:6]}"
    page.fill("input[name=SourceApp]", "browser")
    page.fill("input[name=Topic]", topic)
    page.fill("input[name=ContentKey]", "k-1")
    page.fill("input[name=DelayTimeSpan]", "3600")
    page.fill("input[name=NotifyUrl]", receiver.url("/browser-delayed"))
    page.click("#save")
    page.wait_for_url(re.compile(r".*/delayed/[0-9a-f-]{36}$"))
    delayed_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#delayed-status").get_attribute("data-status") == "2"
    page.click("button.act-void")
    expect(page.locator("#delayed-status")).to_have_attribute("data-status", "0")
    assert delayed_status(system, delayed_id) == 0
    page.close()


def delayed_form(receiver, topic: str, **extra) -> dict[str, str]:
    return {"SourceApp": "console-test", "Topic": topic, "ContentKey": uuid.uuid4().hex[:10], "DelayTimeSpan": "3600",
            "NotifyUrl": receiver.url(f"/delayed-{uuid.uuid4().hex[:8]}"), "NotifyDataType": "application/json",
            "NotifyBody": '{"order": 1}', **extra}


def delayed_status(system, delayed_id: str) -> int:
    r = httpx.get(f"{system.api}/api/DelayTask/QueryDetail", params={"id": delayed_id}, headers=AUTH, timeout=30)
    return r.json()["Data"]["Status"]


def test_delayed_tasks_list_filter_show_their_attempts_and_refuse_bad_input(system, receiver):
    client = sign_in(system)
    csrf = csrf_of(client, "/delayed")
    topic = f"topic-{uuid.uuid4().hex[:6]}"
    path = f"/delayed-{uuid.uuid4().hex[:8]}"
    soon = delayed_form(receiver, topic, DelayTimeSpan="1", NotifyUrl=receiver.url(path))
    made = client.post("/delayed/new", data={"csrf": csrf, **soon})
    assert made.status_code == 303, made.text
    soon_id = made.headers["location"].rsplit("/", 1)[1]
    later_id = client.post("/delayed/new", data={"csrf": csrf, **delayed_form(receiver, topic)}).headers[
        "location"].rsplit("/", 1)[1]

    def ids(**params) -> set[str]:
        page = client.get("/delayed", params=params)
        assert page.status_code == 200, page.text
        return set(re.findall(r'<tr data-id="([0-9a-f-]{36})">', page.text))

    assert ids(topic=topic) == {soon_id, later_id}
    assert ids(topic=topic, contentKey=soon["ContentKey"]) == {soon_id}
    # the callback lands at the receiver; the task's page shows the attempt and its answer
    receiver.wait_for(path, 1, timeout=30)
    wait_until(lambda: delayed_status(system, soon_id) == 3, timeout=30)
    assert ids(topic=topic, status="3") == {soon_id}
    page = client.get(f"/delayed/{soon_id}").text
    assert re.search(r'<table id="attempts">.*?<td class="num">200</td>', page, re.S)

    # bad input: a form error at its field, nothing written; a bad filter is said, not a 500
    before = ids(topic=topic)
    bad = client.post("/delayed/new", data={"csrf": csrf, **delayed_form(receiver, topic, DelayTimeSpan="-5")})
    assert bad.status_code == 400 and re.search(r'id="field-DelayTimeSpan">.*?class="error"', bad.text, re.S)
    assert client.post("/delayed/new", data=delayed_form(receiver, topic)).status_code == 403  # no CSRF token
    assert ids(topic=topic) == before
    assert client.get("/delayed", params={"startDate": "not-a-date"}).status_code == 400
    assert client.get(f"/delayed/{uuid.uuid4()}").status_code == 404
    assert client.post(f"/delayed/{later_id}/void", data={"csrf": "wrong"}).status_code == 403
    assert delayed_status(system, later_id) == 2


def test_a_viewer_cannot_void_a_delayed_task(system, receiver):
    name = f"dviewer{uuid.uuid4().hex[:6]}"
    assert httpx.post(f"{system.api}/api/Account/Create", headers=AUTH, timeout=30, data={
        "UserName": name, "RealName": "看客", "Password": "viewer-pw-1", "Role": "viewer"}).json()["Success"]
    admin = sign_in(system)
    delayed_id = admin.post("/delayed/new", data={"csrf": csrf_of(admin, "/delayed"), **delayed_form(
        receiver, "viewer-proof")}).headers["location"].rsplit("/", 1)[1]
    viewer = sign_in(system, name, "viewer-pw-1")
    page = viewer.get(f"/delayed/{delayed_id}").text
    assert "act-void" not in page and 'id="new-delayed"' not in viewer.get("/delayed").text
    assert viewer.post(f"/delayed/{delayed_id}/void", data={"csrf": csrf_of(viewer, "/delayed")}).status_code == 403
    assert delayed_status(system, delayed_id) == 2


def test_system_pages_need_a_session_and_their_token(system):
    anonymous = httpx.Client(base_url=system.api, timeout=30)
    for path in ("/nodes", "/accounts", "/settings", "/log", "/password", "/delayed", "/delayed/new"):
        assert anonymous.get(path).status_code == 303, path
    for path in ("/nodes/worker1/disable", "/nodes/worker1/edit", "/accounts/new", "/accounts/1/disable",
                 "/accounts/1/edit", "/settings", "/password", "/delayed/new", f"/delayed/{uuid.uuid4()}/void"):
        assert anonymous.post(path, data={"x": "1"}).status_code == 401, path
    client = sign_in(system)
    for path in ("/nodes/worker1/disable", "/accounts/1/disable", "/settings", "/password"):
        assert client.post(path, data={"csrf": "wrong"}).status_code == 403, path
    assert "worker1" in client.get("/nodes").text and 'data-enabled="true"' in client.get("/nodes").text
    for hostile in ("/nodes/a%00b/disable", "/nodes/x/explode", "/accounts/1/explode"):
        assert client.post(hostile, data={"csrf": csrf_of(client)}).status_code == 404, hostile


def test_accounts_settings_log_and_ones_own_password(system, receiver):
    admin = sign_in(system)
    csrf = csrf_of(admin, "/accounts")
    name = f"op{uuid.uuid4().hex[:6]}"
    made = admin.post("/accounts/new", data={"csrf": csrf, "UserName": name, "RealName": "<i>操作员</i>",
                                             "Password": "first-pw-1", "Role": "operator"})
    assert made.status_code == 303
    page = admin.get("/accounts").text
    assert f'data-user="{name}"' in page and "&lt;i&gt;操作员&lt;/i&gt;" in page
    refused = admin.post("/accounts/new", data={"csrf": csrf, "UserName": name, "RealName": "again", "Password": "x"})
    assert refused.status_code == 303 and "sm_flash" in refused.cookies  # said on the next page
    assert "密码至少" in admin.get("/accounts").text

    # an operator sees no accounts or settings, and its own password change ends its session
    operator = sign_in(system, name, "first-pw-1")
    assert 'id="nav-accounts"' not in operator.get("/tasks").text
    assert operator.get("/settings").status_code == 403 and operator.get("/accounts").status_code == 403
    wrong = operator.post("/password", data={"csrf": csrf_of(operator), "OldPassword": "nope", "NewPassword": "second-pw-2"})
    assert wrong.status_code == 400 and "原密码错误" in wrong.text
    changed = operator.post("/password", data={"csrf": csrf_of(operator), "OldPassword": "first-pw-1",
                                               "NewPassword": "second-pw-2"})
    assert changed.status_code == 303 and changed.headers["location"] == "/login"
    assert operator.get("/tasks").status_code == 303  # signed out by the change
    sign_in(system, name, "second-pw-2")

    # settings: a secret is shown masked and saving the mask leaves it as it was
    before = {r["Key"]: r["Value"] for r in httpx.get(f"{system.api}/api/System/Configs", headers=AUTH,
                                                      timeout=30).json()["Data"]}
    store_path = system.data_dir / "schedulemaster.db"
    assert store_path.exists()
    secret = "s3cret-" + uuid.uuid4().hex[:6]
    assert httpx.post(f"{system.api}/api/System/SaveConfig", headers=AUTH, timeout=30,
                      data={"Email_FromAccountPwd": secret}).json()["Success"]
    try:
        page = admin.get("/settings").text
        assert secret not in page and 'name="Email_FromAccountPwd" value="******"' in page
        form = dict(re.findall(r'<input name="([A-Za-z_]+)" value="([^"]*)"', page))
        saved = admin.post("/settings", data={"csrf": csrf_of(admin, "/settings"), **form})
        assert saved.status_code == 303
        bad = admin.post("/settings", data={"csrf": csrf_of(admin, "/settings"), "Http_RequestTimeout": "soon"})
        assert bad.status_code == 303 and "Http_RequestTimeout" in admin.get("/settings").text
        with sqlite3.connect(store_path) as db:
            stored = dict(db.execute("SELECT key, value FROM systemconfigs").fetchall())
        assert stored["Email_FromAccountPwd"] == secret and stored["Http_RequestTimeout"] == before["Http_RequestTimeout"]
    finally:
        httpx.post(f"{system.api}/api/System/SaveConfig", headers=AUTH, timeout=30,
                   data={"Email_FromAccountPwd": before["Email_FromAccountPwd"] or ""})

    # the system log lists run logs, linking a task's lines to the task (not the dispatcher's);
    # a bad filter is said, not a 500
    task_id = system.post("Create", data=task_form(receiver, "logged", RunNow="true")).json()["Data"]
    log = wait_until(lambda: f'href="/tasks/{task_id}"' in (html := admin.get("/log").text) and html, timeout=60)
    system.post("Stop", data={"id": task_id})
    linked = set(re.findall(r'href="/tasks/([0-9a-f-]{36})"', log))
    assert task_id in linked
    dispatcher = system.pf("GET", "/deployments/name/schedulemaster-delayed/dispatcher").json()["id"]
    own = wait_until(lambda: "<code>" in (html := admin.get("/log", params={"taskId": dispatcher}).text) and html,
                     timeout=60)  # the dispatcher's own lines: no link to a task page that is none
    assert f'href="/tasks/{dispatcher}"' not in own
    assert admin.get("/log", params={"startDate": "yesterday"}).status_code == 400


def test_keepers_and_children_are_chosen_by_name(system, receiver):
    child_title = f"child {uuid.uuid4().hex[:6]}"
    child = system.post("Create", data=task_form(receiver, child_title)).json()["Data"]
    client = sign_in(system)
    form = client.get("/tasks/new").text
    assert re.search(rf'<option value="{child}"\s*>{child_title}</option>', form)
    assert re.search(r'name="Keepers" value="1"\s*>\s*超级管理员 \(admin\)', form)
    made = client.post("/tasks/new", data={"csrf": csrf_of(client), **task_form(receiver, "a parent"),
                                           "Keepers": "1", "Nexts": child})
    assert made.status_code == 303, made.text
    parent = made.headers["location"].rsplit("/", 1)[1]
    spec = system.pf("GET", f"/deployments/{parent}").json()["parameters"]["task"]
    assert spec["Nexts"] == [child] and spec["Keepers"] == [1]
    edit = client.get(f"/tasks/{parent}/edit").text
    assert re.search(rf'<option value="{child}"\s*selected>', edit)
    assert re.search(r'name="Keepers" value="1"\s*checked>', edit)
    # a child that is no task is refused beside the field, nothing written
    missing = str(uuid.uuid4())
    bad = client.post("/tasks/new", data={"csrf": csrf_of(client), **task_form(receiver, "orphan parent"),
                                          "Nexts": missing})
    assert bad.status_code == 400
    assert re.search(r'id="field-Nexts">.*?class="error">子任务不存在', bad.text, re.S)


def test_policies_are_set_in_the_form_shown_on_the_page_and_kept_by_an_edit(system, receiver):
    client = sign_in(system)
    blank = client.get("/tasks/new").text  # the defaults, preselected
    assert re.search(r'<option value="queue" selected>', blank) and 'name="MisfireThresholdSeconds" value="60"' in blank
    made = client.post("/tasks/new", data={"csrf": csrf_of(client), **task_form(
        receiver, "policies by form", OverlapPolicy="parallel", MaxParallel="2", Retries="3",
        RetryBackoff="exponential", FailOnNon2xx="true", ExpectedText="OK")})
    assert made.status_code == 303, made.text
    tid = made.headers["location"].rsplit("/", 1)[1]
    page = client.get(f"/tasks/{tid}").text
    assert re.search(r'id="policy">[^<]*overlap parallel up to 2[^<]*3 retries every 10 s \(exponential\)', page)
    edit = client.get(f"/tasks/{tid}/edit").text
    assert re.search(r'<option value="parallel" selected>', edit) and 'name="ExpectedText" value="OK"' in edit
    # the edit form sent back as it was shown changes nothing; emptied, the text goes
    fields = dict(re.findall(r'<input name="(\w+)" value="([^"]*)"', edit))
    assert client.post(f"/tasks/{tid}/edit", data={"csrf": csrf_of(client), **task_form(receiver, "policies by form"),
                                                    **fields, "OverlapPolicy": "parallel", "FailOnNon2xx": "true",
                                                    "RetryBackoff": "exponential", "ExpectedText": ""}).status_code == 303
    policy = system.detail(tid)["Policy"]
    assert (policy["MaxParallel"], policy["Retries"], policy["FailOnNon2xx"], policy["ExpectedText"]) == (2, 3, True, None)
    system.post("Delete", data={"id": tid})
