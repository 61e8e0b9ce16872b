"""The typed task spec (deployments/spec.py): what it accepts from a deployment's ``task``
parameter, what it refuses, and that its JSON form round-trips."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from schedulemaster.deployments.spec import spec_of, spec_or_none
from schedulemaster.deployments.tasks import TAG, Status, record_of

HTTP = {"Id": "a", "Title": "ping", "MetaType": 2, "RunLoop": True, "CronExpression": "0/5 * * * * ?",
        "Http": {"RequestUrl": "http://127.0.0.1:9/hook", "Method": "POST", "ContentType": "application/json",
                 "Headers": None, "Body": "{}"},
        "Keepers": [1], "Nexts": [], "Executors": ["worker1"], "TimeZone": "Asia/Shanghai"}


def test_the_wire_form_round_trips_and_fills_defaults():
    spec = spec_of(HTTP)
    assert spec.Http.RequestUrl == "http://127.0.0.1:9/hook" and spec.FailoverPolicy == "retry-elsewhere"
    assert spec_of(spec.wire()) == spec and spec_of(spec) is spec
    # a spec stored by an older version: no TimeZone, null lists, a key this version does not know
    old = spec_of({**HTTP, "TimeZone": None, "Keepers": None, "CustomParamsJson": "", "Legacy": 1})
    assert (old.TimeZone, old.Keepers, old.CustomParamsJson) == ("UTC", [], "[]")
    assert "Legacy" not in old.wire()


def test_it_is_frozen_and_changes_by_copy():
    spec = spec_of(HTTP)
    with pytest.raises(ValidationError):
        spec.Title = "other"
    started = spec.model_copy(update={"StartedAt": "2026-01-01T00:00:00"})
    assert started.StartedAt and spec.StartedAt is None


@pytest.mark.parametrize("bad, why", [
    ({**HTTP, "MetaType": 3}, "MetaType"),
    ({**HTTP, "Http": None}, "needs its request"),
    ({**HTTP, "MetaType": 1}, "AssemblyName and ClassName"),
    ({k: v for k, v in HTTP.items() if k != "Title"}, "Title"),
    ({**HTTP, "Keepers": ["x"]}, "Keepers"),
    ({**HTTP, "RunLoop": "perhaps"}, "RunLoop"),
    ({**HTTP, "Http": {"Method": "GET"}}, "RequestUrl"),
])
def test_what_is_not_a_task_is_refused(bad, why):
    with pytest.raises(ValidationError, match=why):
        spec_of(bad)
    assert spec_or_none(bad) is None


@pytest.mark.parametrize("junk", [None, "task", 3, [], {}])
def test_a_missing_or_junk_parameter_is_no_spec(junk):
    assert spec_or_none(junk) is None


def _deployment(task, tags=(TAG,)):
    now = datetime.now(timezone.utc)
    return SimpleNamespace(id=uuid.uuid4(), name="ping", parameters={"task": task}, tags=list(tags),
                           paused=False, created=now, updated=now)


def test_a_deployment_with_a_broken_spec_is_left_out_and_logged(caplog):
    assert record_of(_deployment(HTTP)).status == Status.Running
    assert record_of(_deployment(HTTP, tags=())) is None  # not one of ours
    with caplog.at_level(logging.WARNING, logger="schedulemaster.tasks"):
        assert record_of(_deployment({**HTTP, "MetaType": "x"})) is None
    assert "task spec is invalid" in caplog.text
