"""How fast the master writes executor nodes' firings into Prefect as flow runs.

    .venv/bin/python bench/record.py                       # PostgreSQL, 4,000 firings
    .venv/bin/python bench/record.py --sqlite --firings 2000
    .venv/bin/python bench/record.py --profile /tmp/record.txt   # and py-spy the master

Nodes fire first and record afterwards (schedulemaster/node/recorder.py); the master's
``/api/schedulemaster/firings`` endpoint (schedulemaster/master/record_api.py) is what turns each firing
into a flow run with its state and log lines. Its rate bounds how far the Prefect UI lags
behind the firings under load (the soak, bench/soak.py, ran 1,000 firings/min for 100 min
while ~10 records/s went in). Here one client posts batches of synthetic firing records (the
shape a node sends: 3 log lines each, one in ten failed) for T tasks, as fast as the master
takes them, and the script counts the runs that Prefect then holds, so nothing is claimed
that was not written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import PG, System, drop_databases  # noqa: E402
from lateness import call, create_tasks  # noqa: E402

from schedulemaster.node.firing import firing_id  # noqa: E402



def records(task_ids: list[str], n: int, start: datetime) -> list[dict]:
    """n firings spread over the tasks, one per task per second from `start`: what nodes send."""
    out = []
    for k in range(n):
        task = task_ids[k % len(task_ids)]
        at = start + timedelta(seconds=k // len(task_ids))
        fid = firing_id(uuid.UUID(task), at)
        began, ended = at + timedelta(milliseconds=12), at + timedelta(milliseconds=40)
        ok = k % 10 != 0
        out.append({
            "task_id": task, "firing_id": fid, "name": f"{at:%Y%m%d-%H%M%S}-{fid[:6]}",
            "scheduled": at.isoformat(), "started": began.isoformat(), "finished": ended.isoformat(),
            "ok": ok, "message": "" if ok else "HTTP 500",
            "fire": {"firing_id": fid, "node": "bench", "scheduled": at.isoformat(), "started": began.isoformat(),
                     "finished": ended.isoformat(), "lateness_ms": 12.0, "status_code": 200 if ok else 500,
                     "ok": ok, "parent": None},
            "logs": [{"level": 20, "message": f"POST http://127.0.0.1/bench/{k}", "timestamp": began.isoformat()},
                     {"level": 20 if ok else 40, "message": f"HTTP {200 if ok else 500} in 28 ms",
                      "timestamp": ended.isoformat()},
                     {"level": 20, "message": "success" if ok else "failed", "timestamp": ended.isoformat()}],
        })
    return out


def master_pid(system: System) -> int | None:
    for pid in system.child_pids():
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"master" in cmd:
            return pid
    return None


def as_node(client: httpx.Client, name: str) -> None:
    """Only a registered node records firings: register this client (on Prefect's API) as one."""
    client.headers["x-sm-node-token"] = client.post("/schedulemaster/nodes/register", json={
        "name": name, "priority": 0, "max_concurrency": 1,
        "incarnation": str(uuid.uuid4())}).raise_for_status().json()["token"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_count(system: System, task_ids: list[str]) -> int:
    return call("POST", f"{system.prefect}/flow_runs/count", json={
        "deployments": {"id": {"any_": task_ids}}}).json()


def state_events(system: System) -> dict[str, int]:
    """prefect.flow-run.<State> events Prefect's event persister has written so far, by name."""
    r = call("POST", f"{system.prefect}/events/count-by/event", json={
        "filter": {"event": {"prefix": ["prefect.flow-run."]}}})
    r.raise_for_status()
    return {x["value"]: x["count"] for x in r.json()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--firings", type=int, default=4000)
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--batch", type=int, default=200, help="records per call (a node sends 200)")
    ap.add_argument("--sqlite", action="store_true", help="the embedded default instead of PostgreSQL")
    ap.add_argument("--profile", type=Path, help="py-spy the master while it records; raw output here")
    args = ap.parse_args()

    env, db = {}, None
    if not args.sqlite:
        db = f"sm_rec_{uuid.uuid4().hex[:8]}"
        env["SM_DATABASE_URL"] = f"{PG}/{db}"
    s = System(Path(tempfile.mkdtemp(prefix="sm-bench-rec-")), env=env).start()
    spy = None
    try:
        ids = create_tasks(s, args.tasks, lambda i: {
            "Title": f"rec-{i}", "MetaType": "2", "RunLoop": "true", "CronExpression": "0 0 0 1 1 ? 2099",
            "HttpRequestUrl": f"http://127.0.0.1:9/rec/{i}", "HttpMethod": "GET"})
        body = records(ids, args.firings, datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1))
        before = run_count(s, ids)
        pid = master_pid(s)
        idle0, t_idle = cpu_seconds(pid), time.monotonic()
        time.sleep(5)
        idle_rate = (cpu_seconds(pid) - idle0) / (time.monotonic() - t_idle)  # the master's own idle work
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-f", "raw", "-r", "50",
                                    "-o", str(args.profile), "-p", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        calls = []
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        with httpx.Client(base_url=s.prefect, auth=s.prefect_auth, timeout=600) as c:
            as_node(c, "bench-recorder")
            for i in range(0, len(body), args.batch):
                t = time.monotonic()
                r = c.post("/schedulemaster/firings", json=body[i:i + args.batch])
                r.raise_for_status()
                calls.append(time.monotonic() - t)
        elapsed = time.monotonic() - t0
        if spy:
            spy.send_signal(2)
            spy.wait(timeout=60)
        runs = run_count(s, ids) - before
        # the runs' state-change events go through Prefect's messaging to its event persister
        # SM_RUN_EVENTS=failed (schedulemaster/settings.py): only the failed runs publish one
        run_events = os.environ.get("SM_RUN_EVENTS", "all")
        expected = args.firings if run_events == "all" else sum(not r["ok"] for r in body)
        deadline, by_name = time.monotonic() + 120, state_events(s)
        while sum(by_name.values()) < expected and time.monotonic() < deadline:
            time.sleep(1)
            by_name = state_events(s)
        events = sum(by_name.values())
        events_after = round(time.monotonic() - t0 - elapsed, 1)
        # CPU of the whole recording: the writes, then the events' persistence and triggers
        cpu = cpu_seconds(pid) - cpu0 - idle_rate * (time.monotonic() - t0)
        calls.sort()
        result = {
            "database": "sqlite" if args.sqlite else "postgresql", "run_events": run_events, "firings": args.firings, "tasks": args.tasks,
            "batch": args.batch, "seconds": round(elapsed, 1), "records_per_s": round(args.firings / elapsed, 1),
            "runs_in_prefect": runs, "state_events": events, "events_in_s_after": events_after,
            "master_cpu_ms_per_firing": round(cpu * 1000 / args.firings, 2), "call_p50_s": round(calls[len(calls) // 2], 2), "call_max_s": round(calls[-1], 2),
        }
        print(json.dumps(result))
        print(f"\n| database (SM_RUN_EVENTS={run_events}) | firings | records/s | call p50 / max | runs in Prefect after | state events | master CPU per firing |"
              f"\n|---|---|---|---|---|---|---|\n| {result['database']} | {args.firings:,} | {result['records_per_s']} | "
              f"{result['call_p50_s']} / {result['call_max_s']} s | {runs:,} | {events:,} ({events_after} s later) | "
              f"{result['master_cpu_ms_per_firing']} ms |")
        if events != expected:
            print(f"NOTE: {events} flow-run state events persisted for {expected} expected: {by_name}",
                  file=sys.stderr)
        if runs != args.firings:
            print(f"MISMATCH: posted {args.firings} firings, Prefect holds {runs} new runs", file=sys.stderr)
            sys.exit(1)
    finally:
        if spy and spy.poll() is None:
            spy.kill()
        s.stop()
        if db:
            drop_databases(db, f"{db}_prefect")


if __name__ == "__main__":
    main()
