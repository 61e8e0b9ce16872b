"""Lateness and throughput of HTTP firings: this project's node vs plain Prefect, same server.

    .venv/bin/python bench/lateness.py                  # burst N=100 and 1000, sustained 100 tasks/5 s for 300 s
    .venv/bin/python bench/lateness.py --bursts 100 --sustained-seconds 60 --no-baseline

Scenarios (each against a fresh local receiver process that timestamps arrivals):
* burst: N HTTP tasks all due at the same instant T0 -> lateness = arrival - T0;
* sustained: K HTTP tasks firing every 5 s for D seconds -> delivered, lost, duplicated and
  recorded (a Prefect flow run exists for the firing) per minute.
"ours" = `schedulemaster up` (legacy API -> deployments; node fires, records in bulk).
"plain" = the same Prefect server, one deployment per task of a flow that POSTs, a
ProcessWorker at its defaults, one flow run per firing (runs created Scheduled at T0 for
the burst; a Prefect cron schedule for the sustained run). The plain runs stop themselves
at a deadline and count what never arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import AUTH, System, bench_credential, free_port  # noqa: E402

bench_credential()  # Prefect's API needs it: the systems started here use it, and so does `call`


def call(method: str, url: str, **kw) -> httpx.Response:
    """Prefect's API on SQLite answers 503 when the database is busy; retry like its client."""
    for attempt in range(60):
        r = httpx.request(method, url, timeout=120, **kw, auth=tuple(  # type: ignore[arg-type]
            os.environ["PREFECT_API_AUTH_STRING"].split(":", 1)))
        if r.status_code != 503:
            return r
        time.sleep(min(0.25 * (attempt + 1), 2.0))
    return r


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class ReceiverProc:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), str(self.port)])
        for _ in range(100):
            try:
                httpx.get(self.url("/stats"), timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("receiver did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, prefix: str) -> list[tuple[str, float, str]]:
        return [h for h in httpx.get(self.url("/stats"), timeout=60).json() if h[0].startswith(prefix)]

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def local(system: System, t: float) -> str:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(t, ZoneInfo(system.timezone)).strftime("%Y-%m-%d %H:%M:%S")


def create_tasks(system: System, n: int, make) -> list[str]:
    ids = []
    with httpx.Client(headers=AUTH, timeout=120) as c:
        for i in range(n):
            t = time.time()
            body = c.post(f"{system.api}/api/Task/Create", data=make(i)).json()
            if time.time() - t > 2:
                print(f"  create #{i} took {time.time() - t:.1f} s", file=sys.stderr, flush=True)
            if not body["Success"]:
                raise RuntimeError(body)
            ids.append(body["Data"])
    return ids


def count_recorded(system: System, ids: list[str]) -> int:
    total = 0
    for i in range(0, len(ids), 100):
        r = call("POST", f"{system.prefect}/flow_runs/count", json={
            "deployments": {"id": {"any_": ids[i:i + 100]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED"]}}}})
        total += r.json()
    return total


def stop_tasks(system: System, ids: list[str]) -> None:
    with httpx.Client(headers=AUTH, timeout=180) as c:
        for tid in ids:
            try:
                c.post(f"{system.api}/api/Task/Stop", data={"id": tid})
            except httpx.HTTPError as exc:  # measured: SQLite can hold its write lock 60 s
                print(f"  stop {tid} failed: {exc!r}", file=sys.stderr, flush=True)


# ---- ours ------------------------------------------------------------------------------

def ours_burst(system: System, rx: ReceiverProc, n: int, tag: str) -> dict:
    lead = 30 + n * 0.3  # creating a task takes ~0.13-0.3 s here
    t0 = float(int(time.time() + lead))
    t_create = time.time()
    ids = create_tasks(system, n, lambda i: {
        "Title": f"{tag}-{i}", "MetaType": "2", "RunLoop": "false", "StartDate": local(system, t0),
        "HttpRequestUrl": rx.url(f"/{tag}/{i}"), "HttpMethod": "POST", "HttpContentType": "application/json",
        "HttpBody": '{"i":%d}' % i, "RunNow": "true"})
    created_in = time.time() - t_create
    if time.time() > t0 - 2:
        raise RuntimeError(f"creating {n} tasks took {created_in:.0f} s, past T0")
    time.sleep(max(0.0, t0 - time.time()) + 10)
    hits = rx.hits(f"/{tag}/")
    late = [h[1] - t0 for h in hits]
    keys = Counter(h[2] for h in hits)
    deadline = time.time() + 120
    recorded = 0
    while time.time() < deadline:
        recorded = count_recorded(system, ids)
        if recorded >= len(set(keys)):
            break
        time.sleep(2)
    rec_after = time.time() - t0
    stop_tasks(system, ids)
    return {"n": n, "delivered": len(set(h[0] for h in hits)), "duplicates": sum(v - 1 for v in keys.values()),
            "p50": pct(late, 50), "p95": pct(late, 95), "p99": pct(late, 99), "max": max(late, default=None),
            "recorded": recorded, "recorded_by_s": round(rec_after, 1), "create_s": round(created_in, 1)}


def ours_sustained(system: System, rx: ReceiverProc, k: int, seconds: int, tag: str) -> dict:
    ids = create_tasks(system, k, lambda i: {
        "Title": f"{tag}-{i}", "MetaType": "2", "RunLoop": "true", "CronExpression": "0/5 * * * * ?",
        "HttpRequestUrl": rx.url(f"/{tag}/{i}"), "HttpMethod": "POST", "HttpContentType": "application/json",
        "HttpBody": '{"i":%d}' % i, "RunNow": "true"})
    w0 = (int(time.time()) // 5 + 3) * 5  # first instant every task is surely loaded for
    w1 = w0 + seconds
    time.sleep(max(0.0, w1 - time.time()) + 3)
    stop_tasks(system, ids)
    hits = rx.hits(f"/{tag}/")
    window = [h for h in hits if w0 - 0.5 <= h[1] < w1 - 0.5]
    expected = k * (seconds // 5)
    per_key = Counter(h[2] for h in window)
    distinct = {(h[0], round(h[1] / 5)) for h in window}
    late = [h[1] - round(h[1] / 5) * 5 for h in window]
    time.sleep(10)
    recorded = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        recorded = count_recorded(system, ids)
        if recorded >= len(hits):
            break
        time.sleep(2)
    return {"tasks": k, "seconds": seconds, "expected": expected, "delivered": len(distinct),
            "lost": max(0, expected - len(distinct)), "duplicates": sum(v - 1 for v in per_key.values()),
            "per_min": round(len(distinct) / seconds * 60), "recorded": recorded, "fired_total": len(hits),
            "p50": pct(late, 50), "p99": pct(late, 99)}


# ---- plain Prefect ----------------------------------------------------------------------

class Baseline:
    """Deployments of `bench/baseline_flow.py` in a process work pool, and its worker."""

    def __init__(self, system: System):
        self.s = system
        self.api = system.prefect
        self.pool = f"bench-process-{int(time.time())}"
        call("POST", f"{self.api}/work_pools/", json={"name": self.pool, "type": "process"}).raise_for_status()
        self.flow_id = call("POST", f"{self.api}/flows/", json={"name": "bench-baseline-post"}).json()["id"]
        self.deployments: list[str] = []
        self.worker: subprocess.Popen | None = None

    def deploy(self, name: str, url: str, schedule: dict | None = None,
               entrypoint: str = "bench/baseline_flow.py:post_hit") -> str:
        body = {"name": name, "flow_id": self.flow_id, "work_pool_name": self.pool,
                "entrypoint": entrypoint, "parameters": {"url": url},
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
                "schedules": [schedule] if schedule else []}
        r = call("POST", f"{self.api}/deployments/", json=body)
        r.raise_for_status()
        self.deployments.append(r.json()["id"])
        return r.json()["id"]

    def start_worker(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_API_URL": self.api, "PREFECT_HOME": str(Path(tempfile.mkdtemp())),
                    "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"]})
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, "--type", "process"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def close(self):
        if self.worker and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
        for d in self.deployments:  # also drops their pending runs
            call("DELETE", f"{self.api}/deployments/{d}")
        flt = {"work_pools": {"name": {"any_": [self.pool]}}, "limit": 200}
        runs = call("POST", f"{self.api}/flow_runs/filter", json=flt).json()
        while runs:
            for r in runs:
                call("DELETE", f"{self.api}/flow_runs/{r['id']}")
            runs = call("POST", f"{self.api}/flow_runs/filter", json=flt).json()
        call("DELETE", f"{self.api}/work_pools/{self.pool}")


def plain_burst(system: System, rx: ReceiverProc, n: int, tag: str, deadline_s: int) -> dict:
    b = Baseline(system)
    try:
        deps = [b.deploy(f"{tag}-{i}", rx.url(f"/{tag}/{i}")) for i in range(n)]
        lead = 20 + n * 0.1
        t0 = float(int(time.time() + lead))
        at = datetime.fromtimestamp(t0, timezone.utc).isoformat()
        t_create = time.time()
        for d in deps:
            call("POST", f"{b.api}/deployments/{d}/create_flow_run",
                 json={"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": at}}}).raise_for_status()
        created_in = time.time() - t_create
        b.start_worker()
        end = max(time.time(), t0) + deadline_s
        while time.time() < end and len(rx.hits(f"/{tag}/")) < n:
            time.sleep(2)
        hits = rx.hits(f"/{tag}/")
    finally:
        b.close()
    late = [h[1] - t0 for h in hits]
    keys = Counter(h[2] for h in hits)
    return {"n": n, "delivered": len(set(h[0] for h in hits)), "duplicates": sum(v - 1 for v in keys.values()),
            "p50": pct(late, 50), "p95": pct(late, 95), "p99": pct(late, 99), "max": max(late, default=None),
            "recorded": len(hits), "deadline_s": deadline_s, "create_s": round(created_in, 1)}


def plain_sustained(system: System, rx: ReceiverProc, k: int, seconds: int, tag: str) -> dict:
    b = Baseline(system)
    try:
        for i in range(k):  # croniter order in Prefect: seconds last
            b.deploy(f"{tag}-{i}", rx.url(f"/{tag}/{i}"),
                     {"schedule": {"cron": "* * * * * */5", "timezone": "UTC"}, "active": True})
        b.start_worker()
        w0 = (int(time.time()) // 5 + 3) * 5
        w1 = w0 + seconds
        time.sleep(max(0.0, w1 - time.time()) + 3)
        hits = rx.hits(f"/{tag}/")
    finally:
        b.close()
    window = [h for h in hits if w0 - 0.5 <= h[1] < w1 + 600]
    distinct = {(h[0], round(h[1] / 5)) for h in window}
    expected = k * (seconds // 5)
    keys = Counter(h[2] for h in window)
    return {"tasks": k, "seconds": seconds, "expected": expected, "delivered": min(len(distinct), expected),
            "lost": max(0, expected - len(distinct)), "duplicates": sum(v - 1 for v in keys.values()),
            "per_min": round(len(distinct) / seconds * 60), "recorded": len(hits), "fired_total": len(hits),
            "p50": None, "p99": None}


def fmt(v, unit="s"):
    return "—" if v is None else (f"{v:.3f} {unit}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", default="100,1000")
    ap.add_argument("--sustained-tasks", type=int, default=100)
    ap.add_argument("--sustained-seconds", type=int, default=300)
    ap.add_argument("--baseline-sustained-seconds", type=int, default=120)
    ap.add_argument("--baseline-deadline", type=int, default=120, help="seconds after T0 plain Prefect gets")
    ap.add_argument("--maxc", type=int, default=20, help="node worker1 --maxc")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = ap.parse_args()

    results: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "maxc": args.maxc,
                     "cpus": os.cpu_count(), "burst": [], "sustained": []}

    def fresh_system() -> System:
        # Each scenario gets its own server: plain Prefect's aftermath (1,000 runs torn
        # down, thousands of "database is locked" retries) must not bleed into the next
        # scenario. Within a scenario both sides share the server, ours first.
        return System(Path(tempfile.mkdtemp(prefix="sm-bench-")), up_args=["--maxc", str(args.maxc)]).start()

    rx = ReceiverProc()
    try:
        for n in [int(x) for x in args.bursts.split(",") if x]:
            system = fresh_system()
            try:
                r = ours_burst(system, rx, n, f"ob{n}")
                print("ours  burst", json.dumps(r), flush=True)
                results["burst"].append({"who": "ours", **r})
                if not args.no_baseline:
                    r = plain_burst(system, rx, n, f"pb{n}", args.baseline_deadline)
                    print("plain burst", json.dumps(r), flush=True)
                    results["burst"].append({"who": "plain", **r})
            finally:
                system.stop()
        if args.sustained_seconds:
            system = fresh_system()
            try:
                r = ours_sustained(system, rx, args.sustained_tasks, args.sustained_seconds, "os")
                print("ours  sustained", json.dumps(r), flush=True)
                results["sustained"].append({"who": "ours", **r})
                if not args.no_baseline and args.baseline_sustained_seconds:
                    r = plain_sustained(system, rx, args.sustained_tasks, args.baseline_sustained_seconds, "ps")
                    print("plain sustained", json.dumps(r), flush=True)
                    results["sustained"].append({"who": "plain", **r})
            finally:
                system.stop()
    finally:
        rx.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print()
    print("| burst | who | delivered | dup | lateness p50 | p95 | p99 | max | recorded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["burst"]:
        print(f"| N={r['n']} | {r['who']} | {r['delivered']}/{r['n']} | {r['duplicates']} | {fmt(r['p50'])} | "
              f"{fmt(r['p95'])} | {fmt(r['p99'])} | {fmt(r['max'])} | {r['recorded']} |")
    print()
    print("| sustained | who | expected | delivered | lost | dup | delivered/min | recorded |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["sustained"]:
        print(f"| {r['tasks']} tasks/5 s, {r['seconds']} s | {r['who']} | {r['expected']} | {r['delivered']} | "
              f"{r['lost']} | {r['duplicates']} | {r['per_min']} | {r['recorded']} of {r['fired_total']} |")


if __name__ == "__main__":
    main()
