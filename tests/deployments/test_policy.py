"""Per-task execution policies: what a form may set, what it keeps, what it refuses."""

from __future__ import annotations

import pytest

from schedulemaster.deployments.policy import DEFAULT, MAX_RETRY_WAIT, PolicyError, RunPolicy, from_form
from schedulemaster.deployments.spec import TaskSpec


def test_the_defaults_are_the_originals_behaviour():
    assert (DEFAULT.MisfirePolicy, DEFAULT.MisfireThresholdSeconds, DEFAULT.OverlapPolicy, DEFAULT.gate_size,
            DEFAULT.TimeoutSeconds, DEFAULT.Retries, DEFAULT.FailOnNon2xx, DEFAULT.ExpectedText) == (
        "skip", 60, "queue", 1, 0, 0, None, None)
    assert DEFAULT.fail_on_non_2xx({"Http_FailOnNon2xx": "true"}) is True
    assert DEFAULT.fail_on_non_2xx({}) is False
    # a spec stored before policies existed reads with the defaults
    old = TaskSpec.model_validate({"Id": "x", "Title": "t", "MetaType": 2, "Http": {"RequestUrl": "http://a"}})
    assert old.Policy == DEFAULT and TaskSpec.model_validate({**old.wire(), "Policy": None}).Policy == DEFAULT


def test_a_form_sets_each_field_and_an_absent_field_keeps_the_existing_value():
    p = from_form({"MisfirePolicy": " ALL ", "MisfireThresholdSeconds": 5, "OverlapPolicy": "parallel",
                   "MaxParallel": 3, "TimeoutSeconds": 7, "Retries": 2, "RetryIntervalSeconds": 4,
                   "RetryBackoff": "exponential", "FailOnNon2xx": "true", "ExpectedText": "OK"}, None, plugin=False)
    assert (p.MisfirePolicy, p.MisfireThresholdSeconds, p.OverlapPolicy, p.gate_size, p.TimeoutSeconds,
            p.attempts, p.FailOnNon2xx, p.ExpectedText) == ("all", 5, "parallel", 3, 7, 3, True, "OK")
    assert [p.retry_wait(n) for n in (1, 2, 3)] == [4, 8, 16]
    kept = from_form({"Retries": None, "Title": "whatever"}, p, plugin=False)
    assert kept == p
    # empty text fields go back to their defaults; MaxParallel only means something for parallel
    cleared = from_form({"FailOnNon2xx": "", "ExpectedText": "", "OverlapPolicy": "queue"}, p, plugin=False)
    assert (cleared.FailOnNon2xx, cleared.ExpectedText, cleared.gate_size, cleared.MaxParallel) == (None, None, 1, 1)
    assert from_form({"FailOnNon2xx": "default"}, p, plugin=False).FailOnNon2xx is None


def test_backoff_never_waits_longer_than_the_cap():
    p = RunPolicy(Retries=10, RetryIntervalSeconds=3600, RetryBackoff="exponential")
    assert p.retry_wait(10) == MAX_RETRY_WAIT


@pytest.mark.parametrize("form, field", [
    ({"MisfirePolicy": "sometimes"}, "MisfirePolicy"),
    ({"OverlapPolicy": "queue-two"}, "OverlapPolicy"),
    ({"RetryBackoff": "linear"}, "RetryBackoff"),
    ({"MisfireThresholdSeconds": 0}, "MisfireThresholdSeconds"),
    ({"MisfireThresholdSeconds": 86_401}, "MisfireThresholdSeconds"),
    ({"MaxParallel": 0}, "MaxParallel"),
    ({"MaxParallel": 101}, "MaxParallel"),
    ({"TimeoutSeconds": -1}, "TimeoutSeconds"),
    ({"TimeoutSeconds": 2**31 - 1}, "TimeoutSeconds"),
    ({"Retries": -1}, "Retries"),
    ({"Retries": 11}, "Retries"),
    ({"RetryIntervalSeconds": 0}, "RetryIntervalSeconds"),
    ({"Retries": True}, "Retries"),
    ({"Retries": "3"}, "Retries"),
    ({"FailOnNon2xx": "yes"}, "FailOnNon2xx"),
    ({"ExpectedText": "x" * 201}, "ExpectedText"),
    ({"ExpectedText": "line\nbreak"}, "ExpectedText"),
    ({"AlarmAfterFailures": 0}, "AlarmAfterFailures"),
    ({"AlarmLateSeconds": -1}, "AlarmLateSeconds"),
    ({"AlarmOnMissed": "yes"}, "AlarmOnMissed"),
])
def test_bad_values_are_refused_naming_the_field(form, field):
    with pytest.raises(PolicyError) as err:
        from_form(form, None, plugin=False)
    assert err.value.field == field and field in str(err.value)


def test_a_plugin_task_runs_one_firing_at_a_time_and_has_no_http_checks():
    for overlap in ("cancel", "parallel"):
        with pytest.raises(PolicyError) as err:
            from_form({"OverlapPolicy": overlap}, None, plugin=True)
        assert err.value.field == "OverlapPolicy"
    for form, field in (({"ExpectedText": "ok"}, "ExpectedText"), ({"FailOnNon2xx": "true"}, "FailOnNon2xx")):
        with pytest.raises(PolicyError) as err:
            from_form(form, None, plugin=True)
        assert err.value.field == field
    # an HTTP task edited into a plugin task drops what only HTTP has
    http = from_form({"ExpectedText": "ok", "FailOnNon2xx": "true", "Retries": 2}, None, plugin=False)
    plugin = from_form({}, http, plugin=True)
    assert (plugin.ExpectedText, plugin.FailOnNon2xx, plugin.Retries) == (None, None, 2)
    assert from_form({"OverlapPolicy": "skip", "TimeoutSeconds": 5}, None, plugin=True).OverlapPolicy == "skip"


def test_the_summary_shown_in_prefect_says_each_policy():
    text = RunPolicy(MisfirePolicy="once", OverlapPolicy="parallel", MaxParallel=4, TimeoutSeconds=30,
                     Retries=2, ExpectedText="OK").summary()
    for part in ("misfire once after 60 s", "overlap parallel up to 4", "timeout 30 s", "2 retries every 10 s",
                 "'OK'"):
        assert part in text
