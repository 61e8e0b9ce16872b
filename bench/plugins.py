"""Plugin tasks (MetaType 1): firings per minute on one node, and the first firing after Start,
side by side with plain Prefect running the same callable with a ProcessWorker (one flow run,
one Python process, per firing).

    .venv/bin/python bench/plugins.py                       # 10 tasks every second for 60 s; 5 Starts
    .venv/bin/python bench/plugins.py --tasks 20 --seconds 30 --no-baseline

ours:  K tasks of `bench_plugins.Noop` (a trivial run), cron every second, for D seconds ->
       firings recorded in Prefect for instants in the window (expected K x D), lost, per minute,
       lateness (the node's own start minus the Quartz instant). First firing: Start answered
       (the owning node imported and initialized the plugin) and first run started, from the
       moment Start was sent.
plain: the same callable in a flow (`bench/baseline_plugin_flow.py`), a ProcessWorker at its
       defaults: N runs due now -> how many completed within D seconds (runs per minute), and
       single runs' start after their creation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from lateness import Baseline, call, create_tasks, pct, stop_tasks  # noqa: E402
from helpers import AUTH, System  # noqa: E402


def runs_of(system: System, ids: list[str], after: float, before: float) -> list[dict]:
    out = []
    for i in range(0, len(ids), 50):
        offset = 0
        while True:
            page = call("POST", f"{system.prefect}/flow_runs/filter", json={
                "deployments": {"id": {"any_": ids[i:i + 50]}},
                "flow_runs": {"expected_start_time": {
                    "after_": datetime.fromtimestamp(after, timezone.utc).isoformat(),
                    "before_": datetime.fromtimestamp(before, timezone.utc).isoformat()}},
                "limit": 200, "offset": offset}).json()
            out += [r for r in page if "fire" in (r.get("parameters") or {})]
            if len(page) < 200:
                break
            offset += 200
    return out


def ours(system: System, k: int, seconds: int, starts: int) -> dict:
    make = lambda i: {"Title": f"noop-{i}", "MetaType": "1", "RunLoop": "true",  # noqa: E731
                      "CronExpression": "* * * * * ?", "AssemblyName": "bench_plugins", "ClassName": "Noop"}
    first: list[tuple[float, float]] = []
    probe_ids = create_tasks(system, starts, lambda i: make(f"probe-{i}"))
    with httpx.Client(headers=AUTH, timeout=120) as c:
        for tid in probe_ids:
            t0 = time.time()
            assert c.post(f"{system.api}/api/Task/Start", data={"id": tid}).json()["Success"]
            answered = time.time() - t0
            deadline = time.time() + 60
            run = None
            while time.time() < deadline and run is None:
                runs = runs_of(system, [tid], t0 - 1, t0 + 120)
                run = min(runs, key=lambda r: r["start_time"], default=None)
                time.sleep(0.2)
            started = (datetime.fromisoformat(run["start_time"]).timestamp() - t0) if run else None
            first.append((answered, started))
            c.post(f"{system.api}/api/Task/Stop", data={"id": tid})
    ids = create_tasks(system, k, make)
    with httpx.Client(headers=AUTH, timeout=120) as c:
        for tid in ids:
            assert c.post(f"{system.api}/api/Task/Start", data={"id": tid}).json()["Success"]
    w0 = float(int(time.time()) + 5)
    w1 = w0 + seconds
    time.sleep(max(0.0, w1 - time.time()) + 2)
    stop_tasks(system, ids)
    deadline = time.time() + 120
    runs: list[dict] = []
    while time.time() < deadline:
        runs = runs_of(system, ids, w0 - 0.001, w1 - 0.001)
        if len(runs) >= k * seconds:
            break
        time.sleep(3)
    late = [r["parameters"]["fire"]["lateness_ms"] / 1000 for r in runs]
    ok = sum(r["state_type"] == "COMPLETED" for r in runs)
    return {"tasks": k, "seconds": seconds, "expected": k * seconds, "recorded": len(runs), "completed": ok,
            "lost": max(0, k * seconds - len(runs)), "per_min": round(len(runs) / seconds * 60),
            "lateness_p50": pct(late, 50), "lateness_p99": pct(late, 99),
            "start_answered": [round(a, 3) for a, _ in first],
            "first_firing": [None if s is None else round(s, 3) for _, s in first]}


def plain(system: System, n: int, seconds: int, singles: int) -> dict:
    b = Baseline(system)
    b.flow_id = call("POST", f"{b.api}/flows/", json={"name": "bench-baseline-plugin"}).json()["id"]
    try:
        body = {"name": "plugin-noop", "flow_id": b.flow_id, "work_pool_name": b.pool,
                "entrypoint": "bench/baseline_plugin_flow.py:run_plugin", "parameters": {},
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]}
        dep = call("POST", f"{b.api}/deployments/", json=body).json()["id"]
        b.deployments.append(dep)
        b.start_worker()
        first = []
        for _ in range(singles):
            t0 = time.time()
            run = call("POST", f"{b.api}/deployments/{dep}/create_flow_run", json={}).json()
            deadline = time.time() + 120
            while time.time() < deadline:
                r = call("GET", f"{b.api}/flow_runs/{run['id']}").json()
                if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
                    first.append(round(datetime.fromisoformat(r["start_time"]).timestamp() - t0, 3)
                                 if r["start_time"] else None)
                    break
                time.sleep(0.2)
            else:
                first.append(None)
        # the same offered load as ours (tasks x seconds firings), all due now; what is
        # done `seconds` after the first was created is the ProcessWorker's rate
        t0 = time.time()
        for _ in range(n):
            call("POST", f"{b.api}/deployments/{dep}/create_flow_run", json={}).raise_for_status()
            if time.time() - t0 > seconds:
                break
        created = time.time() - t0
        time.sleep(max(0.0, t0 + seconds - time.time()))
        done = call("POST", f"{b.api}/flow_runs/count", json={
            "deployments": {"id": {"any_": [dep]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).json()
        done -= sum(1 for f in first if f is not None)
    finally:
        b.close()
    return {"runs": n, "seconds": seconds, "completed": done, "per_min": round(done / seconds * 60),
            "create_s": round(created, 1), "first_firing": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--maxc", type=int, default=20)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "plugins.json"))
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "bench" / "plugin_pkg"),
                                                           os.environ.get("PYTHONPATH")) if p)
    system = System(Path(tempfile.mkdtemp(prefix="sm-bench-")), up_args=["--maxc", str(args.maxc)])
    system.start()
    results: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    try:
        results["ours"] = ours(system, args.tasks, args.seconds, args.starts)
        print("ours ", json.dumps(results["ours"]), flush=True)
        if not args.no_baseline:
            results["plain"] = plain(system, args.tasks * args.seconds, args.seconds, args.starts)
            print("plain", json.dumps(results["plain"]), flush=True)
    finally:
        system.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    o, p = results["ours"], results.get("plain")
    med = lambda xs: pct([x for x in xs if x is not None], 50)  # noqa: E731
    print()
    print("| plugin firings | who | firings/min on one node | lost | first firing after Start (median) |")
    print("|---|---|---|---|---|")
    print(f"| {o['tasks']} tasks every 1 s, {o['seconds']} s ({o['expected']} firings) | ours | {o['per_min']} ({o['recorded']}/{o['expected']}) | "
          f"{o['lost']} | Start answered {med(o['start_answered'])} s, first run {med(o['first_firing'])} s |")
    if p:
        print(f"| {p['runs']} runs offered, due now, {p['seconds']} s | plain ProcessWorker | {p['per_min']} "
              f"({p['completed']}/{p['runs']} done) | — | first run {med(p['first_firing'])} s |")


if __name__ == "__main__":
    main()
