"""Delayed tasks (延时任务) on PostgreSQL, side by side with one Prefect flow run per callback.

    .venv/bin/python bench/delayed.py       # full size: the issue's benchmark
    .venv/bin/python bench/delayed.py --api-creates 2000 --pending 20000 --due 1000 --baseline-runs 200

One `schedulemaster up --maxc 20` on fresh PostgreSQL databases (the store, where delayed tasks
live: SM_STORE_URL; Prefect's own: SM_PREFECT_DB_URL), a temporary data dir and free ports,
and a local aiohttp receiver in its own process that answers 200 "success" and timestamps
each arrival with its Idempotency-Key (the task id). In order:

1. create rate through the legacy API: --api-creates POST /api/DelayTask/Create, one task per
   request, keep-alive, --concurrency connections, due in a day; then the same number through
   the batch extension (CreateBatch, --batch-size items per request);
2. fill to --pending pending tasks through CreateBatch (due in 1-2 days); at 0, 25, 50, 75 and
   100 %: the dispatcher's RSS, the store's disk use, QueryList latency (p50/p99 of 20 calls:
   no filter, topic, status=2, contentKey, page 1000);
3. fire: with all of that still pending, --due tasks in absolute mode due evenly over the
   --window whole seconds starting --lead s ahead; delivered, duplicates, lost, fire rate,
   lateness (arrival - the task's due second) p50/p95/p99/max, the dispatcher's RSS, and
   whether QueryList shows them all succeeded (status 3);
4. plain Prefect on the same server: --baseline-runs flow runs of a deployment of
   bench/baseline_flow.py created Scheduled a day ahead, one per callback (the Prefect
   client's create_flow_run_from_deployment, --concurrency at once, --baseline-deadline s);
   with --baseline-fire also --baseline-fire-runs runs due over 10 s offered to a
   ProcessWorker for --baseline-fire-seconds.

Prints one table (measured, goal, met?) and writes bench/results/delayed-<timestamp>.json.
The databases are dropped and the system stopped at the end (also on errors and Ctrl-C);
--keep leaves the system running and keeps the databases (it prints how to stop and drop).

PostgreSQL statistics: the server's autovacuum setting is recorded. When it is off, nothing
ANALYZEs the store's tables and the planner keeps whatever it chose on an empty table;
--analyze-every 60 does what autovacuum would (ANALYZE every minute), so both can be measured.
The fill stops at --fill-deadline seconds and the run goes on with what is pending then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import AUTH, bench_credential, free_port  # noqa: E402

bench_credential()  # the system started here and this process's Prefect client share it

GOALS = {"api_rate": 1_000, "batch_rate": 10_000, "pending": 1_000_000, "rss_mb": 200,
         "fire_rate": 1_000, "p99": 1.0}
PR_SET_PDEATHSIG = 1
MB = 1_000_000  # decimal megabytes: the goal says 200 MB


def arrivals_of(hits, due: dict[str, float]) -> tuple[Counter, dict[str, float]]:
    """Arrivals per task id, and each expected task's first arrival time."""
    per = Counter(h[1] for h in hits)
    first: dict[str, float] = {}
    for _, key, t in hits:
        if key in due and (key not in first or t < first[key]):
            first[key] = t
    return per, first


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (as bench/lateness.py)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- the receiver: its own process, one aiohttp event loop ---------------------------------

def receiver_main(port: int) -> None:
    from aiohttp import web

    hits: list[tuple[str, str, float]] = []  # (path, Idempotency-Key, arrival)

    async def record(request: web.Request) -> web.Response:
        t = time.time()
        await request.read()
        hits.append((request.path, request.headers.get("Idempotency-Key", ""), t))
        return web.Response(text="success")

    async def dump(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        rows = [h for h in hits if h[0].startswith(prefix)]
        if request.query.get("count"):
            return web.json_response(len(rows))
        return web.json_response(rows)

    app = web.Application()
    app.router.add_get("/_hits", dump)
    app.router.add_route("*", "/{tail:.*}", record)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096,
                handle_signals=True)


class Receiver:
    def __init__(self):
        self.port = free_port()
        self.proc = multiprocessing.get_context("spawn").Process(
            target=receiver_main, args=(self.port,), daemon=True, name="delayed-receiver")
        self.proc.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait(self, session) -> None:
        for _ in range(200):
            try:
                async with session.get(self.url("/_hits?count=1")) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the receiver did not start")

    async def count(self, session, prefix: str) -> int:
        async with session.get(self.url("/_hits"), params={"prefix": prefix, "count": "1"}) as r:
            return await r.json()

    async def hits(self, session, prefix: str) -> list[tuple[str, str, float]]:
        async with session.get(self.url("/_hits"), params={"prefix": prefix}) as r:
            return [tuple(h) for h in await r.json()]

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


# ---- PostgreSQL ----------------------------------------------------------------------------

