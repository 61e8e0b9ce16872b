"""What the failover tests share: reading a cluster's nodes, claims and runs, and tasks that
fire every second."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import psycopg

import schedulemaster as sm


def legacy(system) -> sm.LegacyClient:
    return sm.LegacyClient(system.api)


def node_status(system, name: str) -> int | None:
    row = next((r for r in legacy(system).nodes() if r["NodeName"] == name), None)
    return None if row is None else row["Status"]


def fired_on(system, task_id: str) -> Counter:
    return Counter(((r["parameters"].get("fire") or {}).get("node")
                    or (r.get("labels") or {}).get("prefect.worker.name")) for r in system.flow_runs(task_id, 200))


def unfinished_claims(system, node: str | None = None) -> int:
    with psycopg.connect(system.store_url) as conn:
        sql = "SELECT count(*) FROM sm_firing_claims WHERE finished_at IS NULL"
        return conn.execute(sql + (" AND node = %s" if node else ""), (node,) if node else ()).fetchone()[0]


def handed_over(system, restarted: dict[str, datetime]) -> bool:
    """Each restarted node's new process has registered (after ``restarted[name]``), and no
    unfinished claim belongs to a process that is no longer its node's registered one: the
    master has re-run or recorded what the dead processes held."""
    with psycopg.connect(system.store_url) as conn:
        started = dict(conn.execute("SELECT name, started_at FROM sm_nodes").fetchall())
        stale = conn.execute("SELECT count(*) FROM sm_firing_claims c JOIN sm_nodes n ON n.name = c.node "
                             "WHERE c.finished_at IS NULL AND c.incarnation <> n.incarnation").fetchone()[0]
    return stale == 0 and all(name in started and _utc(started[name]) >= at for name, at in restarted.items())


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def held_runs(system, node: str) -> list[dict]:
    r = system.pf("POST", "/flow_runs/filter", timeout=30, json={
        "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}, "limit": 200})
    return [x for x in r.json() if (x.get("labels") or {}).get("prefect.worker.name") == node]


def every_second(system, receiver, path: str, title: str, **fields) -> str:
    task_id = system.create_http(receiver.url(path), cron="* * * * * ?", Title=title, **fields)
    assert system.post("Start", data={"id": task_id}).json()["Success"]
    return task_id


def stop_all(system, ids) -> None:
    for t in ids:
        system.post("Stop", data={"id": t})
