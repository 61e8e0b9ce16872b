"""The master's bulk writer of finished runs (schedulemaster/master/bulk_runs.py) against Prefect's own
``create_flow_run``: the same firing written both ways leaves the same run row, state row,
log lines and ``prefect.flow-run.<State>`` event, on SQLite and on PostgreSQL. Each database
runs tests/bulk_runs_parity.py in its own process, since Prefect reads its settings once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from helpers import PG, drop_databases, require_postgres

HERE = Path(__file__).resolve().parents[1]  # tests/, where the parity script lives
pytestmark = pytest.mark.e2e  # Prefect's database, migrated in a subprocess (and PostgreSQL)


def parity(tmp_path: Path, url: str) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_API_DATABASE_CONNECTION_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    r = subprocess.run([sys.executable, str(HERE / "bulk_runs_parity.py")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def normalized(snap: dict, firing_id: str) -> str:
    """The snapshot with what differs by nature (ids, names, write times) replaced by tokens."""
    run, states, logs = dict(snap["run"]), [dict(s) for s in snap["states"]], [dict(x) for x in snap["logs"]]
    for row in (run, *states, *logs):
        row.pop("created"), row.pop("updated")
    for row in logs:
        row.pop("id")
    text = json.dumps({**snap, "run": run, "states": states, "logs": logs}, sort_keys=True)
    for value, token in ((run["id"], "<run>"), (run["state_id"], "<state>"),
                         (run["parent_task_run_id"], "<parent-task-run>"), (firing_id, "<firing>")):
        if value:
            text = text.replace(str(value), token)
    return text


def check(out: dict) -> None:
    for case in ("completed", "failed", "child"):
        c = out[case]
        assert c["recorded"] == 2, c  # the same firing twice in one call: counted, written once
        assert c["ours"]["runs"] == 1 and len(c["ours"]["events"]) == 1 and c["ours"]["logs"]
        ours = normalized(c["ours"], f"ours-{case}")
        prefect = normalized(c["prefect"], f"ref-{case}")
        assert ours == prefect, (case, ours, prefect)
    assert out["same_call_child_linked"]
    many = out["many"]
    assert many["recorded"] == 120
    for k, snap in enumerate(many["snapshots"]):
        assert snap["runs"] == 1 and len(snap["states"]) == 1 and snap["run"]["state_id"] == snap["states"][0]["id"]
        assert snap["run"]["state_type"] == ("FAILED" if k % 3 == 0 else "COMPLETED") and len(snap["logs"]) == 2
    # a task's stand-in for its next fire time, written and then moved to a later instant: the
    # rows Prefect writes for a Scheduled run at that instant
    stand_in = out["stand_in"]
    ours, prefect = (json.loads(normalized(stand_in[k], f"{k}-key")) for k in ("ours", "prefect"))
    for snap, key in ((ours, stand_in["ours"]["run"]["idempotency_key"]), (prefect, "ref-upcoming")):
        assert len(snap["states"]) == 1 and snap["run"]["state_timestamp"] == snap["states"][0]["timestamp"]
        for row in (snap["run"], *snap["states"]):  # written at two moments
            row.pop("state_timestamp", None), row.pop("timestamp", None)
        assert snap["run"]["idempotency_key"] == key
        snap["run"].pop("idempotency_key")
    assert ours["run"]["state_type"] == "SCHEDULED" and ours["run"]["work_queue_id"] is None
    assert ours["run"]["next_scheduled_start_time"] == ours["run"]["expected_start_time"]
    assert ours == prefect, (ours, prefect)
    assert out["failed_only"] == {"recorded": 3, "runs": 3, "events": ["prefect.flow-run.Failed"]}
    if out["persisted_events"] is not None:  # SQLite: the patched event writer stores what Prefect's does
        prefects, ours = out["persisted_events"]
        assert len(prefects["events"]) == 1 and len(prefects["resources"]) == 3
        assert ours == prefects
    # one keeper mail for the one failed firing, with its message and its error log lines
    assert out["failure_mails"] == [["x", "HTTP 500", "HTTP 500"]]


def test_bulk_written_runs_match_prefects_own_on_sqlite(tmp_path):
    check(parity(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/prefect.db"))


def test_bulk_written_runs_match_prefects_own_on_postgresql(tmp_path):
    require_postgres()
    db = f"sm_parity_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        check(parity(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"))
    finally:
        drop_databases(db)