class Pg:
    def __init__(self, base: str, stamp: str):
        self.base = base.rstrip("/")
        self.store_db = f"sm_bench_store_{stamp}"
        self.prefect_db = f"sm_bench_prefect_{stamp}"
        self.created: list[str] = []

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.base}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def create(self) -> None:
        for db in (self.store_db, self.prefect_db):
            self.admin(f'CREATE DATABASE "{db}"')
            self.created.append(db)

    def drop(self) -> None:
        for db in self.created:
            try:
                self.admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop database {db}: {exc}", file=sys.stderr, flush=True)
        self.created = []

    def query(self, db: str, sql: str, *params):
        import psycopg

        with psycopg.connect(f"{self.base}/{db}", autocommit=True) as conn:
            return conn.execute(sql, params).fetchone()

    def store_sizes(self) -> dict:
        db, tasks, attempts = self.query(
            self.store_db,
            "SELECT pg_database_size(current_database()), pg_total_relation_size('scheduledelayeds'), "
            "pg_total_relation_size('scheduledelayedattempts')")
        return {"db_bytes": db, "tasks_bytes": tasks, "attempts_bytes": attempts}

    def table_stats(self) -> dict:
        """How PostgreSQL has been reading the table (a plan gone wrong shows as seq_tup_read)."""
        row = self.query(self.store_db,
                         "SELECT seq_scan, seq_tup_read, idx_scan, n_live_tup, last_analyze, last_autoanalyze "
                         "FROM pg_stat_user_tables WHERE relname = 'scheduledelayeds'")
        keys = ("seq_scan", "seq_tup_read", "idx_scan", "n_live_tup", "last_analyze", "last_autoanalyze")
        return dict(zip(keys, row)) if row else {}

    def settings(self) -> dict:
        import psycopg

        with psycopg.connect(f"{self.base}/postgres", autocommit=True) as conn:
            rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', "
                                "'autovacuum_naptime', 'shared_buffers', 'plan_cache_mode', 'server_version')").fetchall()
        return dict(rows)

    def analyze(self) -> None:
        import psycopg

        with psycopg.connect(f"{self.base}/{self.store_db}", autocommit=True) as conn:
            conn.execute("ANALYZE scheduledelayeds")
            conn.execute("ANALYZE scheduledelayedattempts")

    def pending(self) -> int:
        return self.query(self.store_db, "SELECT count(*) FROM scheduledelayeds WHERE status = 2")[0]

    def prefect_size(self) -> int:
        return self.query(self.prefect_db, "SELECT pg_database_size(current_database())")[0]


# ---- the system under test -------------------------------------------------------------------

def _child_setup() -> None:  # the system gets SIGTERM if this script dies without cleaning up
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Up:
    """`schedulemaster up` on the PostgreSQL databases, a temp data dir and free ports."""

    def __init__(self, pg: Pg, data_dir: Path, tz: str, maxc: int, outlive_us: bool = False):
        self.pg, self.data_dir, self.tz, self.maxc = pg, data_dir, tz, maxc
        self.outlive_us = outlive_us  # --keep: no SIGTERM from the kernel when this script ends
        self.out_path = data_dir / "up.out"
        self.api_port, self.prefect_port = free_port(), free_port()
        while self.prefect_port == self.api_port:
            self.prefect_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def prefect(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def start(self, timeout: float = 300) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SM_"))}
        env.update({"PYTHONUNBUFFERED": "1",
                    "PREFECT_SERVER_API_AUTH_STRING": os.environ["PREFECT_SERVER_API_AUTH_STRING"],
                    "SM_STORE_URL": f"{self.pg.base}/{self.pg.store_db}",
                    "SM_PREFECT_DB_URL": f"{self.pg.base.replace('postgresql://', 'postgresql+asyncpg://', 1)}"
                                         f"/{self.pg.prefect_db}"})
        cmd = [sys.executable, "-m", "schedulemaster.cli", "up", "--data-dir", str(self.data_dir),
               "--api-port", str(self.api_port), "--prefect-port", str(self.prefect_port),
               "--timezone", self.tz, "--maxc", str(self.maxc)]
        # its stdout goes to a file, not a pipe: with --keep it outlives this script
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         preexec_fn=None if self.outlive_us else _child_setup)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ScheduleMaster is up" in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError("up exited early:\n" + self.output())
            time.sleep(0.2)
        raise RuntimeError(f"up was not ready in {timeout:.0f} s:\n" + self.output())

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def restarts(self) -> list[str]:
        return [line.strip() for line in self.output().splitlines() if " exited with code " in line]

    def dispatcher_pid(self) -> int | None:
        if self.proc is None:
            return None
        r = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            if "schedulemaster.cli dispatcher" in args:
                return int(pid)
        return None

    def stop(self, timeout: float = 90) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"up (pid {self.proc.pid}) did not stop in {timeout:.0f} s: killing it", file=sys.stderr)
            self.proc.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            self.proc.wait()


def rss_of(pid: int | None) -> dict | None:
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    try:  # utime + stime, after the command name (which may hold spaces)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        cpu = None
    return {"pid": pid, "rss": out.get("VmRSS"), "hwm": out.get("VmHWM"), "cpu_s": cpu}


class RssSampler(threading.Thread):
    """The dispatcher's RSS once a second for the whole run, labelled with the phase."""

    def __init__(self, up: Up):
        super().__init__(daemon=True, name="rss-sampler")
        self.up = up
        self.phase = "start"
        self.samples: list[tuple[float, str, int, int]] = []  # (t, phase, pid, rss)
        self.pids: list[int] = []
        self._halt = threading.Event()

    def current(self) -> dict | None:
        pid = self.up.dispatcher_pid()
        if pid is not None and (not self.pids or self.pids[-1] != pid):
            self.pids.append(pid)
        return rss_of(pid)

    def run(self) -> None:
        while not self._halt.wait(1.0):
            r = self.current()
            if r and r["rss"]:
                self.samples.append((time.time(), self.phase, r["pid"], r["rss"]))

    def stop(self) -> None:
        self._halt.set()

    def max_in(self, *phases: str) -> int | None:
        vals = [s[3] for s in self.samples if s[1] in phases]
        return max(vals, default=None)


