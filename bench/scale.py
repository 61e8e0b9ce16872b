"""Many tasks on one box: creation rate, API latency, firing and the cost of the system.

    .venv/bin/python bench/scale.py --tasks 1000                  # SQLite (`up` as a new user starts it)
    .venv/bin/python bench/scale.py --tasks 10000 --window 120    # the issue's size
    .venv/bin/python bench/scale.py --tasks 1000 --postgres       # distributed mode's databases

One `schedulemaster up` on a temporary data dir and free ports (SQLite, or with --postgres
fresh databases on this machine's PostgreSQL), and a local aiohttp receiver process that
timestamps each arrival. In order:

1. idle: the CPU of every process of the system over --idle-seconds, no tasks;
2. create + start: --tasks HTTP tasks through POST /api/Task/Create with RunNow, --concurrency
   at once; each fires once a minute at its own second (task i at second i % 60); the rate of
   each thousand, refusals, latency p50/p99;
3. fire: a --window of whole minutes once every task is loaded: delivered, lost, duplicated
   (Idempotency-Key), lateness (arrival - instant) p50/p99; the CPU of the system over the
   window; the master's and node's RSS; how many firings have a Prefect flow run 60 s later;
4. API under that load, from 5 s into the window: QueryList (100 rows, with and without a title
   filter) and QueryTaskDetail, 20 calls each; Pause/Resume on 20 tasks (those firing at seconds
   0-19: their instants between the Pause call and the Resume answer are not expected to fire,
   those after it are); `sm.tasks()` of the notebook API;
5. stopped: every task stopped (the rate of that), then the CPU over --idle-seconds, 10 s
   after the last Stop and again 60 s later (its aftermath done);
6. plain Prefect on the same server: --baseline deployments of one flow with a cron schedule
   (paused, so its scheduler adds no load), created through Prefect's client, --concurrency
   at once: the rate.

Prints one table (measured, goal) and writes bench/results/scale-<timestamp>.json, with the
system's logs beside it (scale-<timestamp>-logs/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from delayed import Receiver, api_call, ok, pct, rss_of, say  # noqa: E402
from helpers import AUTH, System, bench_credential  # noqa: E402

bench_credential()

GOALS = {"create_rate": ">= 50/s", "query_list": "< 100 ms", "detail": "< 20 ms", "action_p99": "< 100 ms",
         "sm_tasks": "< 2 s", "lateness_p99": "< 1 s", "cpu_load": "< 100 %", "cpu_stopped": "< 5 %",
         "master_rss": "< 1 GB", "node_rss": "< 500 MB"}


def processes(system: System) -> dict[str, int]:
    """{role: pid} of the system's processes (the supervisor and its children)."""
    out = {"up": system.proc.pid}
    for pid in system.child_pids():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        role = next((a.decode() for a in args if a in (b"master", b"node", b"dispatcher")), None)
        if role:
            out[role] = pid
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    return {role: (rss_of(pid) or {}).get("cpu_s") or 0.0 for role, pid in pids.items()}


