"""Per-task policies against a real receiver, node and Prefect: overlap, timeout, retries, what
a failure is, misfire after a node stops; the legacy API's fields for them."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from helpers import wait_until

pytestmark = pytest.mark.e2e


def runs_of(system, tid):
    return [r for r in system.flow_runs(tid) if "fire" in (r["parameters"] or {})]


def not_run(run) -> str | None:
    """Why a firing did not run to its end (its run is Cancelled; the reason is in ``fire``)."""
    return run["parameters"]["fire"].get("not_run")


def concurrent_peak(hits, duration: float) -> int:
    """How many requests were in flight at once at most, each taking ``duration`` seconds."""
    starts = sorted(h.at for h in hits)
    return max((sum(1 for s in starts if t <= s < t + duration) for t in starts), default=0)


def test_overlap_skip_records_the_skipped_instants_and_never_overlaps(system, receiver):
    receiver.on("/ov/skip", delay=2.5)
    tid = system.create_http(receiver.url("/ov/skip"), cron="* * * * * ?", Title="overlap skip",
                             OverlapPolicy="skip", RunNow="true")
    receiver.wait_for("/ov/skip", 3, timeout=30)
    skipped = wait_until(lambda: [r for r in runs_of(system, tid) if not_run(r) == "Skipped"] or None,
                         timeout=30)
    system.post("Stop", data={"id": tid})
    hits = receiver.at("/ov/skip")
    assert concurrent_peak(hits, 2.4) == 1, [h.at for h in hits]
    run = skipped[0]
    assert (run["state_type"], run["state_name"], run["start_time"]) == ("CANCELLED", "Cancelled", None)
    assert "the previous run is still going (OverlapPolicy skip)" in run["state"]["message"]
    assert run["name"].endswith("· skipped")
    assert system.detail(tid)["Policy"]["OverlapPolicy"] == "skip"
    traces = system.get("QueryTraces", {"id": tid, "result": 3, "pageNumber": 1, "pageSize": 50}).json()["Data"]
    assert traces["rows"] and {(r["Result"], r["State"]) for r in traces["rows"]} == {(3, "Skipped")}


def test_overlap_parallel_runs_up_to_max_parallel_at_once(system, receiver):
    receiver.on("/ov/par", delay=3.2)
    tid = system.create_http(receiver.url("/ov/par"), cron="* * * * * ?", Title="overlap parallel",
                             OverlapPolicy="parallel", MaxParallel="3", RunNow="true")
    receiver.wait_for("/ov/par", 6, timeout=40)
    system.post("Stop", data={"id": tid})
    peak = concurrent_peak(receiver.at("/ov/par"), 3.1)
    assert peak == 3, peak


def test_overlap_cancel_cancels_the_running_firing_for_the_new_one(system, receiver):
    receiver.on("/ov/cancel", delay=3.5)
    tid = system.create_http(receiver.url("/ov/cancel"), cron="0/2 * * * * ?", Title="overlap cancel",
                             OverlapPolicy="cancel", RunNow="true")
    cancelled = wait_until(lambda: [r for r in runs_of(system, tid) if r["state_type"] == "CANCELLED"] or None,
                           timeout=40)
    hits = receiver.wait_for("/ov/cancel", 5, timeout=30)
    system.post("Stop", data={"id": tid})
    run = cancelled[0]
    assert not_run(run) == "Cancelled" and "a newer firing took its place" in run["state"]["message"]
    # every firing started on its instant, none waited for the one before (the first may have
    # been caught up late: due between the Start and the node taking the task)
    gaps = [b.at - a.at for a, b in zip(hits[1:], hits[2:])]
    assert all(1.5 < g < 2.6 for g in gaps[:3]), gaps


def test_a_task_timeout_fails_the_firing_with_timeout(system, receiver):
    receiver.on("/pol/slow", delay=4)
    tid = system.create_http(receiver.url("/pol/slow"), cron="0/3 * * * * ?", Title="timeout 1 s",
                             TimeoutSeconds="1", RunNow="true")
    run = wait_until(lambda: next(iter(runs_of(system, tid)), None), timeout=40)
    system.post("Stop", data={"id": tid})
    assert run["state_type"] == "FAILED" and "timeout: no answer within 1 s" in run["state"]["message"]
    assert run["end_time"] and (datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(
        run["start_time"])).total_seconds() < 2.5


def test_retries_send_the_same_key_with_the_attempt_number_and_record_each_attempt(system, receiver):
    receiver.script("/pol/flaky", (500, "down"), (500, "down"), (200, "success"))
    tid = system.create_http(receiver.url("/pol/flaky"), cron="0 0 3 * * ?", Title="retries", RunNow="true")
    # a one-off firing comes from a one-shot: edit the task to fire once, two seconds on
    system.post("Stop", data={"id": tid})
    at = datetime.fromtimestamp(time.time() + 3).replace(microsecond=0)
    edit = system.post("Edit", data={"Id": tid, "Title": "retries", "MetaType": "2", "RunLoop": "false",
                                     "StartDate": at.strftime("%Y-%m-%d %H:%M:%S"),
                                     "HttpRequestUrl": receiver.url("/pol/flaky"), "HttpMethod": "GET",
                                     "Retries": "3", "RetryIntervalSeconds": "1", "FailOnNon2xx": "true"}).json()
    assert edit["Success"], edit
    assert system.post("Start", data={"id": tid}).json()["Success"]
    hits = receiver.wait_for("/pol/flaky", 3, timeout=40)
    time.sleep(1.5)
    assert len(receiver.at("/pol/flaky")) == 3  # the third answered 200: no fourth
    assert len({h.headers["idempotency-key"] for h in hits}) == 1
    assert [h.headers["sm-attempt"] for h in hits] == ["1", "2", "3"]
    assert 0.9 < hits[1].at - hits[0].at < 2.5
    runs = wait_until(lambda: (lambda r: r if len(r) == 3 else None)(runs_of(system, tid)), timeout=30)
    by_attempt = {r["parameters"]["fire"].get("attempt", 1): r for r in runs}
    assert [by_attempt[n]["state_type"] for n in (1, 2, 3)] == ["FAILED", "FAILED", "COMPLETED"]
    assert "attempt 1, retried" in by_attempt[1]["state"]["message"]
    assert by_attempt[3]["name"].endswith("· attempt 3")
    assert by_attempt[1]["idempotency_key"] == hits[0].headers["idempotency-key"]
    # the task counts one successful run, not three
    assert system.detail(tid)["TotalRunCount"] == 1


def test_expected_text_and_fail_on_non_2xx_decide_what_a_failure_is(system, receiver):
    receiver.on("/pol/text", 200, "result: ERROR")
    receiver.on("/pol/500", 500, "boom")
    text = system.create_http(receiver.url("/pol/text"), cron="0/2 * * * * ?", Title="expected text",
                              ExpectedText="result: OK", RunNow="true")
    code = system.create_http(receiver.url("/pol/500"), cron="0/2 * * * * ?", Title="non-2xx fails",
                              FailOnNon2xx="true", RunNow="true")
    text_run = wait_until(lambda: next(iter(runs_of(system, text)), None), timeout=40)
    code_run = wait_until(lambda: next(iter(runs_of(system, code)), None), timeout=40)
    for tid in (text, code):
        system.post("Stop", data={"id": tid})
    assert text_run["state_type"] == "FAILED"
    assert "does not contain the expected text 'result: OK'" in text_run["state"]["message"]
    assert code_run["state_type"] == "FAILED" and "HTTP 500 is not a 2xx answer" in code_run["state"]["message"]


def test_misfire_policies_after_the_tasks_node_was_away(system, receiver):
    """A node stopped for longer than the misfire threshold: on its return ``skip`` records
    the gap as one Missed run, ``once`` fires one of them and records the rest, ``all`` fires
    every instant of the gap."""
    node = system.start_node("misfire1")
    try:
        system.wait_node("misfire1")
        ids = {}
        for policy in ("skip", "once", "all"):
            ids[policy] = system.create_http(receiver.url(f"/mf/{policy}"), cron="* * * * * ?",
                                             Title=f"misfire {policy}", Executors="misfire1",
                                             MisfirePolicy=policy, MisfireThresholdSeconds="2", RunNow="true")
        for policy in ids:
            receiver.wait_for(f"/mf/{policy}", 2, timeout=30)
        system.stop_node(node)
        stopped = time.time()
        # the name is free again once Prefect counts the stopped node offline (no heartbeat)
        wait_until(lambda: not any(w["name"] == "misfire1" and w["status"] == "ONLINE" for w in system.pf(
            "POST", "/work_pools/schedulemaster/workers/filter", json={}).json()), timeout=90)
        time.sleep(max(0.0, stopped + 8 - time.time()))
        before = {p: len(receiver.at(f"/mf/{p}")) for p in ids}
        node = wait_until(lambda: restarted(system, "misfire1"), timeout=60, interval=1)
        missed = {p: wait_until(lambda p=p: [r for r in runs_of(system, ids[p]) if not_run(r) == "Missed"
                                             and "missed" in r["parameters"]["fire"]] or None, timeout=40)
                  for p in ("skip", "once")}
        for p in ids:
            receiver.wait_for(f"/mf/{p}", before[p] + 3, timeout=30)
        time.sleep(1)
        for tid in ids.values():
            system.post("Stop", data={"id": tid})
    finally:
        system.forget_node(node, "misfire1")
    for p in ("skip", "once"):
        run = missed[p][0]
        assert run["state_type"] == "CANCELLED" and run["parameters"]["fire"]["missed"] >= 3
        assert f"MisfirePolicy {p}" in run["state"]["message"], run["state"]["message"]
    assert not [r for r in runs_of(system, ids["all"]) if not_run(r) == "Missed"]
    # ``all``: every second of the gap was fired after all
    fired = sorted({datetime.fromisoformat(r["parameters"]["fire"]["scheduled"]).timestamp()
                    for r in runs_of(system, ids["all"]) if r["state_type"] == "COMPLETED"})
    gap = [t for t in fired if stopped + 1 < t < stopped + 7]
    assert len(gap) >= 5, (stopped, fired)
    assert fired == list(range(int(fired[0]), int(fired[-1]) + 1)) or len(fired) > 0.9 * (fired[-1] - fired[0]), fired
    # ``once``: the gap's requests that arrived after the return are one, plus the timely ones
    assert missed["once"][0]["parameters"]["fire"]["missed"] >= 4


def restarted(system, name, env=None):
    """The node started again, or None while the master still refuses its name."""
    node = system.start_node(name, env=env)  # called once the old process counts offline
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if node.poll() is not None:  # refused: the name is still held
            return None
        if any(w["name"] == name and w["status"] == "ONLINE"
               for w in system.pf("POST", "/work_pools/schedulemaster/workers/filter", json={}).json()):
            return node
        time.sleep(0.5)
    system.stop_node(node)
    return None


@pytest.mark.parametrize("fields, field", [
    ({"OverlapPolicy": "sometimes"}, "OverlapPolicy"),
    ({"Retries": "99"}, "Retries"),
    ({"TimeoutSeconds": "-5"}, "TimeoutSeconds"),
    ({"MisfirePolicy": "<script>"}, "MisfirePolicy"),
    ({"ExpectedText": "x" * 500}, "ExpectedText"),
])
def test_bad_policy_fields_are_refused_with_the_field_named_and_nothing_written(system, receiver, fields, field):
    before = system.get("QueryList", {"pageNumber": 1, "pageSize": 1}).json()["total"]
    r = system.post("Create", data={"Title": "bad policy", "MetaType": "2", "RunLoop": "true",
                                    "CronExpression": "0/5 * * * * ?", "HttpRequestUrl": receiver.url("/x"),
                                    **fields})
    body = r.json()
    assert r.status_code == 200 and body["Success"] is False and field in body["Message"], body
    assert r.headers.get("x-sm-field") == field
    assert system.get("QueryList", {"pageNumber": 1, "pageSize": 1}).json()["total"] == before


def test_an_unparseable_number_is_a_binding_error_in_the_legacy_shape(system, receiver):
    r = system.post("Create", data={"Title": "bad number", "MetaType": "2", "RunLoop": "true",
                                    "CronExpression": "0/5 * * * * ?", "HttpRequestUrl": receiver.url("/x"),
                                    "Retries": "three"})
    assert r.status_code == 400 and "Retries" in r.json()["errors"]


def test_edit_keeps_policies_it_does_not_name_and_the_prefect_description_shows_them(system, receiver):
    tid = system.create_http(receiver.url("/pol/keep"), cron="0 0 3 * * ?", Title="keeps policies",
                             Retries="2", OverlapPolicy="skip", ExpectedText="OK")
    edit = system.post("Edit", data={"Id": tid, "Title": "keeps policies 2", "MetaType": "2", "RunLoop": "true",
                                     "CronExpression": "0 0 4 * * ?", "HttpRequestUrl": receiver.url("/pol/keep"),
                                     "TimeoutSeconds": "9"}).json()
    assert edit["Success"], edit
    p = system.detail(tid)["Policy"]
    assert (p["Retries"], p["OverlapPolicy"], p["ExpectedText"], p["TimeoutSeconds"]) == (2, "skip", "OK", 9)
    description = system.pf("GET", f"/deployments/{tid}").json()["description"]
    assert "overlap skip" in description and "2 retries" in description and "timeout 9 s" in description
    cleared = system.post("Edit", data={"Id": tid, "Title": "keeps policies 2", "MetaType": "2", "RunLoop": "true",
                                        "CronExpression": "0 0 4 * * ?", "HttpRequestUrl": receiver.url("/pol/keep"),
                                        "ExpectedText": ""}).json()
    assert cleared["Success"] and system.detail(tid)["Policy"]["ExpectedText"] is None
    system.post("Delete", data={"id": tid})


def test_a_plugin_that_does_not_load_after_its_nodes_restart_says_why_and_clears(system, receiver):
    node = system.start_node("trouble1")
    try:
        system.wait_node("trouble1")
        tid = system.create_plugin("BreaksOnRestart", cron="* * * * * ?", Title="breaks on restart",
                                   Executors="trouble1", params={"url": receiver.url("/trouble")})
        assert system.post("Start", data={"id": tid}).json()["Success"]
        receiver.wait_for("/trouble", 1, timeout=30)
        assert system.detail(tid)["Unschedulable"] is None
        for broken in (True, False):
            system.stop_node(node)
            wait_until(lambda: not any(w["name"] == "trouble1" and w["status"] == "ONLINE" for w in system.pf(
                "POST", "/work_pools/schedulemaster/workers/filter", json={}).json()), timeout=90)
            env = {"SM_TEST_BREAK_INIT": "1"} if broken else {}
            node = wait_until(lambda: restarted(system, "trouble1", env), timeout=60, interval=1)
            if broken:
                why = wait_until(lambda: system.detail(tid)["Unschedulable"], timeout=30)
                assert why.startswith("its plugin does not load on node trouble1:") and "warehouse is gone" in why
                arrived = len(receiver.at("/trouble"))
                time.sleep(3)
                assert len(receiver.at("/trouble")) == arrived  # it fires nothing, and says so
                master_log = system.data_dir / "logs" / "master.log"
                wait_until(lambda: f"task {tid} [breaks on restart] is Running and fires nothing" in
                           master_log.read_text(errors="replace"), timeout=30)
            else:
                wait_until(lambda: system.detail(tid)["Unschedulable"] is None, timeout=30)
                receiver.wait_for("/trouble", len(receiver.at("/trouble")) + 1, timeout=30)
        system.post("Stop", data={"id": tid})
    finally:
        system.forget_node(node, "trouble1")
