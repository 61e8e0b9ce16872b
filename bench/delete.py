"""Deleting a task with a long history: Task/Delete and QueryTaskDetail of a task with 100,000 runs.

    .venv/bin/python bench/delete.py                    # SQLite, 100,000 runs
    .venv/bin/python bench/delete.py --runs 20000 --postgres

One `schedulemaster up` on a temporary data dir (SQLite, or fresh databases on this machine's
PostgreSQL). Two HTTP tasks that never fire by themselves: one gets --runs finished runs
written through the master's record endpoint (as a node records firings; SM_RUN_EVENTS=failed
so the writing goes faster, one in ten failed), the other none. Then, for each task,
QueryTaskDetail (its TotalRunCount counts the runs) 5 times and Task/Delete once, timed by the
client.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from helpers import AUTH, PG, System, bench_credential, drop_databases  # noqa: E402
from lateness import create_tasks  # noqa: E402
from record import as_node, records, run_count  # noqa: E402

bench_credential()
BATCH = 1000  # records per call: the endpoint's most


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--postgres", action="store_true")
    args = ap.parse_args()

    env, db = {"SM_RUN_EVENTS": "failed"}, None
    if args.postgres:
        db = f"sm_del_{uuid.uuid4().hex[:8]}"
        env["SM_DATABASE_URL"] = f"{PG}/{db}"
    s = System(Path(tempfile.mkdtemp(prefix="sm-bench-del-")), env=env).start()
    try:
        heavy, light = create_tasks(s, 2, lambda i: {
            "Title": f"history-{i}", "MetaType": "2", "RunLoop": "true", "CronExpression": "0 0 0 1 1 ? 2099",
            "HttpRequestUrl": f"http://127.0.0.1:9/del/{i}", "HttpMethod": "GET"})
        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=args.runs + 86400)
        t0 = time.monotonic()
        with httpx.Client(base_url=s.prefect, auth=s.prefect_auth, timeout=600) as c:
            as_node(c, "bench-history")
            for i in range(0, args.runs, BATCH):
                body = records([heavy], min(BATCH, args.runs - i), start + timedelta(seconds=i))
                c.post("/schedulemaster/firings", json=body).raise_for_status()
                if (i // BATCH) % 10 == 9:
                    print(f"  {i + BATCH:,} runs written ({(i + BATCH) / (time.monotonic() - t0):.0f}/s)",
                          flush=True)
        written = run_count(s, [heavy])
        print(f"{written:,} runs in Prefect after {time.monotonic() - t0:.0f} s", flush=True)
        result = {"database": "postgresql" if args.postgres else "sqlite", "runs": written}
        with httpx.Client(base_url=f"{s.api}/api", headers=AUTH, timeout=120) as api:
            for name, task in (("with_history", heavy), ("without", light)):
                details = []
                for _ in range(5):
                    ms, r = timed(lambda: api.get("/Task/QueryTaskDetail", params={"id": task}).json())
                    details.append(ms)
                count = r["Data"]["TotalRunCount"]
                ms, r = timed(lambda: api.post("/Task/Delete", data={"id": task}).json())
                assert r["Success"], r
                result[name] = {"detail_ms": sorted(round(x, 1) for x in details), "total_run_count": count,
                                "delete_ms": round(ms, 1)}
        print(json.dumps(result))
        h, w = result["with_history"], result["without"]
        print(f"\n| database | task | runs | QueryTaskDetail median (5) | Task/Delete |\n|---|---|---|---|---|\n"
              f"| {result['database']} | with history | {written:,} | {h['detail_ms'][2]} ms | {h['delete_ms']} ms |\n"
              f"| {result['database']} | without | 0 | {w['detail_ms'][2]} ms | {w['delete_ms']} ms |")
    finally:
        s.stop()
        if db:
            drop_databases(db, f"{db}_prefect")


if __name__ == "__main__":
    main()
