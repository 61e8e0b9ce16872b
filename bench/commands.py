"""How long a command takes to act: RunOnce, a run started from Prefect's UI, a Next on another
node, beside plain Prefect's run_deployment on the same server.

    .venv/bin/python bench/commands.py --tries 30

One `schedulemaster up` (SQLite, worker1) plus a second node, worker2, on a temporary data dir,
and a receiver process that timestamps each arrival (bench/receiver.py). Each try is one
command on an idle system, one after the other:

* RunOnce: ``POST /api/Task/RunOnce`` sent -> the task's request arrives;
* UI run: ``POST /api/deployments/{id}/create_flow_run`` (the UI's Run button) sent -> arrival;
* Next on another node: a parent pinned to worker1 whose child is pinned to worker2, the parent
  run once -> the child's request arrives, measured from the parent's arrival;
* Next of a scheduled firing: the same with a parent firing every 2 s (its node's firing loop
  creates the child's run, not a worker-path run);
* plugin Start: ``POST /api/Task/Start`` of a plugin task sent -> answered (the node loaded and
  initialized the plugin), while 20 plugin tasks fire every second on the same node;
* plain Prefect: ``create_flow_run`` of a deployment of bench/baseline_flow.py in a process work
  pool with Prefect's own worker at its defaults (what ``run_deployment`` does) -> arrival.

Prints p50 / p99 / max per command against the goals of issue 20 (RunOnce and Next within
300 ms at p99, a UI run within 2 s, a plugin Start answered within 1 s) and writes
bench/results/commands-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from lateness import Baseline, ReceiverProc, call, pct  # noqa: E402
from helpers import AUTH, System  # noqa: E402

import httpx  # noqa: E402

GOALS = {"RunOnce": 0.3, "UI run": 2.0, "Next on another node": 0.3, "Next of a scheduled firing": 0.3,
         "plugin Start, 20 plugins/s": 1.0}
LOAD_PLUGINS = 20  # plugin tasks firing every second while plugin Starts are timed
WAIT_SECONDS = 60.0


def arrival(rx: ReceiverProc, path: str, count: int) -> float:
    """When the count-th request for ``path`` arrived (waiting for it)."""
    deadline = time.time() + WAIT_SECONDS
    while time.time() < deadline:
        hits = sorted(h[1] for h in rx.hits(path) if h[0] == path)
        if len(hits) >= count:
            return hits[count - 1]
        time.sleep(0.02)
    raise TimeoutError(f"request {count} for {path} never arrived")


def legacy(system: System, action: str, **data) -> dict:
    body = httpx.post(f"{system.api}/api/Task/{action}", data=data, headers=AUTH, timeout=60).json()
    if not body.get("Success"):
        raise RuntimeError(f"{action}: {body}")
    return body


def create(system: System, url: str, title: str, **fields) -> str:
    fields = {"CronExpression": "0 0 3 * * ?", **fields}
    return legacy(system, "Create", Title=title, MetaType="2", RunLoop="true", HttpRequestUrl=url, HttpMethod="POST",
                  HttpContentType="application/json", HttpBody="{}", **fields)["Data"]


def timed(tries: int, send, path: str, rx: ReceiverProc, since=None) -> list[float]:
    out = []
    for i in range(1, tries + 1):
        t0 = time.time()
        send()
        got = arrival(rx, path, i)
        out.append(got - (since(i) if since else t0))
        time.sleep(0.3)  # one command at a time, on an idle system
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    rx = ReceiverProc()
    system = System(Path(tempfile.mkdtemp(prefix="sm-commands-"))).start()
    worker2 = system.start_node("worker2")
    results: dict[str, list[float]] = {}
    try:
        system.wait_node("worker1")
        system.wait_node("worker2")
        once = create(system, rx.url("/once"), "bench run once", Executors="worker1")
        legacy(system, "Start", id=once)
        results["RunOnce"] = timed(args.tries, lambda: legacy(system, "RunOnce", id=once), "/once", rx)
        ui = create(system, rx.url("/ui"), "bench ui run", Executors="worker1")
        legacy(system, "Start", id=ui)
        results["UI run"] = timed(args.tries, lambda: call(
            "POST", f"{system.prefect}/deployments/{ui}/create_flow_run",
            json={"state": {"type": "SCHEDULED"}}).raise_for_status(), "/ui", rx)
        child = create(system, rx.url("/child"), "bench child", Executors="worker2")
        parent = create(system, rx.url("/parent"), "bench parent", Executors="worker1", Nexts=child)
        legacy(system, "Start", id=child)
        legacy(system, "Start", id=parent)
        results["Next on another node"] = timed(
            args.tries, lambda: legacy(system, "RunOnce", id=parent), "/child", rx,
            since=lambda i: arrival(rx, "/parent", i))
        # the same with a scheduled parent (the firing loop's children, node/firing.py), every 2 s
        child2 = create(system, rx.url("/child2"), "bench child of a schedule", Executors="worker2")
        legacy(system, "Start", id=child2)
        parent2 = create(system, rx.url("/parent2"), "bench scheduled parent", Executors="worker1", Nexts=child2,
                         CronExpression="0/2 * * * * ?")
        legacy(system, "Start", id=parent2)
        arrival(rx, "/child2", args.tries)
        legacy(system, "Stop", id=parent2)
        results["Next of a scheduled firing"] = [arrival(rx, "/child2", i) - arrival(rx, "/parent2", i)
                                                 for i in range(1, args.tries + 1)]
        # a plugin Start (the node loads and initializes it, the API answers after) while 20
        # plugin tasks fire every second: timed from the request to the answer
        for i in range(LOAD_PLUGINS):
            system.create_plugin("plain_job", cron="* * * * * ?", Title=f"bench load {i}", Executors="worker1",
                                 params={"url": rx.url("/load")}, RunNow="true")
        arrival(rx, "/load", LOAD_PLUGINS * 3)  # the load is on
        started = system.create_plugin("plain_job", cron="0 0 3 * * ?", Title="bench start", Executors="worker1",
                                       params={"url": rx.url("/started")})

        def start_once() -> float:
            t0 = time.time()
            legacy(system, "Start", id=started)
            took = time.time() - t0
            legacy(system, "Stop", id=started)
            time.sleep(0.3)
            return took

        results["plugin Start, 20 plugins/s"] = [start_once() for _ in range(args.tries)]
        if not args.no_baseline:
            b = Baseline(system)
            try:
                dep = b.deploy("bench-command", rx.url("/plain"))
                b.start_worker()
                results["plain Prefect create_flow_run"] = timed(args.tries, lambda: call(
                    "POST", f"{system.prefect}/deployments/{dep}/create_flow_run",
                    json={"state": {"type": "SCHEDULED"}}).raise_for_status(), "/plain", rx)
            finally:
                b.close()
    finally:
        system.stop_node(worker2)
        system.stop()
        rx.close()
    print(f"{args.tries} tries each, one at a time, on an idle `up` (SQLite, 2 nodes); seconds from the "
          "command to the request's arrival (Next: from the parent's arrival; plugin Start: to its answer)")
    report = {}
    for name, values in results.items():
        row = {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values)}
        report[name] = row
        goal = f"   (goal p99 < {GOALS[name]:g} s)" if name in GOALS else ""
        print(f"  {name:32} p50 {row['p50']:.3f}  p99 {row['p99']:.3f}  max {row['max']:.3f}{goal}")
    out = ROOT / "bench" / "results" / f"commands-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"tries": args.tries, "results": report, "raw": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
