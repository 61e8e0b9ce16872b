"""Soak of the executor nodes in distributed mode (Prefect and the store on this machine's PostgreSQL).

    .venv/bin/python bench/soak.py                                   # 100,000 firings, all parts
    .venv/bin/python bench/soak.py --firings 3000 --phase-seconds 30 --baseline-seconds 120   # a short look

Parts, each on a fresh `schedulemaster up` (master + worker1) with worker2 and worker3 as their
own processes (part 1 on one cluster, parts 2 and 3 on another):
1. throughput: T HTTP tasks firing every second, measured over a window with 1, then 2, then 3
   nodes (worker2 and worker3 join between windows): delivered firings/min and lateness;
2. soak: S tasks firing every second until --firings firings are due, while worker2 and worker3
   are killed -9 at random and restarted (worker1 stays up). Every (task, instant) has one
   Idempotency-Key (its firing id), so the receiver's log gives lost firings, duplicates (and
   whether each was a marked re-run: a flow run tagged sm:rerun with that key), lateness, and
   per kill the failover time: from the kill until the last firing the dead process held had
   been re-run elsewhere and ended;
3. plain Prefect on the same server under the same kills: a process work pool with three
   `prefect worker start` processes, B deployments of a flow that POSTs, a Prefect cron every
   --baseline-every seconds; two of the workers (with their flow-run subprocesses: the machine
   dies) are killed -9 and restarted on the same offsets. Its load is what a process worker
   can carry on this machine (~37 runs/min, docs/prefect-facts.md), far
   below ours; the table says so.

Prints one JSON line per part and a Markdown table; writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import AUTH, PG, System, drop_databases  # noqa: E402
from lateness import Baseline, ReceiverProc, call, create_tasks, pct, stop_tasks  # noqa: E402

from schedulemaster.node.firing import firing_id  # noqa: E402

VICTIMS = ("worker2", "worker3")


def every_second(system: System, rx: ReceiverProc, n: int, tag: str) -> list[str]:
    return create_tasks(system, n, lambda i: {
        "Title": f"{tag}-{i}", "MetaType": "2", "RunLoop": "true", "CronExpression": "* * * * * ?",
        "HttpRequestUrl": rx.url(f"/{tag}/{i}"), "HttpMethod": "POST", "HttpContentType": "application/json",
        "HttpBody": '{"i":%d}' % i, "RunNow": "true"})


def expected_keys(ids: list[str], w0: int, w1: int) -> dict[str, tuple[int, int]]:
    """firing id -> (task index, scheduled epoch second) for every instant in [w0, w1)."""
    out = {}
    for i, t in enumerate(ids):
        tid = uuid.UUID(t)
        for s in range(w0, w1):
            out[firing_id(tid, datetime.fromtimestamp(s, timezone.utc))] = (i, s)
    return out


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def busy_share(a: tuple[int, int], b: tuple[int, int]) -> float:
    return round((b[0] - a[0]) / max(1, b[1] - a[1]), 2)


def node_status(system: System, name: str) -> int | None:
    r = httpx.get(f"{system.api}/api/Node/QueryList", headers=AUTH, timeout=30)
    row = next((x for x in (r.json().get("Data") or {}).get("rows") or [] if x["NodeName"] == name), None)
    return None if row is None else row["Status"]


def reruns(system: System) -> list[dict]:
    """The failover service's re-runs (flow runs tagged sm:rerun): the firing's Idempotency-Key,
    when the re-run was created and when it ended (epoch seconds)."""
    out, offset = [], 0
    while True:
        page = call("POST", f"{system.prefect}/flow_runs/filter", json={
            "flow_runs": {"tags": {"all_": ["sm:rerun"]}}, "limit": 200, "offset": offset}).json()
        out += [{"key": (r["parameters"].get("rerun") or {}).get("idempotency_key"),
                 "created": epoch(r["created"]), "ended": r["end_time"] and epoch(r["end_time"])} for r in page]
        if len(page) < 200:
            return out
        offset += 200


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def held_runs(system: System, pool: str) -> int:
    """Flow runs of the pool still Pending or Running (Prefect leaves a dead worker's there)."""
    return call("POST", f"{system.prefect}/flow_runs/count", json={
        "work_pools": {"name": {"any_": [pool]}},
        "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}).json()


class Killer(threading.Thread):
    """Kills a victim -9 every uniform(*every) s and restarts it after uniform(*down) s, until
    stopped. `kill(name)` and `start(name)` are the side's own; `offline(name)` (optional)
    is polled each second while the victim is down to time the offline detection."""

    def __init__(self, seed: int, every: tuple[float, float], down: tuple[float, float], kill, start,
                 offline=None):
        super().__init__(daemon=True)
        self.rng = random.Random(seed)
        self.every, self.down = every, down
        self.kill, self.start_, self.offline = kill, start, offline
        self.stop_at = threading.Event()
        self.kills: list[dict] = []

    def run(self):
        while not self.stop_at.wait(self.rng.uniform(*self.every)):
            victim = self.rng.choice(VICTIMS)
            down = self.rng.uniform(*self.down)
            t = time.time()
            self.kill(victim)
            event = {"victim": victim, "at": t, "down_s": round(down, 1), "offline_s": None}
            while time.time() < t + down:
                if self.offline and event["offline_s"] is None and self.offline(victim):
                    event["offline_s"] = round(time.time() - t, 1)
                time.sleep(1)
            self.start_(victim)
            self.kills.append(event)


def failover_times(kills: list[dict], runs: list[dict]) -> list[float]:
    """Per kill: seconds from the kill -9 until the last firing the dead process held (claimed,
    not reported done) had been re-run elsewhere and ended: the issue's "within 60 s". A re-run
    belongs to the last kill before it was created. Kills whose process held nothing are left
    out. Firings nobody claimed while it was dead are caught up by the node that takes the task
    over; their delay is in the lateness columns."""
    out = []
    at = sorted(k["at"] for k in kills)
    for i, t in enumerate(at):
        until = at[i + 1] if i + 1 < len(at) else float("inf")
        ended = [r["ended"] for r in runs if t < r["created"] < until and r["ended"]]
        if ended:
            out.append(round(max(ended) - t, 1))
    return out


# ---- ours ------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, maxc: int):
        self.db = f"sm_soak_{uuid.uuid4().hex[:8]}"
        self.system = System(Path(tempfile.mkdtemp(prefix="sm-soak-")), up_args=["--maxc", str(maxc)],
                             env={"SM_DATABASE_URL": f"{PG}/{self.db}"})
        self.maxc = maxc
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self) -> "Cluster":
        self.system.start()
        return self

    def start_node(self, name: str) -> None:
        self.nodes[name] = self.system.start_node(name, "--maxc", str(self.maxc), "--wait-for-name", "60")

    def kill(self, name: str) -> None:
        p = self.nodes.get(name)
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def close(self) -> None:
        for p in self.nodes.values():
            self.system.stop_node(p)
        if self.system.proc is not None:
            self.system.stop()
        drop_databases(self.db, f"{self.db}_prefect")

    def claims_of(self, keys: list[str]) -> dict[str, tuple]:
        """firing id -> (node, claimed at, finished at, outcome) for those of `keys` ever claimed."""
        with psycopg.connect(f"{PG}/{self.db}") as conn:
            return {r[0]: (r[1], r[2].timestamp(), r[3] and r[3].timestamp(), r[4]) for r in conn.execute(
                "SELECT firing_id, node, claimed_at, finished_at, outcome FROM sm_firing_claims"
                " WHERE firing_id = ANY(%s)", (keys,))}

    def unfinished_claims(self) -> int:
        with psycopg.connect(f"{PG}/{self.db}") as conn:
            return conn.execute("SELECT count(*) FROM sm_firing_claims WHERE finished_at IS NULL").fetchone()[0]


def measure(rx: ReceiverProc, tag: str, ids: list[str], w0: int, w1: int) -> tuple[dict, dict]:
    """Arrivals of the tasks' firings due in [w0, w1): (summary, firing id -> (scheduled, first arrival))."""
    want = expected_keys(ids, w0, w1)
    arrivals = Counter()
    first: dict[str, tuple[float, float]] = {}
    for _path, t, key in rx.hits(f"/{tag}/"):
        if key in want:
            arrivals[key] += 1
            if key not in first or t < first[key][1]:
                first[key] = (want[key][1], t)
    late = [arr - sched for sched, arr in first.values()]
    return {"expected": len(want), "delivered": len(first), "lost": len(want) - len(first),
            "dup_arrivals": sum(n - 1 for n in arrivals.values()),
            "per_min": round(len(first) / (w1 - w0) * 60),
            "p50": pct(late, 50), "p99": pct(late, 99), "max": max(late, default=None)}, first


def throughput(c: Cluster, rx: ReceiverProc, tasks: int, seconds: int) -> list[dict]:
    s = c.system
    ids = every_second(s, rx, tasks, "tp")
    rows = []
    try:
        for n in (1, 2, 3):
            if n > 1:
                c.start_node(f"worker{n}")
                s.wait_node(f"worker{n}", timeout=120)
            w0 = int(time.time()) + 15  # tasks move to the new node and settle
            w1 = w0 + seconds
            time.sleep(max(0.0, w0 - time.time()))
            cpu0 = cpu_busy()
            time.sleep(max(0.0, w1 - time.time()))
            cpu1 = cpu_busy()
            time.sleep(5)  # the window's last firings arrive
            row, _ = measure(rx, "tp", ids, w0, w1)
            row.update(nodes=n, tasks=tasks, seconds=seconds, offered_per_min=tasks * 60, cpu_busy=busy_share(cpu0, cpu1))
            print("ours throughput", json.dumps(row), flush=True)
            rows.append(row)
    finally:
        stop_tasks(s, ids)
    return rows


def soak(c: Cluster, rx: ReceiverProc, tasks: int, firings: int, seed: int, every, down) -> dict:
    s = c.system
    ids = every_second(s, rx, tasks, "soak")
    w0 = int(time.time()) + 5
    w1 = w0 + -(-firings // tasks)
    killer = Killer(seed, every, down, c.kill, c.start_node, lambda n: node_status(s, n) == 0)
    time.sleep(max(0.0, w0 - time.time()))
    killer.start()
    cpu0 = cpu_busy()
    try:
        while time.time() < w1:
            time.sleep(min(30.0, max(0.0, w1 - time.time())))
            print(f"  soak: {max(0, int(w1 - time.time()))} s to go, {len(killer.kills)} kills", flush=True)
    finally:
        killer.stop_at.set()
        killer.join(120)
    cpu1 = cpu_busy()
    time.sleep(90)  # the last kill's firings are taken over while the tasks still run
    stop_tasks(s, ids)
    for n in VICTIMS:
        s.wait_node(n, timeout=180)
    settle = time.time() + 180
    while c.unfinished_claims() and time.time() < settle:
        time.sleep(2)
    row, first = measure(rx, "soak", ids, w0, w1)
    want = expected_keys(ids, w0, w1)
    lost = sorted((k for k in want if k not in first), key=lambda k: want[k][1])
    claims = c.claims_of(lost)
    # what became of each lost firing: claimed by whom and finished how, or no claim row (never
    # claimed, or finished more than 10 minutes ago: the master purges those); with the kill
    # log and the nodes' logs, this says which path lost it
    row["lost_by_claim"] = dict(Counter(claims[k][3] or "unfinished" if k in claims else "no claim row"
                                        for k in lost))
    row["lost_detail"] = [{"task": want[k][0], "scheduled": want[k][1],
                           "claim": claims.get(k)} for k in lost[:300]]
    rerun_list = reruns(s)
    rerun_keys = {r["key"] for r in rerun_list}
    keys = Counter(h[2] for h in rx.hits("/soak/"))
    unmarked = [k for k, n in keys.items() if n > 1 and k not in rerun_keys]
    fo = failover_times(killer.kills, rerun_list)
    recorded = 0
    for i in range(0, len(ids), 100):
        recorded += call("POST", f"{s.prefect}/flow_runs/count", json={
            "deployments": {"id": {"any_": ids[i:i + 100]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED"]}}}}).json()
    offline = [k["offline_s"] for k in killer.kills if k["offline_s"] is not None]
    row.update(tasks=tasks, seconds=w1 - w0, kills=len(killer.kills), cpu_busy=busy_share(cpu0, cpu1),
               marked_reruns=sum(n - 1 for k, n in keys.items() if n > 1 and k in rerun_keys),
               unmarked_dups=len(unmarked), failover_n=len(fo), failover_p50=pct(fo, 50), failover_max=max(fo, default=None),
               offline_n=len(offline), offline_p50=pct(offline, 50), offline_max=max(offline, default=None),
               down_longer_than_30s=sum(1 for k in killer.kills if k["down_s"] > 30),
               unfinished_claims=c.unfinished_claims(), held_runs=held_runs(s, "schedulemaster"),
               recorded=recorded, sent=sum(keys.values()), kill_log=killer.kills)
    return row


# ---- plain Prefect ---------------------------------------------------------------------------

class PlainWorkers:
    """Three `prefect worker start` processes of one process pool, each in its own session so a
    kill -9 takes its flow-run subprocesses with it, as a dead machine would."""

    def __init__(self, b: Baseline, log_dir: Path):
        self.b, self.log_dir = b, log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update({"PREFECT_API_URL": b.api, "PREFECT_HOME": tempfile.mkdtemp(),
                         "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"]})

    def start(self, name: str) -> None:
        with open(self.log_dir / f"plain-{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.b.pool, "--type", "process",
                 "--name", name], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def kill(self, name: str) -> None:
        p = self.procs.get(name)
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def close(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def plain(c: Cluster, rx: ReceiverProc, tasks: int, every_s: int, seconds: int, seed: int, every, down) -> dict:
    s = c.system
    b = Baseline(s)
    workers = PlainWorkers(b, s.data_dir / "logs")
    try:
        for i in range(tasks):  # croniter order in Prefect: seconds last
            b.deploy(f"plain-soak-{i}", rx.url(f"/plain/{i}"),
                     {"schedule": {"cron": f"* * * * * */{every_s}", "timezone": "UTC"}, "active": True},
                     entrypoint="bench/baseline_soak_flow.py:post_scheduled")
        for n in ("worker1", *VICTIMS):
            workers.start(n)
        w0 = (int(time.time()) // every_s + 6) * every_s  # Prefect's scheduler has made the runs
        w1 = w0 + seconds
        killer = Killer(seed, every, down, workers.kill, workers.start)
        time.sleep(max(0.0, w0 - time.time()))
        killer.start()
        cpu0 = cpu_busy()
        while time.time() < w1:
            time.sleep(min(30.0, max(0.0, w1 - time.time())))
            print(f"  plain: {max(0, int(w1 - time.time()))} s to go, {len(killer.kills)} kills", flush=True)
        killer.stop_at.set()
        killer.join(120)
        cpu1 = cpu_busy()
        time.sleep(120)  # the same grace as ours: whatever Prefect still runs arrives
        held = held_runs(s, b.pool)
        want = {(i, t) for i in range(tasks) for t in range(w0, w1, every_s)}
        arrivals = Counter()
        first: dict[tuple[int, int], float] = {}
        for path, t, _key in rx.hits("/plain/"):
            _, _, i, at = path.split("/")
            k = (int(i), int(at))
            if k in want:
                arrivals[k] += 1
                first[k] = min(t, first.get(k, t))
        late = [t - k[1] for k, t in first.items()]
        row = {"expected": len(want), "delivered": len(first), "lost": len(want) - len(first),
               "dup_arrivals": sum(n - 1 for n in arrivals.values()), "per_min": round(len(first) / seconds * 60),
               "p50": pct(late, 50), "p99": pct(late, 99), "max": max(late, default=None),
               "tasks": tasks, "every_s": every_s, "seconds": seconds, "kills": len(killer.kills),
               "cpu_busy": busy_share(cpu0, cpu1), "held_runs": held, "kill_log": killer.kills}
    finally:
        workers.close()
        b.close()
    return row


def fmt(v, unit=" s"):
    return "–" if v is None else (f"{v:.2f}{unit}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput-tasks", type=int, default=100, help="tasks firing every second (part 1)")
    ap.add_argument("--phase-seconds", type=int, default=60, help="window per node count (part 1)")
    ap.add_argument("--tasks", type=int, default=40, help="tasks firing every second (soak)")
    ap.add_argument("--firings", type=int, default=100_000, help="firings due in the soak window")
    ap.add_argument("--kill-every", default="45,90", help="seconds between kills: min,max")
    ap.add_argument("--down", default="5,40", help="seconds a killed node stays down: min,max")
    ap.add_argument("--baseline-tasks", type=int, default=4)
    ap.add_argument("--baseline-every", type=int, default=10, help="plain Prefect cron period, seconds")
    ap.add_argument("--baseline-seconds", type=int, default=300)
    ap.add_argument("--maxc", type=int, default=50, help="each node's --maxc")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--skip", default="", help="parts to skip: throughput,soak,plain")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = ap.parse_args()
    every = tuple(float(x) for x in args.kill_every.split(","))
    down = tuple(float(x) for x in args.down.split(","))
    skip = set(filter(None, args.skip.split(",")))

    results: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                     "args": vars(args)}
    rx = ReceiverProc()
    try:
        if "throughput" not in skip:  # its own cluster: its record backlog must not weigh on the soak
            c = Cluster(args.maxc)
            try:
                c.start()
                print(f"throughput cluster up: data {c.system.data_dir}, database {c.db}", flush=True)
                results["throughput"] = throughput(c, rx, args.throughput_tasks, args.phase_seconds)
            finally:
                c.close()
        if not {"soak", "plain"} <= skip:
            soak_and_plain(args, rx, results, skip, every, down)
    finally:
        rx.close()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))  # what was measured, even if a part failed
    print_tables(results)


def soak_and_plain(args, rx: ReceiverProc, results: dict, skip: set[str], every, down) -> None:
    c = Cluster(args.maxc)
    try:
        c.start()
        print(f"soak cluster up: data {c.system.data_dir}, database {c.db}", flush=True)
        for n in VICTIMS:
            c.start_node(n)
            c.system.wait_node(n, timeout=120)
        if "soak" not in skip:
            r = soak(c, rx, args.tasks, args.firings, args.seed, every, down)
            print("ours soak", json.dumps({k: v for k, v in r.items() if k not in ("kill_log", "lost_detail")}), flush=True)
            results["soak"] = r
        if "plain" not in skip:
            r = plain(c, rx, args.baseline_tasks, args.baseline_every, args.baseline_seconds, args.seed, every, down)
            print("plain soak", json.dumps({k: v for k, v in r.items() if k != "kill_log"}), flush=True)
            results["plain"] = r
    finally:
        c.close()


def print_tables(results: dict) -> None:
    print()
    if results.get("throughput"):
        print("| nodes | offered/min | delivered/min | lost | lateness p50 / p99 / max | CPU busy (2 cores) |")
        print("|---|---|---|---|---|---|")
        for r in results["throughput"]:
            print(f"| {r['nodes']} | {r['offered_per_min']:,} | {r['per_min']:,} | {r['lost']} | "
                  f"{fmt(r['p50'])} / {fmt(r['p99'])} / {fmt(r['max'])} | {r['cpu_busy']:.0%} |")
        print()
    rows = [("ours", results.get("soak")), ("plain Prefect", results.get("plain"))]
    print("| who | load | kills | firings due | delivered | lost | dup (marked re-runs / unmarked) | "
          "re-run done after kill p50 / max | lateness p50 / p99 | left Pending/Running | recorded in Prefect |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for who, r in rows:
        if not r:
            continue
        load = (f"{r['tasks']} tasks × 1/s, {r['seconds']} s" if who == "ours"
                else f"{r['tasks']} tasks × 1/{r['every_s']} s, {r['seconds']} s")
        dup = (f"{r['marked_reruns']} / {r['unmarked_dups']}" if who == "ours" else f"{r['dup_arrivals']} / –")
        fo = f"{fmt(r['failover_p50'])} / {fmt(r['failover_max'])}" if who == "ours" else "none (no failover)"
        print(f"| {who} | {load} | {r['kills']} | {r['expected']:,} | {r['delivered']:,} | {r['lost']} | {dup} | {fo} | "
              f"{fmt(r['p50'])} / {fmt(r['p99'])} | {r['held_runs']} | "
              + (f"{r['recorded']:,} of {r['sent']:,} sent |" if who == "ours" else "each firing is a run |"))


if __name__ == "__main__":
    main()