async def cpu_over(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's share of one core over ``seconds``, and the total."""
    a, t0 = cpu_seconds(pids), time.monotonic()
    await asyncio.sleep(seconds)
    b, dt = cpu_seconds(pids), time.monotonic() - t0
    out = {role: round((b[role] - a[role]) / dt * 100, 1) for role in pids}
    out["total"] = round(sum(out.values()), 1)
    return out


def task_form(i: int, rx: Receiver, tag: str, run_now: bool = True) -> dict:
    return {"Title": f"{tag}-{i}", "MetaType": "2", "RunLoop": "true",
            "CronExpression": f"{i % 60} * * * * ?", "HttpRequestUrl": rx.url(f"/{tag}/{i}"),
            "HttpMethod": "POST", "HttpContentType": "application/json", "HttpBody": '{"i":%d}' % i,
            "RunNow": "true" if run_now else "false"}


async def create_tasks(session, system: System, rx: Receiver, n: int, concurrency: int, tag: str,
                       run_now: bool = True) -> dict:
    ids: dict[int, str] = {}
    lat: list[float] = []
    refused: list[str] = []
    per_thousand: list[float] = []
    queue = list(range(n))
    started = time.monotonic()
    marks = {0: started}

    async def worker():
        while queue:
            i = queue.pop(0)
            elapsed, status, body = await api_call(session, "POST", f"{system.api}/api/Task/Create",
                                                   data=task_form(i, rx, tag, run_now))
            lat.append(elapsed)
            if ok(status, body) and "成功" in (body.get("Message") or ""):
                ids[i] = body["Data"]
            else:
                refused.append(f"#{i}: {status} {str(body)[:200]}")
            done = len(lat)
            if done % 1000 == 0 or done == n:
                marks[done] = time.monotonic()
                say(f"  created {done}/{n} ({len(refused)} refused)")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    total = time.monotonic() - started
    points = sorted(marks)
    for a, b in zip(points, points[1:]):
        per_thousand.append(round((b - a) / (marks[b] - marks[a]), 1))
    return {"tasks": n, "created": len(ids), "refused": len(refused), "refusals": refused[:5],
            "seconds": round(total, 1), "rate": round(n / total, 1), "rate_per_1000": per_thousand,
            "p50_ms": round(pct(lat, 50) * 1000), "p99_ms": round(pct(lat, 99) * 1000), "ids": ids}


def window_start() -> int:
    """Every task fires once a minute: the window is a whole minute that starts after all are loaded."""
    return (int(time.time()) // 60 + 2) * 60


async def fire_window(session, system: System, rx: Receiver, pids, ids: dict[int, str], minutes: int,
                      tag: str, paused: dict[str, tuple[float, float]], w0: int) -> dict:
    """``paused``: the tasks the API measurement pauses meanwhile, from the Pause call to the
    Resume answer (filled while the window runs): their instants in that span may rightly not fire."""
    w1 = w0 + 60 * minutes
    say(f"  window {datetime.fromtimestamp(w0, timezone.utc):%H:%M:%S}-{datetime.fromtimestamp(w1, timezone.utc):%H:%M:%S} UTC")
    await asyncio.sleep(max(0.0, w0 - time.time()))
    cpu = await cpu_over(pids, w1 - time.time())
    rss = {role: round((rss_of(pid) or {}).get("rss", 0) / 1e6) for role, pid in pids.items()}
    await asyncio.sleep(3)
    hits = [h for h in await rx.hits(session, f"/{tag}/") if w0 - 1 <= h[2] < w1 + 2]
    expected = {(i, w0 + 60 * m + i % 60) for i in ids for m in range(minutes)}
    while_paused = {(i, at) for i, at in expected if ids[i] in paused and paused[ids[i]][0] <= at <= paused[ids[i]][1]}
    expected -= while_paused
    got: Counter = Counter()
    late = []
    for path, key, t in hits:
        i = int(path.rsplit("/", 1)[1])
        instant = w0 + ((int(t + 30 - w0 - i % 60) // 60) * 60) + i % 60  # the nearest instant of task i
        if (i, instant) in expected:
            got[(i, instant)] += 1
            late.append(t - instant)
    delivered = len(got)
    keys = Counter(h[1] for h in hits)
    # recorded within 60 s: flow runs whose expected start is in the window
    await asyncio.sleep(max(0.0, w1 + 60 - time.time()))
    recorded = await count_runs(session, system, w0, w1)
    return {"minutes": minutes, "expected": len(expected), "delivered": delivered, "while_paused": len(while_paused),
            "lost": len(expected) - delivered,
            # which, to look them up in the logs kept beside the results
            "lost_examples": [[ids[i], datetime.fromtimestamp(at, timezone.utc).isoformat()]
                              for i, at in sorted(expected - set(got))[:20]],
            "duplicates": sum(v - 1 for v in keys.values() if v > 1),
            "p50_s": round(pct(late, 50), 3) if late else None, "p99_s": round(pct(late, 99), 3) if late else None,
            "recorded_60s": recorded, "cpu": cpu, "rss_mb": rss}


async def count_runs(session, system: System, w0: float, w1: float) -> int:
    body = {"flow_runs": {"expected_start_time": {
        "after_": datetime.fromtimestamp(w0 - 0.5, timezone.utc).isoformat(),
        "before_": datetime.fromtimestamp(w1 - 0.5, timezone.utc).isoformat()},
        "state": {"type": {"any_": ["COMPLETED", "FAILED"]}}}}
    async with session.post(f"{system.prefect}/flow_runs/count", json=body, headers=_basic(system)) as r:
        return await r.json()


def _basic(system: System) -> dict[str, str]:
    from schedulemaster.credentials import basic_auth

    return {"Authorization": basic_auth(system.auth_string)}


async def latencies(session, system: System, ids: dict[int, str], tag: str,
                    paused: dict[str, tuple[float, float]]) -> dict:
    """The API's answer times; the tasks it pauses and resumes go into ``paused`` with the
    span from the Pause call to the Resume answer."""
    sample = [ids[i] for i in sorted(ids)[:20]]
    out = {}
    calls = {
        "query_list": ("GET", "/api/Task/QueryList", [{"pageNumber": "1", "pageSize": "100"}] * 20),
        "query_list_title": ("GET", "/api/Task/QueryList",
                             [{"pageNumber": "1", "pageSize": "100", "name": f"{tag}-1"}] * 20),
        "detail": ("GET", "/api/Task/QueryTaskDetail", [{"id": t} for t in sample]),
        "pause": ("POST", "/api/Task/Pause", [{"id": t} for t in sample]),
        "resume": ("POST", "/api/Task/Resume", [{"id": t} for t in sample]),
    }
    for name, (method, path, args) in calls.items():
        lat, failed = [], 0
        for a in args:
            kw = {"params": a} if method == "GET" else {"data": a}
            sent = time.time()
            elapsed, status, body = await api_call(session, method, system.api + path, **kw)
            if name == "pause":
                paused[a["id"]] = (sent, float("inf"))
            elif name == "resume":
                paused[a["id"]] = (paused[a["id"]][0], time.time())
            lat.append(elapsed)
            failed += status != 200
        out[name] = {"p50_ms": round(pct(lat, 50) * 1000, 1), "p99_ms": round(pct(lat, 99) * 1000, 1),
                     "failed": failed, "each_ms": [round(x * 1000, 1) for x in lat]}  # which call was the slow one
    return out


def notebook_tasks(system: System) -> dict:
    import subprocess

    # the first call in a fresh process also imports pandas and Prefect's client (a notebook's
    # first cell); the second is what each later call costs
    code = ("import time, schedulemaster as sm\n"
            f"sm.connect({system.api!r}, user='admin', password='111111')\n"
            "t = time.perf_counter(); df = sm.tasks(); first = time.perf_counter() - t\n"
            "t = time.perf_counter(); df = sm.tasks(); print(len(df), first, time.perf_counter() - t)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **system.client_env})
    if r.returncode != 0:
        return {"error": r.stderr[-500:]}
    rows, first, again = r.stdout.split()[-3:]
    return {"rows": int(rows), "seconds": round(float(first), 2), "again": round(float(again), 2)}


async def stop_all(session, system: System, ids: dict[int, str], concurrency: int) -> dict:
    queue = list(ids.values())
    failed = 0
    t = time.monotonic()

    async def worker():
        nonlocal failed
        while queue:
            tid = queue.pop()
            _e, status, body = await api_call(session, "POST", f"{system.api}/api/Task/Stop", data={"id": tid})
            failed += not ok(status, body)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - t
    return {"stopped": len(ids) - failed, "failed": failed, "rate": round(len(ids) / seconds, 1)}


async def plain_prefect(system: System, n: int, concurrency: int) -> dict:
    """Plain Prefect creating the same number of deployments with a cron schedule each."""
    os.environ["PREFECT_API_URL"] = system.prefect
    os.environ["PREFECT_API_AUTH_STRING"] = system.auth_string
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("scale-baseline")
        queue = list(range(n))
        t = time.monotonic()

        async def worker():
            while queue:
                i = queue.pop(0)
                await client.create_deployment(
                    flow_id=flow_id, name=f"plain-{i}", paused=True, entrypoint="bench/baseline_flow.py:post_hit",
                    schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron=f"* * * * * {i % 60}"))])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - t
    return {"deployments": n, "seconds": round(seconds, 1), "rate": round(n / seconds, 1)}


def table(res: dict) -> list[str]:
    c, f, lat = res["create"], res["fire"], res["api"]
    rows = [
        ("tasks", f"{c['tasks']:,}", ""),
        ("idle CPU, no tasks (% of a core)", f"{res['idle']['total']} {res['idle']}", ""),
        ("create + start rate", f"{c['rate']}/s; per 1,000: {c['rate_per_1000']}", GOALS["create_rate"]),
        ("  refused", f"{c['refused']}", "0"),
        ("  Create latency p50 / p99", f"{c['p50_ms']} / {c['p99_ms']} ms", ""),
        ("plain Prefect create_deployment rate", f"{res['plain']['rate']}/s" if res.get("plain") else "-", ""),
        ("QueryList 100 rows p50 / p99", f"{lat['query_list']['p50_ms']} / {lat['query_list']['p99_ms']} ms",
         GOALS["query_list"]),
        ("QueryList with title filter p50 / p99",
         f"{lat['query_list_title']['p50_ms']} / {lat['query_list_title']['p99_ms']} ms", GOALS["query_list"]),
        ("QueryTaskDetail p50 / p99", f"{lat['detail']['p50_ms']} / {lat['detail']['p99_ms']} ms", GOALS["detail"]),
        ("Pause / Resume p99", f"{lat['pause']['p99_ms']} / {lat['resume']['p99_ms']} ms", GOALS["action_p99"]),
        ("sm.tasks() first call / again", f"{res['notebook'].get('seconds')} / {res['notebook'].get('again')} s "
                                           f"({res['notebook'].get('rows')} rows)", GOALS["sm_tasks"]),
        ("firings expected / delivered / lost / duplicates",
         f"{f['expected']:,} / {f['delivered']:,} / {f['lost']:,} / {f['duplicates']:,}"
         f" (not expected: {f.get('while_paused', 0)} fell while their task was paused)", "lost 0, dup 0"),
        ("lateness p50 / p99", f"{f['p50_s']} / {f['p99_s']} s", GOALS["lateness_p99"]),
        ("recorded in Prefect within 60 s", f"{f['recorded_60s']:,}", f"{f['delivered']:,}"),
        ("CPU during the window (% of a core)", f"{f['cpu']['total']} {f['cpu']}", GOALS["cpu_load"]),
        ("RSS (MB)", f"{f['rss_mb']}", f"master {GOALS['master_rss']}, node {GOALS['node_rss']}"),
        ("Stop every task", f"{res['stop']['rate']}/s, {res['stop']['failed']} failed", ""),
        ("idle CPU, all stopped (% of a core)", f"{res['stopped']['total']} {res['stopped']}", GOALS["cpu_stopped"]),
        ("  the same, 60 s later", f"{res['stopped_later']['total']} {res['stopped_later']}", GOALS["cpu_stopped"]),
    ]
    width = max(len(r[0]) for r in rows)
    return [f"{a:<{width}}  {b}" + (f"   (goal {g})" if g else "") for a, b, g in rows]


async def scenario(system: System, rx: Receiver, args, res: dict) -> None:
    import aiohttp

    tag = f"s{int(time.time()) % 100000}"
    async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=300),
                                     connector=aiohttp.TCPConnector(limit=64)) as session:
        await rx.wait(session)
        pids = processes(system)
        say(f"idle {args.idle_seconds} s: {pids}")
        res["idle"] = await cpu_over(pids, args.idle_seconds)
        say(f"creating {args.tasks} tasks, {args.concurrency} at once")
        create = await create_tasks(session, system, rx, args.tasks, args.concurrency, tag)
        ids = create.pop("ids")
        res["create"] = create
        say(f"  {create['rate']}/s; firing window of {args.window} min")
        pids = processes(system)  # a process restarted meanwhile is measured as it is now
        paused: dict[str, tuple[float, float]] = {}
        w0 = window_start()
        fire_task = asyncio.create_task(fire_window(session, system, rx, pids, ids, args.window, tag, paused, w0))
        # inside the window: the API under firing load, and the sampled tasks (firing at seconds
        # 0-19) paused and resumed around some of their instants, which must still fire after it
        await asyncio.sleep(max(0.0, w0 + 5 - time.time()))
        res["api"] = await latencies(session, system, ids, tag, paused)
        res["notebook"] = await asyncio.to_thread(notebook_tasks, system)
        res["fire"] = await fire_task
        say("stopping every task")
        res["stop"] = await stop_all(session, system, ids, args.concurrency)
        await asyncio.sleep(10)
        res["stopped"] = await cpu_over(processes(system), args.idle_seconds)
        # and once the Stops' aftermath (their events, the stand-ins removed) is done
        await asyncio.sleep(60)
        res["stopped_later"] = await cpu_over(processes(system), args.idle_seconds)
    if args.baseline:
        say(f"plain Prefect: {args.baseline} deployments")
        res["plain"] = await plain_prefect(system, args.baseline, args.concurrency)
    res["restarts"] = [line.strip() for line in system.output if " exited with code " in line]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4, help="API calls at once")
    ap.add_argument("--window", type=int, default=2, help="minutes of firing measured")
    ap.add_argument("--idle-seconds", type=float, default=30)
    ap.add_argument("--baseline", type=int, default=None, help="plain Prefect deployments (default: --tasks)")
    ap.add_argument("--postgres", action="store_true", help="the store and Prefect on this machine's PostgreSQL")
    args = ap.parse_args()
    if args.baseline is None:
        args.baseline = args.tasks
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res: dict = {"args": vars(args), "stamp": stamp}
    env = {}
    if args.postgres:
        env["SM_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/sm_scale_{stamp.replace('-', '_')}"
    with tempfile.TemporaryDirectory(prefix="sm-scale-") as tmp:
        rx = Receiver()
        system = System(Path(tmp), env=env, timezone="UTC")
        t = time.monotonic()
        system.start(timeout=600)
        res["up_ready_s"] = round(time.monotonic() - t, 1)
        try:
            asyncio.run(scenario(system, rx, args, res))
        finally:
            system.stop()
            rx.close()
            import shutil  # the system's logs outlive its temporary data dir

            shutil.copytree(Path(tmp) / "logs", ROOT / "bench" / "results" / f"scale-{stamp}-logs",
                            dirs_exist_ok=True)
            if args.postgres:
                _drop(env["SM_DATABASE_URL"])
    lines = table(res)
    print("\n".join(lines))
    out = ROOT / "bench" / "results" / f"scale-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    return 0


def _drop(url: str) -> None:
    import subprocess

    name = url.rsplit("/", 1)[1]
    for db in (name, f"{name}_prefect"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f'DROP DATABASE IF EXISTS "{db}"'],
                       capture_output=True)


if __name__ == "__main__":
    raise SystemExit(main())
