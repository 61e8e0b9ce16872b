"""The scale paths of the task book against a real system with a few hundred tasks: the
master's versions endpoint (what changed since when), QueryList paged and filtered in the
database, and a node noticing a task deleted behind the legacy API's back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import FAST_REFRESH, System

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TASKS = 150
VERSIONS = "/schedulemaster/tasks/versions"
READ = "/schedulemaster/tasks/read"
CHANGES = "/schedulemaster/tasks/changes"
WORK_WAIT = "/schedulemaster/work/wait"  # master/new_runs.py
TROUBLE = "/schedulemaster/tasks/trouble"  # master/task_trouble.py


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """A system of its own holding TASKS stopped tasks titled book-000 .. book-149, oldest first."""
    s = System(tmp_path_factory.mktemp("sm-book"), env=FAST_REFRESH).start()
    try:
        ids = [s.create_http("http://127.0.0.1:9/never", Title=f"book-{i:03d}") for i in range(TASKS)]
        yield s, ids
    finally:
        s.stop()


@pytest.mark.parametrize("path", [VERSIONS, READ, CHANGES, WORK_WAIT, TROUBLE])
def test_the_task_endpoints_need_the_prefect_credential(book, path):
    system, _ids = book
    r = httpx.post(f"{system.prefect}{path}", json={}, timeout=30)
    assert r.status_code == 401


def test_only_a_node_itself_says_what_it_cannot_load(book):
    """Prefect's credential is not enough: the node's own token is (a node registered as
    worker1 holds it; this caller does not)."""
    system, ids = book
    body = {"task_id": ids[0], "node": "worker1", "message": "forged: the plugin does not load"}
    r = system.pf("POST", TROUBLE, json=body)
    assert r.status_code == 403, r.text
    for bad in ({**body, "node": "a/b"}, {**body, "message": "x" * 2001}, {**body, "task_id": "nope"}):
        assert system.pf("POST", TROUBLE, json=bad).status_code == 422
    assert system.detail(ids[0])["Unschedulable"] is None


def test_read_gives_the_rows_asked_for_or_a_page(book):
    system, ids = book
    some = system.pf("POST", READ, json={"ids": ids[:3] + ["00000000-0000-0000-0000-000000000000"]}).json()
    assert some["total"] == TASKS and sorted(r["id"] for r in some["rows"]) == sorted(ids[:3])
    assert {r["parameters"]["task"]["Title"] for r in some["rows"]} == {"book-000", "book-001", "book-002"}
    page = system.pf("POST", READ, json={"offset": 140, "limit": 100}).json()
    assert [r["id"] for r in page["rows"]] == list(reversed(ids))[140:]
    # by mark: the page after a row holds what the offset would, the stats included
    first = system.pf("POST", READ, json={"limit": 100, "stats": True}).json()
    mark = {"created": first["rows"][-1]["created"], "id": first["rows"][-1]["id"]}
    rest = system.pf("POST", READ, json={"limit": 100, "before": mark, "stats": True}).json()
    assert [r["id"] for r in first["rows"] + rest["rows"]] == list(reversed(ids)) and rest["total"] == TASKS
    assert rest["rows"][0]["total_runs"] == 0 and rest["rows"][0]["parameters"]["task"]["Title"] == "book-049"


@pytest.mark.parametrize("body", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"ids": "all"},
                                  {"ids": ["00000000-0000-0000-0000-000000000000"] * 1001}, {"ids": ["nope"]},
                                  {"before": {"created": "yesterday", "id": "00000000-0000-0000-0000-000000000000"}},
                                  {"before": {"created": "2026-01-01T00:00:00Z"}}, {"before": "'; DROP TABLE x"}])
def test_read_refuses_bad_bounds_and_ids(book, body):
    system, _ids = book
    assert system.pf("POST", READ, json=body).status_code == 422


def test_versions_say_what_changed_since_a_look(book):
    system, ids = book
    every = system.pf("POST", VERSIONS, json={"since": None}).json()
    assert every["count"] == TASKS and {t["id"] for t in every["tasks"]} == set(ids)
    nothing = system.pf("POST", VERSIONS, json={"since": every["as_of"]}).json()
    assert nothing["tasks"] == [] and nothing["count"] == TASKS

    edited = ids[7]
    detail = system.detail(edited)
    form = {"Id": edited, "Title": "book-007 edited", "MetaType": "2", "RunLoop": "true",
            "CronExpression": detail["CronExpression"], "HttpRequestUrl": "http://127.0.0.1:9/other",
            "HttpMethod": "POST", "HttpContentType": "application/json", "HttpBody": "{}"}
    assert system.post("Edit", data=form).json()["Success"]
    changed = system.pf("POST", VERSIONS, json={"since": every["as_of"]}).json()
    assert [t["id"] for t in changed["tasks"]] == [edited]
    system.post("Edit", data={**form, "Title": "book-007"})  # as it was, for the other tests


@pytest.mark.parametrize("since", ["yesterday", {"at": 1}, [], "2026-13-40T00:00:00Z"])
def test_versions_refuse_a_malformed_since(book, since):
    system, _ids = book
    assert system.pf("POST", VERSIONS, json={"since": since}).status_code == 422


def test_a_wait_for_changes_answers_when_the_task_book_changes(book):
    """What a node does between two looks: wait on the master with the token of its last look."""
    system, ids = book
    token = system.pf("POST", VERSIONS, json={"since": None}).json()["token"]
    assert system.pf("POST", CHANGES, json={"token": "an older look", "wait": 25}).json()["token"] == token
    assert system.pf("POST", CHANGES, json={"token": token, "wait": 1}).json()["token"] == token  # nothing moved
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(system.pf, "POST", CHANGES, json={"token": token, "wait": 25})
        time.sleep(1)
        assert not waiting.done()
        detail = system.detail(ids[5])
        form = {"Id": ids[5], "Title": "book-005 edited", "MetaType": "2", "RunLoop": "true",
                "CronExpression": detail["CronExpression"], "HttpRequestUrl": "http://127.0.0.1:9/never",
                "HttpMethod": "POST", "HttpContentType": "application/json", "HttpBody": "{}"}
        assert system.post("Edit", data=form).json()["Success"]
        answer = waiting.result(timeout=40).json()["token"]
        waited = time.monotonic() - started
    now = system.pf("POST", VERSIONS, json={"since": None}).json()["token"]
    system.post("Edit", data={**form, "Title": "book-005"})  # as it was, for the other tests
    assert answer != token and waited < 20, (answer, waited)
    assert now == answer


def test_creating_and_editing_a_task_are_prefect_deployment_events(book):
    """Both events name the deployment and relate its flow, work queue and work pool, as
    Prefect's own create/update_deployment events do (the repository builds them itself)."""
    system, ids = book
    detail = system.detail(ids[11])
    form = {"Id": ids[11], "Title": "book-011 edited", "MetaType": "2", "RunLoop": "true",
            "CronExpression": detail["CronExpression"], "HttpRequestUrl": "http://127.0.0.1:9/never",
            "HttpMethod": "POST", "HttpContentType": "application/json", "HttpBody": "{}"}
    assert system.post("Edit", data=form).json()["Success"]
    system.post("Edit", data={**form, "Title": "book-011"})
    query = {"filter": {"any_resource": {"id": [f"prefect.deployment.{ids[11]}"]},
                        "event": {"prefix": ["prefect.deployment."]}, "occurred": {"since": "2000-01-01T00:00:00Z"}},
             "limit": 50}
    deadline = time.monotonic() + 30  # the event persister writes every few seconds
    while True:
        events = system.pf("POST", "/events/filter", json=query).json()["events"]
        names = {e["event"] for e in events}
        if {"prefect.deployment.created", "prefect.deployment.updated"} <= names or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {"prefect.deployment.created", "prefect.deployment.updated"} <= names, names
    for e in events:
        roles = {r["prefect.resource.role"] for r in e["related"]}
        assert roles >= {"flow", "work-queue", "work-pool"}, e
    updated = next(e for e in events if e["event"] == "prefect.deployment.updated")
    assert "parameters" in updated["payload"]["updated_fields"]


