"""The global alarm channels (schedulemaster/alarms.py, the Alarm_AppriseUrlsPwd setting) on a
real system: Apprise's generic webhook (json://) against a real receiver stands in for DingTalk,
WeCom, Feishu and Slack, which are the same code path with another URL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from schedulemaster.master.failover import Failover

from helpers import AUTH, wait_until

SETTING = "Alarm_AppriseUrlsPwd"


def save(system, **values) -> dict:
    return httpx.post(f"{system.api}/api/System/SaveConfig", data=values, headers=AUTH, timeout=30).json()


def setting(system) -> str:
    rows = httpx.get(f"{system.api}/api/System/Configs", headers=AUTH, timeout=30).json()["Data"]
    return next(r["Value"] for r in rows if r["Key"] == SETTING)


@pytest.mark.e2e
@pytest.mark.parametrize("value", ["notascheme://x", "http//x", "json://ok/a " * 21, "json://h/" + "x" * 2100])
def test_a_bad_alarm_channel_is_refused_and_nothing_changes(system, value):
    before = setting(system)
    body = save(system, **{SETTING: value})
    assert body["Success"] is False and SETTING in body["Message"] and "Apprise" in body["Message"], body
    assert setting(system) == before


@pytest.mark.e2e
def test_failures_and_delayed_tasks_failing_for_good_reach_the_alarm_channels(system, receiver):
    hook = receiver.url("/alarm").replace("http://", "json://")
    assert save(system, **{SETTING: hook, "DelayTask_RetryTimes": "0"})["Success"]
    assert setting(system) == "******"  # the URL carries the channel's token: masked like a password
    title = f"alarmed {uuid.uuid4().hex[:6]}"
    tid = system.create_http("http://127.0.0.1:1/refused", cron="* * * * * ?", Title=title, RunNow="true")
    try:
        first = receiver.wait_for("/alarm", 1, timeout=60)[0]
        sent = json.loads(first.body)
        assert title in sent["title"] and sent["type"] == "failure", sent
        # the task keeps failing every second; its alarms are held back for a minute
        wait_until(lambda: system.detail(tid) is not None, timeout=5)
        system.post("Stop", data={"id": tid})
        assert len([h for h in receiver.at("/alarm") if title in json.loads(h.body)["title"]]) == 1
        key = f"alarm-{uuid.uuid4().hex[:6]}"
        r = httpx.post(f"{system.api}/api/DelayTask/Create", headers=AUTH, timeout=30, data={
            "SourceApp": "alarms", "Topic": "alarm-topic", "ContentKey": key, "DelayTimeSpan": "1",
            "NotifyUrl": "http://127.0.0.1:1/refused", "NotifyDataType": "application/json", "NotifyBody": "{}"})
        assert r.json()["Success"], r.text
        hit = wait_until(lambda: [h for h in receiver.at("/alarm") if "alarm-topic" in json.loads(h.body)["title"]],
                         timeout=60)[0]
        assert key in json.loads(hit.body)["title"]
    finally:
        system.post("Stop", data={"id": tid})
        save(system, **{SETTING: "", "DelayTask_RetryTimes": "3"})


def test_a_node_going_offline_is_told_once_until_it_comes_back():
    told = []

    async def tell(name, why):
        told.append((name, why))

    async def ticks():
        f = Failover(None, None, "pool", on_node_offline=tell)
        now = datetime.now(timezone.utc)
        await f._tell_offline({"w2"}, {"w1"}, {"w2": now}, now)
        await f._tell_offline({"w2"}, {"w1"}, {"w2": now}, now)  # still offline: said already
        await f._tell_offline(set(), {"w1", "w2"}, {}, now)       # back
        await f._tell_offline({"w2"}, {"w1"}, {}, now)            # gone again: said again

    asyncio.run(ticks())
    assert [n for n, _ in told] == ["w2", "w2"]
    assert told[0][1].startswith("node w2 went offline (last heartbeat 0 s ago") and "no heartbeat" in told[1][1]
