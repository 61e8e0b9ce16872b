"""The console's pages at size: every page's time with 1,000 tasks and 100,000 delayed tasks.

    .venv/bin/python bench/console.py                          # the issue's size
    .venv/bin/python bench/console.py --tasks 200 --delayed 20000 --repeat 10

One `schedulemaster up` on a temporary data dir (SQLite, the embedded default). --tasks HTTP
tasks through Task/Create (half of them started, on a cron that fires once a day at 03:00, so
their next fire time is computed and nothing fires during the run), --delayed delayed tasks
through DelayTask/CreateBatch (due in one to two days), a few runs and their log lines from a
task fired once. Then a signed-in client asks each page --repeat times in turn (keep-alive,
127.0.0.1) and the time from request to the whole answer is the page's time: the console's
goal is 300 ms of server time, which this bounds from above. Prints the table (p50, p99, max,
goal, met?) and writes bench/results/console-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from helpers import AUTH, Receiver, System, bench_credential  # noqa: E402
from lateness import create_tasks  # noqa: E402

bench_credential()
GOAL_MS = 300.0
BATCH = 10_000


def fill_delayed(system: System, n: int, url: str) -> str:
    """n delayed tasks due in a day or two; returns one topic used by a tenth of them."""
    start = datetime.now() + timedelta(days=1)
    with httpx.Client(headers=AUTH, timeout=600) as c:
        for first in range(0, n, BATCH):
            items = [{"SourceApp": "bench", "Topic": f"topic-{i % 10}", "ContentKey": f"key-{i}",
                      "DelayPattern": "Absolute",
                      "DelayAbsoluteTime": (start + timedelta(seconds=i % 86_400)).strftime("%Y-%m-%d %H:%M:%S"),
                      "NotifyUrl": url, "NotifyDataType": "application/json", "NotifyBody": '{"i": %d}' % i}
                     for i in range(first, min(n, first + BATCH))]
            body = c.post(f"{system.api}/api/DelayTask/CreateBatch", json=items).json()
            if not body.get("Success"):
                raise RuntimeError(body)
            print(f"  delayed: {min(n, first + BATCH)} / {n}", file=sys.stderr, flush=True)
    return "topic-3"


def sign_in(system: System) -> httpx.Client:
    client = httpx.Client(base_url=system.api, timeout=60)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post("/login", data={"csrf": token, "username": "admin", "password": "111111"})
    if r.status_code != 303:
        raise RuntimeError(f"sign-in failed: {r.status_code}")
    return client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--delayed", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    receiver = Receiver()
    system = System(Path(tempfile.mkdtemp(prefix="sm-bench-console-"))).start()
    try:
        t0 = time.perf_counter()
        ids = create_tasks(system, args.tasks, lambda i: {
            "Title": f"bench task {i:05d}", "MetaType": 2, "RunLoop": "true", "CronExpression": "0 0 3 * * ?",
            "HttpRequestUrl": receiver.url("/bench"), "HttpMethod": "GET", "RunNow": "true" if i % 2 else "false"})
        print(f"  {len(ids)} tasks in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        with httpx.Client(headers=AUTH, timeout=60) as c:  # a few runs with logs for the task and log pages
            for _ in range(3):
                c.post(f"{system.api}/api/Task/RunOnce", data={"id": ids[1]})
        receiver.wait_for("/bench", 3, timeout=60)
        t0 = time.perf_counter()
        topic = fill_delayed(system, args.delayed, receiver.url("/delayed"))
        print(f"  {args.delayed} delayed in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        client = sign_in(system)
        delayed_id = re.search(r'<tr data-id="([0-9a-f-]{36})">', client.get("/delayed").text).group(1)
        pages = {
            "tasks": "/tasks", "tasks, title filter": "/tasks?title=task%2000999",
            "tasks, status filter": "/tasks?status=running", "tasks, page 40": "/tasks?page=40",
            "a task with its runs": f"/tasks/{ids[1]}", "task edit form": f"/tasks/{ids[1]}/edit",
            "new task form": "/tasks/new", "delayed": "/delayed", "delayed, topic filter": f"/delayed?topic={topic}",
            "delayed, status filter": "/delayed?status=2", "delayed, page 1000": "/delayed?page=1000",
            "a delayed task": f"/delayed/{delayed_id}", "nodes": "/nodes", "accounts": "/accounts",
            "settings": "/settings", "system log": "/log", "cron preview": "/cron/preview?cron=0/5+*+*+*+*+%3F",
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        for _ in range(args.repeat):
            for name, path in pages.items():
                t = time.perf_counter()
                r = client.get(path)
                times[name].append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status_code}")
        rows = []
        print(f"\nconsole pages, {args.tasks} tasks, {args.delayed} delayed tasks, {args.repeat} requests each "
              f"(ms, request to whole answer on 127.0.0.1)")
        print(f"{'page':28} {'p50':>8} {'p99':>8} {'max':>8} {'goal':>6}  met")
        for name, ms in times.items():
            ms.sort()
            p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
            rows.append({"page": name, "path": pages[name], "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                         "max_ms": round(ms[-1], 1), "goal_ms": GOAL_MS, "met": p99 < GOAL_MS})
            print(f"{name:28} {p50:8.1f} {p99:8.1f} {ms[-1]:8.1f} {GOAL_MS:6.0f}  {'yes' if p99 < GOAL_MS else 'NO'}")
        out = ROOT / "bench" / "results" / f"console-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"tasks": args.tasks, "delayed": args.delayed, "repeat": args.repeat,
                                   "pages": rows, "id": str(uuid.uuid4())}, indent=1))
        print(f"\nwritten: {out.relative_to(ROOT)}")
    finally:
        system.stop()
        receiver.close()


if __name__ == "__main__":
    main()
