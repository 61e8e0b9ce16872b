"""The console on the legacy port, against a live system: its doors (session, CSRF, roles),
its forms (errors beside their field, nothing written), its escaping, and, in a real browser
(Playwright on Debian's chromium), an operator's day: sign in, create a task that fires, pause
it and see Prefect report it paused."""

import re
import uuid

import httpx
import pytest

from helpers import AUTH

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
    page.close()
