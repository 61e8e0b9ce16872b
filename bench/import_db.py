"""Importing an original ScheduleMaster database: how long each phase takes at a realistic size,
side by side with bringing the same tasks in through Prefect's own HTTP API.

    .venv/bin/python bench/import_db.py                    # 1,000 tasks, 200 users, 20,000 delayed, 50,000 traces
    .venv/bin/python bench/import_db.py --tasks 200 --delayed 2000 --traces 5000

1. A MariaDB database on this machine (127.0.0.1:3306, root) with the original's schema in its
   MySQL types (tests/legacy_source.py), filled with --tasks HTTP tasks (every fifth has a
   child, every task two keepers and an executor), --users users, --delayed pending delayed
   tasks and --traces traces of those tasks with one log line each.
2. One `schedulemaster up` on fresh PostgreSQL databases (store and Prefect), free ports.
3. `schedulemaster import --dry-run`, the import with --with-history, and the import again
   (everything kept): wall time of each, with the per-phase times the CLI reports (--report).
4. Plain Prefect: the same number of deployments of one flow created through Prefect's client
   (create_deployment over HTTP, sequentially, as a migration script would), on the same server.
   It cannot keep the original's ids: Prefect's API never lets a client choose one.

Prints a table and writes bench/results/import-<timestamp>.json. Databases are dropped and the
system stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from delayed import Pg, Up  # noqa: E402
from legacy_source import MYSQL_SCHEMA, md5  # noqa: E402


def say(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def make_source(db: str, tasks: int, users: int, delayed: int, traces: int) -> dict:
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True, charset="utf8mb4")
    admin.cursor().execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", database=db, autocommit=False,
                           charset="utf8mb4")
    cur = conn.cursor()
    for statement in filter(str.strip, MYSQL_SCHEMA.split(";")):
        cur.execute(statement)
    now = datetime.now().replace(microsecond=0)
    cur.executemany("INSERT INTO systemusers (id, username, password, realname, email, status, createtime) "
                    "VALUES (%s, %s, %s, %s, %s, 1, %s)",
                    [(i, "admin" if i == 1 else f"user{i}", md5(f"pw{i}"), f"用户{i}", f"u{i}@example.com", now)
                     for i in range(1, users + 1)])
    ids = [str(uuid.uuid4()) for _ in range(tasks)]
    cur.executemany("INSERT INTO schedules (id, title, metatype, runloop, cronexpression, customparamsjson, status, "
                    "createtime, createuserid, createusername, totalruncount) VALUES (%s, %s, 2, 1, %s, %s, 1, %s, 1, "
                    "'admin', 0)", [(t, f"任务{i}", f"{i % 60} 0/5 * * * ?",
                                     '[{"ParamKey":"k","ParamValue":"v","ParamRemark":""}]', now)
                                    for i, t in enumerate(ids)])
    cur.executemany("INSERT INTO schedulehttpoptions VALUES (%s, %s, 'POST', 'application/json', '[]', '{}')",
                    [(t, f"http://127.0.0.1:9/hook/{i}") for i, t in enumerate(ids)])
    cur.executemany("INSERT INTO schedulekeepers (scheduleid, userid) VALUES (%s, %s)",
                    [(t, u) for i, t in enumerate(ids) for u in (1, 2 + i % max(1, users - 1))])
    cur.executemany("INSERT INTO scheduleexecutors (scheduleid, workername) VALUES (%s, 'worker1')",
                    [(t,) for t in ids])
    cur.executemany("INSERT INTO schedulereferences (scheduleid, childid) VALUES (%s, %s)",
                    [(ids[i], ids[i + 1]) for i in range(0, tasks - 1, 5)])
    for start in range(0, delayed, 5000):
        cur.executemany("INSERT INTO scheduledelayeds VALUES (%s, 'shop', 'order', %s, 86400, '0001-01-01', %s, "
                        "'admin', NULL, NULL, 2, 0, NULL, 'http://127.0.0.1:9/cb', 'application/json', '{}')",
                        [(str(uuid.uuid4()), f"K{i}", now) for i in range(start, min(delayed, start + 5000))])
    t0 = now - timedelta(days=1)
    for start in range(0, traces, 5000):
        rows, logs = [], []
        for i in range(start, min(traces, start + 5000)):
            trace = str(uuid.uuid4())
            at = t0 + timedelta(seconds=i)
            rows.append((trace, ids[i % tasks], "worker1", at, at + timedelta(milliseconds=300), 0.3,
                         1 if i % 10 else 2))
            logs.append((1, f"请求完成 {i}", None, ids[i % tasks], "worker1", trace, at))
        cur.executemany("INSERT INTO scheduletraces VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
        cur.executemany("INSERT INTO systemlogs (category, message, stacktrace, scheduleid, node, traceid, "
                        "createtime) VALUES (%s, %s, %s, %s, %s, %s, %s)", logs)
    conn.commit()
    conn.close()
    admin.close()
    return {"tasks": tasks, "users": users, "delayed": delayed, "traces": traces, "task_ids": ids}


def drop_source(db: str) -> None:
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {db}")
    admin.close()


def run_import(up: Up, url: str, report: Path, *args: str) -> tuple[float, dict, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SM_"))}
    env["SM_PREFECT_PORT"] = str(up.prefect_port)
    env["PREFECT_API_AUTH_STRING"] = os.environ["PREFECT_API_AUTH_STRING"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "import", "--from", url, "--report", str(report),
                        *args], capture_output=True, text=True, env=env, timeout=7200)
    wall = time.monotonic() - t0
    if r.returncode not in (0, 3):
        raise RuntimeError(f"import {' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall, json.loads(report.read_text()), r.returncode


def actions(report: dict) -> dict:
    out: dict[str, dict[str, int]] = {}
    for item in report["items"]:
        out.setdefault(item["kind"], {}).setdefault(item["action"], 0)
        out[item["kind"]][item["action"]] += 1
    return out


async def plain_prefect(prefect_api: str, n: int) -> float:
    """n deployments of one flow through Prefect's client, one request each, as a script would."""
    os.environ["PREFECT_API_URL"] = prefect_api
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("bench-plain-import")
        t0 = time.monotonic()
        for i in range(n):
            await client.create_deployment(flow_id=flow_id, name=f"plain-{i}", parameters={"task": {"i": i}},
                                           tags=["bench-plain"], entrypoint="bench/baseline_flow.py:noop")
        return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--delayed", type=int, default=20_000)
    ap.add_argument("--traces", type=int, default=50_000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server (no database)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.users < 2 or args.tasks < 2:
        ap.error("--users and --tasks must be at least 2")
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    out = Path(args.out or ROOT / "bench" / "results" / f"import-{stamp}.json")
    db = f"sm_bench_src_{stamp}"
    pg = Pg(args.pg, stamp)
    work = Path(tempfile.mkdtemp(prefix="sm-bench-import-"))
    (work / "data").mkdir()
    up = Up(pg, work / "data", "Asia/Shanghai", 20)
    result: dict = {"when": datetime.now().isoformat(timespec="seconds"), "sizes": vars(args)}
    try:
        say(f"filling the source (MariaDB {db})")
        t0 = time.monotonic()
        make_source(db, args.tasks, args.users, args.delayed, args.traces)
        result["fill_s"] = round(time.monotonic() - t0, 1)
        url = f"mysql://root@127.0.0.1:3306/{db}"
        pg.create()
        say("starting the system on PostgreSQL")
        up.start()
        runs = {}
        for name, extra in (("dry run", ["--dry-run"]), ("import", ["--with-history"]),
                            ("again", ["--with-history"])):
            say(f"import: {name}")
            wall, report, code = run_import(up, url, work / f"{name}.json", *extra)
            runs[name] = {"wall_s": round(wall, 1), "timings": report["timings"], "actions": actions(report),
                          "history": report["history"], "exit": code}
            say(f"  {wall:.1f} s  {runs[name]['timings']}  {runs[name]['actions']}")
        result["runs"] = runs
        say(f"plain Prefect: {args.tasks} deployments through the client")
        result["plain_s"] = round(asyncio.run(plain_prefect(up.prefect, args.tasks)), 1)
    finally:
        up.stop()
        pg.drop()
        drop_source(db)
        shutil.rmtree(work, ignore_errors=True)
    imp = result["runs"]["import"]
    t = imp["timings"]
    rows = [
        ("read the source + judge every row", f"{t['read']:.1f} s", ""),
        (f"{args.users} users", f"{t['users']:.1f} s", ""),
        (f"{args.tasks} tasks (same ids, children first)", f"{t['tasks']:.1f} s ({args.tasks / t['tasks']:.0f}/s)",
         f"{result['plain_s']:.1f} s ({args.tasks / result['plain_s']:.0f}/s), new ids"),
        (f"{args.delayed:,} delayed tasks", f"{t['delayed']:.1f} s ({args.delayed / t['delayed']:,.0f}/s)", ""),
        (f"{args.traces:,} traces as runs with their logs", f"{t['history']:.1f} s "
         f"({args.traces / t['history']:,.0f}/s)", ""),
        ("whole import (wall)", f"{imp['wall_s']:.1f} s", ""),
        ("dry run (wall)", f"{result['runs']['dry run']['wall_s']:.1f} s", ""),
        ("again, everything kept (wall)", f"{result['runs']['again']['wall_s']:.1f} s", ""),
    ]
    print("\n| phase | ours | plain Prefect (create_deployment per task) |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(f"\nactions, import: {imp['actions']}\nactions, again: {result['runs']['again']['actions']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str, ensure_ascii=False))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
