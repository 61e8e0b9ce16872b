"""The master's Prometheus metrics (schedulemaster/master/metrics.py) on a real system: the door
(the legacy API's credentials, or HTTP Basic with a legacy account), and what a scrape reads
after real firings and a real delayed callback."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import AUTH, wait_until

pytestmark = pytest.mark.e2e


def scrape(system, headers=None) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{system.api}/metrics", headers=AUTH if headers is None else headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("headers", [
    {}, basic("admin", "wrong"), basic("nobody", "111111"), {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"admin:" + b"x" * 5000).decode()},
    {"ms_auth_user": "admin", "ms_auth_secret": "0" * 32}, {"Authorization": "Bearer 811a5cb95196217ed3fda54cf73b9244"},
])
def test_metrics_refuse_a_caller_without_credentials(system, headers):
    r = httpx.get(f"{system.api}/metrics", headers=headers, timeout=30)
    assert r.status_code == 401 and "schedulemaster_" not in r.text
    assert r.headers["www-authenticate"].startswith("Basic")


def test_metrics_answer_get_only(system):
    r = httpx.post(f"{system.api}/metrics", headers=AUTH, timeout=30)
    assert r.status_code == 405


def test_metrics_count_firings_nodes_and_delayed_callbacks(system, receiver):
    receiver.on("/metrics/bad", status=500, text="no")
    before = scrape(system, basic("admin", "111111"))  # a Prometheus basic_auth with the console's account
    assert before[("schedulemaster_node_up", (("node", "worker1"),))] == 1
    assert before[("schedulemaster_node_enabled", (("node", "worker1"),))] == 1
    assert ("schedulemaster_delayed_tasks", (("status", "ready"),)) in before
    ok = system.create_http(receiver.url("/metrics/ok"), cron="* * * * * ?", Title="metrics ok", RunNow="true")
    bad = system.create_http(receiver.url("/metrics/bad"), cron="* * * * * ?", Title="metrics bad", RunNow="true")
    key = f"m-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{system.api}/api/DelayTask/Create", headers=AUTH, timeout=30, data={
        "SourceApp": "metrics", "Topic": "t", "ContentKey": key, "DelayTimeSpan": "1",
        "NotifyUrl": receiver.url("/metrics/delayed"), "NotifyDataType": "application/json", "NotifyBody": "{}"})
    assert r.json()["Success"], r.text

    def grew(name: str, labels: tuple = (), by: float = 1) -> bool:
        now = scrape(system)
        return now.get((name, labels), 0) >= before.get((name, labels), 0) + by

    try:
        wait_until(lambda: grew("schedulemaster_firings_total", (("outcome", "succeeded"),), 2), timeout=60)
        wait_until(lambda: grew("schedulemaster_firings_non_2xx_total"), timeout=60)  # a success, outside 2xx
        wait_until(lambda: grew("schedulemaster_firing_lateness_seconds_count", by=2), timeout=60)
        wait_until(lambda: grew("schedulemaster_delayed_lateness_seconds_count"), timeout=60)
        after = scrape(system)
        assert after[("schedulemaster_delayed_tasks", (("status", "succeeded"),))] >= 1
        # the buckets are cumulative and end with every observation
        assert after[("schedulemaster_firing_lateness_seconds_bucket", (("le", "+Inf"),))] == \
            after[("schedulemaster_firing_lateness_seconds_count", ())]
    finally:
        for tid in (ok, bad):
            system.post("Stop", data={"id": tid})