@pytest.mark.parametrize("body", [{}, {"token": "t"}, {"wait": 1}, {"token": "t", "wait": -1},
                                  {"token": "t", "wait": 31}, {"token": "t" * 101, "wait": 1},
                                  {"token": ["t"], "wait": 1}, {"token": "t", "wait": "soon"}])
def test_changes_refuse_a_bad_token_or_wait(book, body):
    system, _ids = book
    assert system.pf("POST", CHANGES, json=body).status_code == 422


def test_query_list_pages_and_filters_in_the_database(book):
    system, ids = book
    page = system.get("QueryList", {"pageNumber": "2", "pageSize": "50"}).json()
    assert page["total"] == TASKS
    newest_first = list(reversed(ids))
    assert [r["Id"] for r in page["rows"]] == newest_first[50:100]

    tens = system.get("QueryList", {"pageNumber": "1", "pageSize": "100", "name": "book-01"}).json()
    assert tens["total"] == 10
    assert [r["Title"] for r in tens["rows"]] == [f"book-{i:03d}" for i in range(19, 9, -1)]
    # the filter is a literal, case-sensitive substring (SQL wildcards match nothing here)
    for literal in ("%", "_", "BOOK"):
        assert system.get("QueryList", {"pageNumber": "1", "pageSize": "10", "name": literal}).json()["total"] == 0
    beyond = system.get("QueryList", {"pageNumber": "1000000", "pageSize": "1000"}).json()
    assert beyond == {"total": TASKS, "rows": []}


def test_a_task_deleted_in_prefect_stops_firing(book, receiver):
    system, _ids = book
    tid = system.create_http(receiver.url("/book-deleted"), cron="* * * * * ?", Title="deleted behind its back",
                             RunNow="true")
    receiver.wait_for("/book-deleted", 2, timeout=30)
    assert system.pf("DELETE", f"/deployments/{tid}").status_code == 204  # as the Prefect UI deletes
    # the node notices through the count of tasks and drops it: a 4 s stretch with no firing
    deadline = time.monotonic() + 25
    while True:
        before = len(receiver.at("/book-deleted"))
        time.sleep(4)
        if len(receiver.at("/book-deleted")) == before:
            break
        assert time.monotonic() < deadline, "still firing 25 s after its deployment was deleted"
