"""The Python API's costs on a fresh `schedulemaster up` (SQLite): decorating, and reading runs.

    .venv/bin/python bench/python_api.py                       # 10 decorations, 20 tasks x 1/s for 120 s
    .venv/bin/python bench/python_api.py --tasks 10 --seconds 60

Measured, each as a median over ``--decorations`` repetitions:
* ``@sm.task`` of a new function: pickle, package, Create, upload (task stopped);
* the same cell run again unchanged (reads the task and the stored package, writes nothing);
* a changed function on a running task: stop, Edit, upload, start (the node initializes it);
* from ``.start()`` of a new function task to its first firing visible in ``sm.runs()``.
Then K HTTP tasks fire every second for D seconds and every run of them is read back:
``sm.runs(limit=all)`` (DataFrame with typed columns) against Prefect's own client paging
through ``read_flow_runs`` with the same filter and page size (no DataFrame): what the
DataFrame and the task-title lookup add on top of the reads Prefect itself makes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from helpers import System  # noqa: E402
from lateness import ReceiverProc  # noqa: E402

import schedulemaster as sm  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cell(title: str, version: int):
    """A notebook cell: the same code at the same place each time it runs."""
    @sm.task(cron="0/2 * * * * ?", title=title, params={"v": version})
    def job(context):
        context.write_log(f"version {context.get_argument('v')}")
        return version

    return job


def bench_decorations(n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"new": [], "unchanged": [], "changed (running)": [], "start to first firing": []}
    for i in range(n):
        title = f"bench-fn-{i}"
        out["new"].append(timed(lambda: cell(title, 1)))
        out["unchanged"].append(timed(lambda: cell(title, 1)))
        task = sm.get_task(title)
        t0 = time.perf_counter()
        task.start()
        while sm.runs(task=task, kind="firing", limit=1).empty:
            time.sleep(0.1)
        out["start to first firing"].append(time.perf_counter() - t0)
        out["changed (running)"].append(timed(lambda: cell(title, 2)))
        task.delete()
    return out


def plain_prefect_read(conn, page: int = 200) -> int:
    """Every run of the tasks' flow through Prefect's client: the same filter, sort and
    page size ``sm.runs()`` uses, without building a DataFrame."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    client = conn.prefect()
    n, offset = 0, 0
    while True:
        runs = client.read_flow_runs(flow_filter=FlowFilter(tags=FlowFilterTags(all_=["schedulemaster"])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=page, offset=offset)
        n += len(runs)
        if len(runs) < page:
            return n
        offset += page


def create_retrying(make, attempts: int = 5):
    """SQLite refuses a write now and then under this load ("数据保存失败!" = database is
    locked, the README's known stall): say so and try again, so the run still measures."""
    for attempt in range(1, attempts + 1):
        try:
            return make()
        except sm.LegacyError as exc:
            print(f"  create refused ({exc.message}), attempt {attempt}/{attempts}", file=sys.stderr, flush=True)
            if attempt == attempts:
                raise
            time.sleep(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decorations", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=120)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="sm-bench-pyapi-") as tmp:
        system = System(Path(tmp)).start()
        rx = ReceiverProc()
        try:
            system.wait_node()
            conn = sm.connect(system.api)
            print(f"system up: {system.api}, Prefect {conn.prefect_url}, SQLite", flush=True)
            dec = bench_decorations(args.decorations)

            tasks = [create_retrying(lambda i=i: sm.http_task(f"bench-http-{i}", rx.url(f"/b{i}"), "* * * * * ?",
                                                              start=True)) for i in range(args.tasks)]
            print(f"{args.tasks} HTTP tasks firing every second for {args.seconds} s ...", flush=True)
            time.sleep(args.seconds)
            for t in tasks:
                t.stop()
            time.sleep(5)  # the node records its last batch
            reads = []
            for _ in range(3):
                t0 = time.perf_counter()
                df = sm.runs(limit=10_000_000)
                t_ours = time.perf_counter() - t0
                t0 = time.perf_counter()
                n_plain = plain_prefect_read(conn)
                t_plain = time.perf_counter() - t0
                reads.append((len(df), t_ours, n_plain, t_plain))
            t0 = time.perf_counter()
            lat = sm.lateness(since=f"{args.seconds + 600}s")
            t_lat = time.perf_counter() - t0
        finally:
            rx.close()
            system.stop()

    print()
    print(f"| operation (median of {args.decorations}) | seconds |")
    print("|---|---|")
    for name, values in dec.items():
        print(f"| {name} | {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f}) |")
    print()
    rows, t_ours, n_plain, t_plain = sorted(reads, key=lambda r: r[1])[1]
    print("| reading every run (median of 3) | rows | seconds | rows/s |")
    print("|---|---|---|---|")
    print(f"| `sm.runs()` DataFrame | {rows:,} | {t_ours:.2f} | {rows / t_ours:,.0f} |")
    print(f"| Prefect client `read_flow_runs`, pages of 200 | {n_plain:,} | {t_plain:.2f} | {n_plain / t_plain:,.0f} |")
    print(f"| `sm.lateness()` over those firings | {int(lat['firings'].sum()):,} firings | {t_lat:.2f} | |")
    print()
    print(lat.head(5).to_string())


if __name__ == "__main__":
    main()
