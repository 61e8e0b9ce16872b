"""Delayed tasks with the store on the PostgreSQL of this machine (127.0.0.1:5432, user postgres):
the whole system on it, and dispatchers side by side (FOR UPDATE SKIP LOCKED), one of them
killed with callbacks in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter

import httpx
import psycopg
import pytest

from helpers import AUTH, PG, System, drop_databases, require_postgres, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg_system(tmp_path_factory):
    require_postgres()
    db = f"sm_test_{uuid.uuid4().hex[:10]}"
    url = f"{PG}/{db}"
    s = System(tmp_path_factory.mktemp("sm-pg"), env={"SM_STORE_URL": url, "SM_DELAYED_REPORT_SECONDS": "5"}).start()
    s.store_url = url
    yield s
    s.stop()
    drop_databases(db)


def api(system, method, path, **kw):
    return httpx.request(method, f"{system.api}/api/{path}", headers=AUTH, timeout=60, **kw)


def batch(system, url: str, topic: str, n: int, span: int, spread: int = 1) -> list[str]:
    items = [{"SourceApp": "pg", "Topic": topic, "ContentKey": f"k{i}", "DelayTimeSpan": span + i % spread, "NotifyUrl": url,
              "NotifyDataType": "application/json", "NotifyBody": '{"i":%d}' % i} for i in range(n)]
    body = api(system, "POST", "DelayTask/CreateBatch", json=items).json()
    assert body["Success"], body
    return body["Data"]


def succeeded(system, topic: str) -> int:
    return api(system, "GET", "DelayTask/QueryList", params={"topic": topic, "status": 3}).json()["Data"]["total"]


def test_the_store_is_postgres_and_callbacks_fire(pg_system, receiver):
    receiver.on("/pg/one", 200, "success")
    form = {"SourceApp": "pg", "Topic": "one", "ContentKey": "k1", "DelayTimeSpan": "1",
            "NotifyUrl": receiver.url("/pg/one"), "NotifyDataType": "application/json", "NotifyBody": "{}"}
    task_id = api(pg_system, "POST", "DelayTask/Create", data=form).json()["Data"]
    [hit] = receiver.wait_for("/pg/one", 1, timeout=20)
    assert hit.headers["idempotency-key"] == task_id
    with psycopg.connect(pg_system.store_url, autocommit=True) as conn:
        wait_until(lambda: conn.execute("SELECT status FROM scheduledelayeds WHERE id = %s",
                                        (task_id,)).fetchone()[0] == 3, timeout=10)
        assert conn.execute("SELECT count(*) FROM scheduledelayedattempts WHERE delayedid = %s",
                            (task_id,)).fetchone()[0] == 1


def start_dispatcher(system, name: str, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "SM_STORE_URL": system.store_url, "SM_DATA_DIR": str(tmp_path / name),
           "SM_PREFECT_PORT": str(system.prefect_port), "SM_TIMEZONE": system.timezone, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "schedulemaster.cli", "dispatcher", "--name", name, "--lease", "4"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def test_dispatchers_side_by_side_never_fire_twice_and_take_over_a_dead_ones_claims(pg_system, receiver, tmp_path):
    extra = [start_dispatcher(pg_system, f"pgd{i}", tmp_path) for i in (1, 2)]
    try:
        wait_until(lambda: all((tmp_path / f"pgd{i}.log").read_text().count("started on PostgreSQL") for i in (1, 2)),
                   timeout=60)
        # 1,000 due over ten instants, three dispatchers: each callback exactly once, shared among
        # them (whoever polls first after an instant comes within reach takes its rows)
        receiver.on("/pg/many", 200, "success", delay=0.05)
        topic = f"many-{uuid.uuid4().hex[:6]}"
        ids = set(batch(pg_system, receiver.url("/pg/many"), topic, 1000, 3, spread=10))
        wait_until(lambda: succeeded(pg_system, topic) == 1000, timeout=90, interval=1)
        arrivals = Counter(h.headers["idempotency-key"] for h in receiver.at("/pg/many"))
        assert set(arrivals) == ids and max(arrivals.values()) == 1
        with psycopg.connect(pg_system.store_url) as conn:
            by = conn.execute("SELECT split_part(a.dispatcher, ':', 1), count(*) FROM scheduledelayedattempts a "
                              "JOIN scheduledelayeds d ON d.id = a.delayedid WHERE d.topic = %s GROUP BY 1",
                              (topic,)).fetchall()
        assert len(by) >= 2 and sum(n for _, n in by) == 1000, by
        # one of them killed while its callbacks are in flight: the others send them again
        receiver.on("/pg/slow", 200, "success", delay=1.0)
        topic = f"kill-{uuid.uuid4().hex[:6]}"
        ids = set(batch(pg_system, receiver.url("/pg/slow"), topic, 300, 2))
        wait_until(lambda: len(receiver.at("/pg/slow")) >= 60, timeout=30, interval=0.02)
        extra[0].send_signal(signal.SIGKILL)
        extra[0].wait()
        wait_until(lambda: succeeded(pg_system, topic) == 300, timeout=120, interval=1)
        arrivals = Counter(h.headers["idempotency-key"] for h in receiver.at("/pg/slow"))
        assert set(arrivals) == ids
        with psycopg.connect(pg_system.store_url) as conn:
            recovered = {r[0] for r in conn.execute(
                "SELECT a.delayedid FROM scheduledelayedattempts a JOIN scheduledelayeds d ON d.id = a.delayedid "
                "WHERE d.topic = %s AND a.kind = 'recovered'", (topic,)).fetchall()}
        twice = {i for i, n in arrivals.items() if n > 1}
        assert twice <= recovered and all(n <= 2 for n in arrivals.values())
    finally:
        for p in extra:
            if p.poll() is None:
                p.terminate()
                p.wait(30)


def test_a_second_dispatcher_on_sqlite_is_refused(system, tmp_path):
    """On SQLite only one dispatcher may run (it is what lets a restart drop dead claims at once)."""
    env = {**os.environ, "SM_DATA_DIR": str(system.data_dir), "SM_PREFECT_PORT": str(system.prefect_port)}
    env.pop("SM_STORE_URL", None)
    r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "dispatcher"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "another dispatcher already runs" in r.stderr