# ---- HTTP helpers ----------------------------------------------------------------------------

async def api_call(session, method: str, url: str, **kw) -> tuple[float, int, dict | None]:
    t = time.perf_counter()
    try:
        async with session.request(method, url, **kw) as r:
            raw = await r.read()
            status = r.status
    except Exception as exc:  # noqa: BLE001 - a failure to count, not to stop the run
        return time.perf_counter() - t, -1, {"error": repr(exc)}
    elapsed = time.perf_counter() - t
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"error": raw[:200].decode(errors="replace")}
    return elapsed, status, body


def ok(status: int, body: dict | None) -> bool:
    return status == 200 and isinstance(body, dict) and body.get("Success") is True


def task_item(i: int, topic: str, key: str, url: str, **extra) -> dict:
    return {"SourceApp": "bench", "Topic": topic, "ContentKey": key, "NotifyUrl": url,
            "NotifyDataType": "application/json", "NotifyBody": '{"i":%d}' % i, **extra}


def local_time(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S")


async def create_one_by_one(session, up: Up, rx: Receiver, n: int, concurrency: int, tag: str) -> dict:
    url = f"{up.api}/api/DelayTask/Create"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    lat: list[float] = []
    failures: list[str] = []
    nxt = 0

    async def worker():
        nonlocal nxt
        while nxt < n:
            i = nxt
            nxt += 1
            body = urlencode(task_item(i, tag, f"{tag}-{i}", rx.url("/far/api"), DelayTimeSpan=86400))
            elapsed, status, answer = await api_call(session, "POST", url, data=body, headers=headers)
            lat.append(elapsed)
            if not ok(status, answer):
                failures.append(f"{status} {str(answer)[:200]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - t0
    return {"n": n, "concurrency": concurrency, "seconds": round(took, 3), "rate": n / took,
            "ok": n - len(failures), "failures": len(failures), "failure_examples": failures[:5],
            "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat, default=None)}


async def create_batches(session, up: Up, items, n: int, batch_size: int, concurrency: int,
                         progress=None, stop_at: float | None = None) -> dict:
    """POST CreateBatch for `items` (an iterator of n dicts); returns rate, latencies and the ids."""
    url = f"{up.api}/api/DelayTask/CreateBatch"
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    failures: list[str] = []
    ids: list[list[str] | None] = []
    lock = asyncio.Lock()
    done = 0
    it = iter(items)
    seq = 0

    async def worker():
        nonlocal done, seq
        while True:
            if stop_at is not None and time.monotonic() > stop_at:
                return
            async with lock:
                chunk = [x for _, x in zip(range(batch_size), it)]
                k = seq
                seq += 1
                ids.append(None)
            if not chunk:
                return
            elapsed, status, answer = await api_call(session, "POST", url, data=json.dumps(chunk), headers=headers)
            lat.append(elapsed)
            if ok(status, answer):
                ids[k] = answer["Data"]
                done += len(chunk)
            else:
                failures.append(f"{status} {str(answer)[:300]}")
            if progress:
                progress(done)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - t0
    # chunk k held items k*batch_size ... (k+1)*batch_size - 1 (taken in order under the lock)
    pairs = [(k * batch_size + j, tid) for k, part in enumerate(ids) if part for j, tid in enumerate(part)]
    return {"n": n, "batch_size": batch_size, "concurrency": concurrency, "seconds": round(took, 3),
            "rate": done / took if took else None, "created": done, "failed_batches": len(failures),
            "failure_examples": failures[:5], "batch_p50": pct(lat, 50), "batch_p99": pct(lat, 99),
            "ids": pairs}


QUERIES = {
    "page 1, no filter": {},
    "topic": {"topic": "fill-7"},
    "status=2": {"status": "2"},
    "contentKey": {"contentKey": "fill-0"},
    "page 1000": {"pageNumber": "1000"},
}


async def query_latency(session, up: Up, calls: int = 20) -> dict:
    out = {}
    for name, params in QUERIES.items():
        q = {"pageNumber": "1", "pageSize": "20", **params}
        lat, totals, bad = [], set(), 0
        for _ in range(calls):
            elapsed, status, body = await api_call(session, "GET", f"{up.api}/api/DelayTask/QueryList", params=q)
            lat.append(elapsed)
            if ok(status, body):
                totals.add(body["Data"]["total"])
            else:
                bad += 1
        out[name] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "total": sorted(totals), "failures": bad,
                     "ms": [round(x * 1000, 1) for x in lat]}
    return out


# ---- the scenarios ---------------------------------------------------------------------------

async def sample(session, up: Up, pg: Pg, rss: RssSampler, label: str, res: dict) -> None:
    """Pending count, store size, the dispatcher's RSS and QueryList latency, now."""
    pending = await asyncio.to_thread(pg.pending)
    sizes = await asyncio.to_thread(pg.store_sizes)
    r = rss.current()
    queries = await query_latency(session, up)
    stats = await asyncio.to_thread(pg.table_stats)
    res["fill"]["samples"].append({"at": label, "t": time.time(), "pending": pending, "dispatcher_rss": r and r["rss"],
                                   "dispatcher_hwm": r and r["hwm"], "dispatcher_pid": r and r["pid"],
                                   "dispatcher_cpu_s": r and r["cpu_s"], **sizes, "queries": queries,
                                   "table_stats": stats})
    q = "  ".join(f"{k} {v['p50'] * 1000:.0f}/{v['p99'] * 1000:.0f} ms" for k, v in queries.items())
    say(f"  sample {label}: {pending:,} pending, dispatcher RSS {(r and r['rss'] or 0) / MB:.1f} MB, "
        f"store DB {sizes['db_bytes'] / MB:.1f} MB (tasks {sizes['tasks_bytes'] / MB:.1f} MB), "
        f"QueryList p50/p99: {q}")


async def fill(session, up: Up, pg: Pg, rx: Receiver, rss: RssSampler, args, res: dict) -> None:
    """Fill to args.pending pending tasks, sampling at 25, 50, 75 and 100 % (0 % is before any create)."""
    start_pending = await asyncio.to_thread(pg.pending)
    res["fill"]["start_pending"] = start_pending
    stop_at = time.monotonic() + args.fill_deadline
    made = 0
    busy = 0.0
    for quarter in (1, 2, 3, 4):
        rss.phase = f"fill-{quarter * 25}%"
        target = args.pending * quarter // 4
        need = max(0, target - start_pending - made)
        if need:
            base = made
            t_seg = time.perf_counter()
            last = [0.0]

            def progress(done: int) -> None:
                if time.perf_counter() - last[0] >= 5:
                    last[0] = time.perf_counter()
                    now_pending = start_pending + base + done
                    rate = done / (time.perf_counter() - t_seg)
                    r = rss.current()
                    say(f"  fill: {now_pending:,}/{args.pending:,} pending, {rate:,.0f}/s, "
                        f"dispatcher RSS {(r and r['rss'] or 0) / MB:.1f} MB")

            items = (task_item(base + j, f"fill-{(base + j) % 100}", f"fill-{base + j}", rx.url("/far/fill"),
                               DelayTimeSpan=86400 + (base + j) % 86400) for j in range(need))
            r = await create_batches(session, up, items, need, args.batch_size, args.batch_concurrency, progress,
                                     stop_at)
            r.pop("ids")
            r["up_to"] = f"{quarter * 25}%"
            busy += time.perf_counter() - t_seg
            made += r["created"]
            res["fill"]["segments"].append(r)
            if r["failed_batches"]:
                say(f"  fill: {r['failed_batches']} batches failed, e.g. {r['failure_examples'][:1]}")
        await sample(session, up, pg, rss, f"{quarter * 25}%", res)
        if time.monotonic() > stop_at and start_pending + made < args.pending:
            say(f"  fill: --fill-deadline ({args.fill_deadline} s) passed at {start_pending + made:,} pending; "
                "going on with what there is")
            res["fill"]["hit_deadline"] = True
            break
    res["fill"]["created"] = made
    res["fill"]["seconds"] = round(busy, 1)
    res["fill"]["rate"] = made / busy if busy else None


async def fire(session, up: Up, pg: Pg, rx: Receiver, rss: RssSampler, args, stamp: str) -> dict:
    n, window = args.due, args.window
    topic = f"fire-{stamp}"
    first_due = float(int(time.time()) + args.lead)
    due_of_index = [first_due + (i * window) // n for i in range(n)]
    items = [task_item(i, topic, f"fire-{i}", rx.url("/fire"), DelayPattern="Absolute",
                       DelayAbsoluteTime=local_time(due_of_index[i], args.timezone)) for i in range(n)]
    rss.phase = "fire-create"
    t_create = time.time()
    r = await create_batches(session, up, items, n, args.batch_size, args.batch_concurrency)
    created_in = time.time() - t_create
    due = {tid: due_of_index[i] for i, tid in r["ids"]}
    if not due:
        raise RuntimeError(f"none of the {n} due tasks could be created: {r['failure_examples']}")
    if r["failed_batches"]:
        say(f"  {r['failed_batches']} batches of due tasks failed (counted as lost), e.g. {r['failure_examples'][:1]}")
    margin = first_due - time.time()
    say(f"  {len(due):,} tasks created in {created_in:.1f} s; the first falls due in {margin:.1f} s, "
        f"the last {window - 1} s after it")
    if margin < 1:
        say("  warning: the creates finished less than 1 s before the first due second (raise --lead)")
    rss.phase = "fire"
    deadline = first_due + window + 60
    hwm_before = (rss_of(up.dispatcher_pid()) or {}).get("hwm")
    while time.time() < deadline:
        got = await rx.count(session, "/fire")
        if got >= len(due) and time.time() > first_due + window:
            break
        await asyncio.sleep(1.0)
    rss.phase = "after-fire"
    hits = [h for h in await rx.hits(session, "/fire")]
    per_id, first_arrival = arrivals_of(hits, due)
    late = [first_arrival[k] - due[k] for k in first_arrival]
    delivered = len(first_arrival)
    per_second = Counter(int(t) for t in first_arrival.values())
    last = max(first_arrival.values(), default=None)
    span = (last - first_due) if last is not None else None
    after = rss_of(up.dispatcher_pid()) or {}
    # every one of them recorded as succeeded (status 3) in the store, through the API
    recorded = None
    q = {"pageNumber": "1", "pageSize": "1", "topic": topic, "status": "3"}
    for _ in range(30):
        _, status, body = await api_call(session, "GET", f"{up.api}/api/DelayTask/QueryList", params=q)
        if ok(status, body):
            recorded = body["Data"]["total"]
            if recorded >= delivered:
                break
        await asyncio.sleep(1.0)
    return {"expected": n, "window_s": window, "offered_rate": n / window, "lead_s": args.lead,
            "created": len(due), "create_failures": r["failure_examples"],
            "created_in_s": round(created_in, 2), "create_margin_s": round(margin, 2),
            "delivered": delivered, "duplicates": sum(v - 1 for v in per_id.values()),
            "foreign": sum(1 for k in per_id if k not in due), "lost": n - delivered,
            "fire_rate": delivered / span if span and span > 0 else None,
            "first_due_to_last_arrival_s": span, "peak_per_second": max(per_second.values(), default=0),
            "p50": pct(late, 50), "p95": pct(late, 95), "p99": pct(late, 99), "max": max(late, default=None),
            "min": min(late, default=None), "recorded_succeeded": recorded,
            "dispatcher_rss_after": after.get("rss"), "dispatcher_hwm_before": hwm_before,
            "dispatcher_hwm_after": after.get("hwm"), "dispatcher_rss_max_during": rss.max_in("fire")}


async def baseline(session, up: Up, pg: Pg, rx: Receiver, args, stamp: str) -> dict:
    """Plain Prefect: one flow run per callback, created Scheduled far ahead, same server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Scheduled

    out: dict = {}
    size_before = await asyncio.to_thread(pg.prefect_size)
    async with get_client() as client:
        pool = f"bench-delayed-{stamp}"
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow_from_name("bench-baseline-post")
        dep_id = await client.create_deployment(
            flow_id, "delayed-baseline", work_pool_name=pool, entrypoint="bench/baseline_flow.py:post_hit",
            parameters={"url": rx.url("/base/none")},
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}])
        n = args.baseline_runs
        far = datetime.now(timezone.utc) + timedelta(days=1)
        lat: list[float] = []
        failures: list[str] = []
        created = 0
        nxt = 0
        stop_at = time.monotonic() + args.baseline_deadline
        last_print = [time.monotonic()]

        async def worker():
            nonlocal nxt, created
            while nxt < n and time.monotonic() < stop_at:
                i = nxt
                nxt += 1
                t = time.perf_counter()
                try:
                    await asyncio.wait_for(client.create_flow_run_from_deployment(
                        dep_id, parameters={"url": rx.url(f"/base/{i}")},
                        state=Scheduled(scheduled_time=far + timedelta(seconds=i))),
                        timeout=max(1.0, stop_at - time.monotonic()))
                    created += 1
                except Exception as exc:  # noqa: BLE001
                    failures.append(repr(exc)[:200])
                lat.append(time.perf_counter() - t)
                if time.monotonic() - last_print[0] >= 5:
                    last_print[0] = time.monotonic()
                    say(f"  baseline: {created:,}/{n:,} flow runs created")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        took = time.perf_counter() - t0
        size_after = await asyncio.to_thread(pg.prefect_size)
        out["create"] = {"requested": n, "created": created, "seconds": round(took, 2), "rate": created / took,
                         "concurrency": args.concurrency, "deadline_s": args.baseline_deadline,
                         "hit_deadline": created < n, "failures": len(failures), "failure_examples": failures[:5],
                         "p50": pct(lat, 50), "p99": pct(lat, 99),
                         "prefect_db_growth_bytes": size_after - size_before}
        if args.baseline_fire:
            out["fire"] = await baseline_fire(session, client, up, rx, dep_id, pool, args)
    return out


async def baseline_fire(session, client, up: Up, rx: Receiver, dep_id, pool: str, args) -> dict:
    from prefect.states import Scheduled

    n, window = args.baseline_fire_runs, 10
    first_due = float(int(time.time()) + args.lead)
    due_by_run: dict[str, float] = {}
    sem = asyncio.Semaphore(args.concurrency)
    t_create = time.time()

    async def make(i: int):
        at = first_due + (i * window) // n
        async with sem:
            run = await client.create_flow_run_from_deployment(
                dep_id, parameters={"url": rx.url("/basefire")},
                state=Scheduled(scheduled_time=datetime.fromtimestamp(at, timezone.utc)))
        due_by_run[str(run.id)] = at

    await asyncio.gather(*(make(i) for i in range(n)), return_exceptions=True)
    created_in = time.time() - t_create
    say(f"  baseline fire: {len(due_by_run)} runs created in {created_in:.1f} s "
        f"({first_due - time.time():.1f} s before the first is due); starting a ProcessWorker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_API_URL": up.prefect, "PREFECT_HOME": tempfile.mkdtemp(prefix="sm-bench-prefect-"),
                "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"]})
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, preexec_fn=_child_setup)
    try:
        end = max(time.time(), first_due) + args.baseline_fire_seconds
        while time.time() < end and await rx.count(session, "/basefire") < n:
            await asyncio.sleep(2.0)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # its own session: only the worker and its flow processes
        try:
            await asyncio.to_thread(worker.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        shutil.rmtree(env["PREFECT_HOME"], ignore_errors=True)
    hits = await rx.hits(session, "/basefire")
    per, first = arrivals_of(hits, due_by_run)
    late = [first[k] - due_by_run[k] for k in first]
    return {"expected": n, "created": len(due_by_run), "created_in_s": round(created_in, 1),
            "seconds_given": args.baseline_fire_seconds, "delivered": len(first),
            "duplicates": sum(v - 1 for v in per.values()), "p50": pct(late, 50), "p99": pct(late, 99),
            "max": max(late, default=None)}


# ---- the report ------------------------------------------------------------------------------

def fmt_rate(v) -> str:
    return "—" if v is None else f"{v:,.0f}/s"


def fmt_s(v) -> str:
    return "—" if v is None else f"{v:.3f} s"


def fmt_ms(v) -> str:
    return "—" if v is None else f"{v * 1000:.1f} ms"


def fmt_mb(v) -> str:
    return "—" if v is None else f"{v / MB:,.1f} MB"


def yes(flag: bool | None) -> str:
    return "—" if flag is None else ("**yes**" if flag else "**no**")


def table(res: dict, args) -> list[str]:
    api, batch, fl, fi, base = res["api"], res["batch"], res["fill"], res.get("fire"), res.get("baseline", {})
    bc = base.get("create")
    rows = [("", "this project (delayed tasks)", "plain Prefect (one flow run each)", "goal", "met?")]
    base_rate = (f"{fmt_rate(bc['rate'])} ({bc['created']:,}/{bc['requested']:,} runs in {bc['seconds']:.0f} s"
                 f"{', deadline' if bc['hit_deadline'] else ''}; p50/p99 {fmt_ms(bc['p50'])}/{fmt_ms(bc['p99'])})"
                 if bc else "not run")
    rows.append((f"create, one per request ({api['n']:,}, {api['concurrency']} connections)",
                 f"{fmt_rate(api['rate'])} (p50/p99 {fmt_ms(api['p50'])}/{fmt_ms(api['p99'])}, "
                 f"{api['failures']} failed)", base_rate,
                 f"≥ {GOALS['api_rate']:,}/s", yes(api["rate"] >= GOALS["api_rate"] and not api["failures"])))
    rows.append((f"create, batched ({batch['n']:,} in batches of {batch['batch_size']:,})",
                 f"{fmt_rate(batch['rate'])} ({batch['failed_batches']} batches failed)", "– (no batch create)",
                 f"≥ {GOALS['batch_rate']:,}/s",
                 yes(batch["rate"] is not None and batch["rate"] >= GOALS["batch_rate"] and not batch["failed_batches"])))
    if fl.get("rate") is not None:
        parts = ", ".join(f"to {g['up_to']} {fmt_rate(g['rate'])}" for g in fl["segments"])
        rows.append((f"create, batched, while filling to {args.pending:,}",
                     f"{fmt_rate(fl['rate'])} ({parts})" + (" — stopped at --fill-deadline" if fl.get("hit_deadline")
                                                           else ""), "", "", ""))
    samples = fl["samples"]
    last = samples[-1] if samples else {}
    reached = last.get("pending", 0)
    rows.append(("pending reached", f"{reached:,}", "", f"{GOALS['pending']:,}",
                 yes(reached >= GOALS["pending"]) + ("" if reached >= GOALS["pending"]
                                                     else f" (run at --pending {args.pending:,})")))
    rss_vals = [s["dispatcher_rss"] for s in samples if s.get("dispatcher_rss")]
    rows.append(("dispatcher RSS at " + " / ".join(s["at"] for s in samples),
                 " / ".join(fmt_mb(s.get("dispatcher_rss")) for s in samples), "",
                 f"< {GOALS['rss_mb']} MB", yes(bool(rss_vals) and max(rss_vals) < GOALS["rss_mb"] * MB)))
    if len(rss_vals) >= 2:
        growth = rss_vals[-1] - rss_vals[0]
        rows.append((f"dispatcher RSS growth, {samples[0]['pending']:,} → {reached:,} pending",
                     f"{growth / MB:+,.1f} MB ({growth / rss_vals[0] * 100:+.1f} %)", "", "flat (< 10 %)",
                     yes(growth < 0.10 * rss_vals[0])))
    cpu = []
    for a, b in zip(samples, samples[1:]):
        if a.get("dispatcher_cpu_s") is not None and b.get("dispatcher_cpu_s") is not None and \
                a.get("dispatcher_pid") == b.get("dispatcher_pid") and b["t"] > a["t"]:
            cpu.append(f"{(b['dispatcher_cpu_s'] - a['dispatcher_cpu_s']) / (b['t'] - a['t']) * 100:.0f} %")
    if cpu:
        rows.append(("dispatcher CPU between samples (of one core)", " / ".join(cpu), "", "", ""))
    if last:
        per = (last["tasks_bytes"] / reached) if reached else None
        base_per = (bc["prefect_db_growth_bytes"] / bc["created"]) if bc and bc["created"] else None
        rows.append((f"disk at {reached:,} pending",
                     f"store DB {fmt_mb(last['db_bytes'])}; table + indexes {fmt_mb(last['tasks_bytes'])}"
                     + (f" ({per:,.0f} B/task)" if per else "") + f"; attempts {fmt_mb(last['attempts_bytes'])}",
                     (f"Prefect DB grew {fmt_mb(bc['prefect_db_growth_bytes'])} for {bc['created']:,} runs"
                      + (f" ({base_per:,.0f} B/run)" if base_per else "")) if bc else "", "", ""))
        for name, q in last["queries"].items():
            rows.append((f"QueryList {name} at {reached:,} pending, p50 / p99 of 20",
                         f"{fmt_ms(q['p50'])} / {fmt_ms(q['p99'])}" + (f" ({q['failures']} failed)" if q["failures"] else ""),
                         "", "", ""))
    bf = base.get("fire")
    if fi:
        rows.append((f"fire: {fi['expected']:,} due within {fi['window_s']} s, delivered",
                     f"{fi['delivered']:,}/{fi['expected']:,} (dup {fi['duplicates']}, lost {fi['lost']})",
                     (f"{bf['delivered']}/{bf['expected']} within {bf['seconds_given']} s (ProcessWorker)" if bf
                      else "not run (--baseline-fire)"),
                     "all, no duplicates", yes(fi["lost"] == 0 and fi["duplicates"] == 0)))
        rows.append((f"fire rate (offered {fi['offered_rate']:,.0f}/s): delivered / (last arrival − first due)",
                     f"{fmt_rate(fi['fire_rate'])} (busiest second: {fi['peak_per_second']:,})", "",
                     f"≥ {GOALS['fire_rate']:,}/s",
                     yes(fi["fire_rate"] is not None and fi["fire_rate"] >= GOALS["fire_rate"])
                     + ("" if fi["offered_rate"] >= GOALS["fire_rate"] else " (offered less)")))
        rows.append(("lateness p50 / p95 / p99 / max",
                     " / ".join(fmt_s(fi[k]) for k in ("p50", "p95", "p99", "max")),
                     (" / ".join(fmt_s(bf[k]) for k in ("p50", "p99", "max")) + " (p50/p99/max)") if bf else "",
                     f"p99 < {GOALS['p99']:.0f} s", yes(fi["p99"] is not None and fi["p99"] < GOALS["p99"])))
        rows.append(("recorded succeeded (QueryList status=3)", f"{fi['recorded_succeeded']}/{fi['expected']:,}",
                     "", "all", yes(fi["recorded_succeeded"] == fi["expected"])))
        rows.append(("dispatcher RSS during / after the fire",
                     f"{fmt_mb(fi['dispatcher_rss_max_during'])} max / {fmt_mb(fi['dispatcher_rss_after'])}", "",
                     f"< {GOALS['rss_mb']} MB",
                     yes(max([x for x in (fi["dispatcher_rss_max_during"], fi["dispatcher_rss_after"]) if x] or [0])
                         < GOALS["rss_mb"] * MB)))
    if not fi and res.get("fire_error"):
        rows.append(("fire test", f"failed: {res['fire_error'][:200]}", "", "", "**no**"))
    restarts = res.get("restarts") or []
    rows.append(("children restarted by up", str(len(restarts)), "", "0", yes(not restarts)))
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


# ---- main --------------------------------------------------------------------------------------

async def scenarios(up: Up, pg: Pg, rx: Receiver, rss: RssSampler, args, res: dict, stamp: str) -> None:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=max(args.concurrency, args.batch_concurrency) + 4, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, headers=AUTH, timeout=timeout) as session:
        await rx.wait(session)
        analyzer = asyncio.create_task(analyze_loop(pg, args.analyze_every, res)) if args.analyze_every else None

        res["fill"] = {"samples": [], "segments": []}
        say("before any create:")
        rss.phase = "idle"
        await sample(session, up, pg, rss, "0%", res)

        say(f"API creates: {args.api_creates:,}, one per request, {args.concurrency} connections")
        rss.phase = "api"
        res["api"] = await create_one_by_one(session, up, rx, args.api_creates, args.concurrency, f"api-{stamp}")
        a = res["api"]
        say(f"  {a['rate']:,.0f}/s, p50 {a['p50'] * 1000:.1f} ms, p99 {a['p99'] * 1000:.1f} ms, "
            f"{a['failures']} failed {a['failure_examples'][:1]}")

        say(f"batched creates: {args.api_creates:,} in batches of {args.batch_size:,}, "
            f"{args.batch_concurrency} at a time")
        rss.phase = "batch"
        items = (task_item(i, f"batch-{stamp}", f"batch-{i}", rx.url("/far/batch"), DelayTimeSpan=86400)
                 for i in range(args.api_creates))
        res["batch"] = await create_batches(session, up, items, args.api_creates, args.batch_size,
                                            args.batch_concurrency)
        res["batch"].pop("ids")
        b = res["batch"]
        say(f"  {b['rate']:,.0f} items/s, {b['failed_batches']} batches failed {b['failure_examples'][:1]}")

        say(f"filling to {args.pending:,} pending")
        await fill(session, up, pg, rx, rss, args, res)

        if args.due:
            say(f"fire: {args.due:,} tasks due over {args.window} s, {args.lead} s from now")
            try:
                res["fire"] = await fire(session, up, pg, rx, rss, args, stamp)
            except RuntimeError as exc:  # the baseline still runs
                say(f"  fire test failed: {exc}")
                res["fire_error"] = str(exc)
        if res.get("fire"):
            f = res["fire"]
            say(f"  delivered {f['delivered']:,}/{f['expected']:,}, dup {f['duplicates']}, lost {f['lost']}, "
                f"rate {f['fire_rate'] or 0:,.0f}/s, lateness p50 {fmt_s(f['p50'])} p99 {fmt_s(f['p99'])} "
                f"max {fmt_s(f['max'])}, recorded succeeded {f['recorded_succeeded']}")

        if args.baseline_runs:
            say(f"plain Prefect: {args.baseline_runs:,} flow runs created Scheduled a day ahead, "
                f"{args.concurrency} at a time, {args.baseline_deadline} s at most")
            rss.phase = "baseline"
            res["baseline"] = await baseline(session, up, pg, rx, args, stamp)
            c = res["baseline"]["create"]
            say(f"  {c['created']:,}/{c['requested']:,} in {c['seconds']:.1f} s = {c['rate']:,.1f}/s, "
                f"{c['failures']} failed {c['failure_examples'][:1]}")
        if analyzer is not None:
            analyzer.cancel()
            await asyncio.gather(analyzer, return_exceptions=True)


async def analyze_loop(pg: Pg, every: float, res: dict) -> None:
    res["analyzed"] = []
    while True:
        await asyncio.sleep(every)
        t = time.perf_counter()
        await asyncio.to_thread(pg.analyze)
        res["analyzed"].append({"t": time.time(), "seconds": round(time.perf_counter() - t, 3)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api-creates", type=int, default=20_000, help="creates through the API, and again batched")
    ap.add_argument("--pending", type=int, default=1_000_000, help="pending tasks to fill to")
    ap.add_argument("--due", type=int, default=10_000, help="tasks falling due in the fire test (0: skip it)")
    ap.add_argument("--window", type=int, default=10, help="whole seconds the due tasks are spread over")
    ap.add_argument("--lead", type=int, default=20, help="seconds from creating them to the first due second")
    ap.add_argument("--baseline-runs", type=int, default=2_000, help="plain Prefect flow runs to create (0: skip)")
    ap.add_argument("--baseline-deadline", type=int, default=120, help="seconds plain Prefect gets to create them")
    ap.add_argument("--baseline-fire", action="store_true",
                    help="also offer --baseline-fire-runs runs due within 10 s to a ProcessWorker")
    ap.add_argument("--baseline-fire-runs", type=int, default=500)
    ap.add_argument("--baseline-fire-seconds", type=int, default=120)
    ap.add_argument("--fill-deadline", type=int, default=1800, help="seconds the fill may take; then go on")
    ap.add_argument("--analyze-every", type=float, default=0.0,
                    help="ANALYZE the store's tables every this many seconds (what autovacuum would do; 0: never)")
    ap.add_argument("--concurrency", type=int, default=32, help="connections for one-per-request creates")
    ap.add_argument("--batch-size", type=int, default=1_000, help="items per CreateBatch (≤ 10,000)")
    ap.add_argument("--batch-concurrency", type=int, default=2, help="CreateBatch requests at once")
    ap.add_argument("--maxc", type=int, default=20, help="up --maxc")
    ap.add_argument("--timezone", default="Asia/Shanghai", help="up --timezone")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server (no database)")
    ap.add_argument("--keep", action="store_true",
                    help="leave the system running and keep the databases and data dir (prints how to stop)")
    ap.add_argument("--out", default=None, help="JSON record [bench/results/delayed-<timestamp>.json]")
    args = ap.parse_args()
    if not 1 <= args.batch_size <= 10_000:
        ap.error("--batch-size must be 1-10,000")

    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    out = Path(args.out or ROOT / "bench" / "results" / f"delayed-{stamp}.json")
    res: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": {
        k: v for k, v in vars(args).items()}, "goals": GOALS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}}

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    pg = Pg(args.pg, stamp)
    data_dir = Path(tempfile.mkdtemp(prefix="sm-delayed-"))
    prefect_home = Path(tempfile.mkdtemp(prefix="sm-delayed-client-"))
    up = Up(pg, data_dir, args.timezone, args.maxc, outlive_us=args.keep)
    # this process's Prefect client (the baseline), before anything imports prefect
    os.environ.update({"PREFECT_API_URL": up.prefect, "PREFECT_HOME": str(prefect_home),
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    rx: Receiver | None = None
    rss: RssSampler | None = None
    failed = True
    interrupted = False
    try:
        res["postgres"] = pg.settings()
        if res["postgres"].get("autovacuum") != "on":
            say(f"note: autovacuum is {res['postgres'].get('autovacuum')} on this PostgreSQL server: nothing "
                "ANALYZEs the store's tables unless --analyze-every is given")
        pg.create()
        say(f"databases {pg.store_db} and {pg.prefect_db} created; starting up (data dir {data_dir})")
        rx = Receiver()
        t = time.monotonic()
        up.start()
        res["up_seconds"] = round(time.monotonic() - t, 1)
        say(f"up in {res['up_seconds']} s: API {up.api}, Prefect {up.prefect}, dispatcher pid {up.dispatcher_pid()}")
        rss = RssSampler(up)
        rss.start()
        asyncio.run(scenarios(up, pg, rx, rss, args, res, stamp))
        failed = False
    except KeyboardInterrupt:
        say("interrupted")
        interrupted = True
        res["interrupted"] = True
    finally:
        res["restarts"] = up.restarts()
        if rss is not None:
            rss.stop()
            res["dispatcher_rss_by_phase"] = {
                ph: max(s[3] for s in rss.samples if s[1] == ph) for ph in dict.fromkeys(s[1] for s in rss.samples)}
            res["dispatcher_pids"] = rss.pids
        if args.keep and not interrupted:
            say(f"--keep: up (pid {up.proc and up.proc.pid}) runs on: API {up.api}, Prefect UI "
                f"http://127.0.0.1:{up.prefect_port}/, data {data_dir}; stop it with kill -TERM "
                f"{up.proc and up.proc.pid}, then drop the databases: psql -U postgres -h 127.0.0.1 -c "
                f"'DROP DATABASE \"{pg.store_db}\" WITH (FORCE)' -c 'DROP DATABASE \"{pg.prefect_db}\" WITH (FORCE)'")
        else:
            say("stopping up")
            up.stop()
        if rx is not None:
            rx.close()
        if args.keep:
            say(f"--keep: databases {pg.store_db}, {pg.prefect_db} and {data_dir} kept")
        else:
            pg.drop()
            if failed:
                say(f"logs kept in {data_dir}/logs")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(prefect_home, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    if all(k in res for k in ("api", "batch", "fill")):
        print()
        print("\n".join(table(res, args)))
    else:
        print("the run did not get far enough for the table")
    print(f"\n(JSON: {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
