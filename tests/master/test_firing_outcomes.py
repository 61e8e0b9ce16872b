"""How a firing that ran, was retried, or did not run (per its task's policies) is recorded and counted."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from prometheus_client import CollectorRegistry

from schedulemaster.coordination.wire import Firing
from schedulemaster.master.metrics import FiringMetrics
from schedulemaster.master.record_api import final_state, run_message

AT = datetime(2026, 12, 7, 16, 0, 0, tzinfo=timezone.utc)


def firing(**kw) -> Firing:
    values = dict(task_id=uuid.uuid4(), firing_id="f1", title="订单同步", scheduled=AT,
                  started=AT + timedelta(seconds=0.2), finished=AT + timedelta(seconds=1), ok=True,
                  message="HTTP 200 in 800 ms", node="worker1", zone="Asia/Shanghai")
    return Firing(**{**values, **kw})


def test_each_attempt_is_its_own_run_named_and_numbered():
    first = firing(ok=False, message="HTTP 500", attempt=1, last_attempt=False).record()
    third = firing(attempt=3, record_id="f1#3").record()
    assert (first.firing_id, first.name, first.fire["attempt"]) == ("f1", "订单同步 · 2026-12-08 00:00:00", 1)
    assert (third.firing_id, third.name, third.fire["firing_id"]) == ("f1#3", "订单同步 · 2026-12-08 00:00:00 · attempt 3", "f1")
    assert "attempt 1, retried" in run_message(first) and "attempt 3" in run_message(third)
    assert final_state(first).type.value == "FAILED" and final_state(third).type.value == "COMPLETED"


def test_a_firing_that_did_not_run_is_a_cancelled_type_state_named_for_why():
    missed = firing(ok=False, message="missed 7 firing(s)", not_run="Missed", record_id="f1#missed", missed=7).record()
    state = final_state(missed)
    # named as Prefect names it: its UI lists runs by known state names
    assert (state.type.value, state.name) == ("CANCELLED", "Cancelled") and "missed 7" in state.message
    assert missed.name.endswith("· missed") and missed.fire["missed"] == 7
    assert "late" not in run_message(missed)  # how late a firing that never ran is says nothing


def test_metrics_count_outcomes_and_a_missed_gap_by_its_instants():
    registry = CollectorRegistry()
    metrics = FiringMetrics(registry)
    metrics.observe([firing().record(), firing(ok=False).record(),
                     firing(ok=False, not_run="Missed", missed=7).record(),
                     firing(ok=False, not_run="Skipped").record(), firing(ok=False, not_run="Cancelled").record()])

    def count(outcome):
        return registry.get_sample_value("schedulemaster_firings_total", {"outcome": outcome})

    assert [count(o) for o in ("succeeded", "failed", "missed", "skipped", "cancelled")] == [1, 1, 7, 1, 1]
    # only firings that ran have a lateness
    assert registry.get_sample_value("schedulemaster_firing_lateness_seconds_count") == 2


def spec_with(**policy):
    from schedulemaster.deployments.policy import RunPolicy
    from schedulemaster.deployments.spec import TaskSpec

    return TaskSpec(Id="t", Title="t", MetaType=2, Http={"RequestUrl": "http://x"}, Policy=RunPolicy(**policy))


def test_alarms_follow_failures_in_a_row_lateness_and_misses():
    from schedulemaster.master.firing_alarms import FiringAlarms

    tid = uuid.uuid4()
    alarms = FiringAlarms()
    specs = {tid: spec_with(AlarmAfterFailures=3, AlarmLateSeconds=5, AlarmOnMissed=True)}

    def rec(**kw):
        return firing(task_id=tid, **kw).record()

    fail, ok = rec(ok=False, message="HTTP 500"), rec()
    said = [a.message for a in alarms.decide([fail, fail, ok, fail, fail, fail, fail], specs)]
    assert said == ["3 failures in a row; the last: HTTP 500"]  # the success started the count again
    assert [a.message for a in alarms.decide([fail, fail], specs)] == ["6 failures in a row; the last: HTTP 500"]
    # an attempt that is retried, a skipped firing: not failures that count
    retried = rec(ok=False, attempt=1, last_attempt=False)
    # a second attempt starts late by its retry wait: neither a failure nor a late firing to tell
    second = rec(ok=False, attempt=2, last_attempt=False, started=AT + timedelta(seconds=12))
    assert alarms.decide([retried, second, rec(ok=False, not_run="Skipped")], specs) == []
    # its last attempt is the 7th failure in a row (no alarm at 3 a time), and not a late firing
    assert alarms.decide([rec(ok=False, attempt=3, started=AT + timedelta(seconds=30))], specs) == []
    assert alarms.in_a_row[str(tid)] == 7
    late = rec(started=AT + timedelta(seconds=6.5), late_alarm=True)  # its node saw it past AlarmLateSeconds
    on_time = rec(started=AT + timedelta(seconds=4))
    said = [a.message for a in alarms.decide([late, on_time, rec(ok=False, not_run="Missed", missed=3,
                                                                 message="missed 3 firing(s)")], specs)]
    assert said[0].startswith("fired 6.5 s after its instant (AlarmLateSeconds 5)") and said[1:] == ["missed 3 firing(s)"]
    # the defaults: every failure, no lateness or missed alarm
    plain = {tid: spec_with()}
    assert len(FiringAlarms().decide([fail, fail, late, rec(ok=False, not_run="Missed")], plain)) == 2
    # without its spec (not read: nothing could alarm) a record only ends a run of failures
    assert not FiringAlarms.may_alarm(ok) and FiringAlarms.may_alarm(late) and FiringAlarms.may_alarm(fail)
    # a late firing of a task without a lateness alarm: its node did not flag it, no spec is read
    assert not FiringAlarms.may_alarm(rec(started=AT + timedelta(seconds=6.5)))


def test_what_a_node_says_it_cannot_load_holds_until_it_loads_or_the_node_restarts():
    from schedulemaster.master.task_trouble import Troubles

    t, a, b = Troubles(), uuid.uuid4(), uuid.uuid4()
    t.report(a, "w1", "initialize() raised RuntimeError: gone")
    t.report(b, "w2", "package missing")
    assert t.reason(a) == "its plugin does not load on node w1: initialize() raised RuntimeError: gone"
    version = t.version
    t.report(a, "w2", "")  # another node cannot clear what w1 said
    assert t.reason(a) and t.version == version
    t.report(a, "w1", "")
    assert t.reason(a) is None and t.version > version
    t.node_restarted("w2")
    assert t.reason(b) is None and t.tasks() == []
