"""The embedded default under steady firing and task churn: does anything stall?

    .venv/bin/python bench/stall_soak.py                    # 30 minutes, the issue's soak
    .venv/bin/python bench/stall_soak.py --minutes 10       # a shorter look

One `schedulemaster up` (SQLite) on a temporary data dir, a local receiver process. --steady HTTP
tasks fire every 5 s (100 tasks: 1,200 firings a minute) for --minutes, while a churn loop
keeps the API busy: each second one of create (Running, every 10 s), stop + edit + start,
pause + resume, stop + delete, and a delayed task due 5-30 s later. Every API call's latency
is kept. At the end: the steady tasks' firings expected / delivered / duplicated over the
window, delayed callbacks created / delivered, API calls over 2 s and failed ones, and every
"database is locked" line and stall report (schedulemaster/stall_watch.py) in the system's
logs. Writes bench/results/stall-soak-<timestamp>.json and keeps the logs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from delayed import Receiver, api_call, ok, pct, say  # noqa: E402
from helpers import AUTH, System, bench_credential  # noqa: E402

bench_credential()


def http_form(title: str, url: str, cron: str, run_now: bool = True) -> dict:
    return {"Title": title, "MetaType": "2", "RunLoop": "true", "CronExpression": cron, "HttpRequestUrl": url,
            "HttpMethod": "POST", "HttpContentType": "application/json", "HttpBody": "{}",
            "RunNow": "true" if run_now else "false"}


class Calls:
    """Every API call's latency and outcome, by action."""

    def __init__(self):
        self.lat: dict[str, list[float]] = {}
        self.failed: Counter = Counter()
        self.slow: list[tuple[str, float, float]] = []  # (action, when, seconds)
        self.t0 = time.time()

    async def __call__(self, session, action: str, method: str, url: str, **kw) -> dict | None:
        elapsed, status, body = await api_call(session, method, url, **kw)
        self.lat.setdefault(action, []).append(elapsed)
        if elapsed > 2.0:
            self.slow.append((action, round(time.time() - self.t0, 1), round(elapsed, 2)))
        if not (ok(status, body) or (status == 200 and isinstance(body, dict) and "rows" in body)):
            self.failed[action] += 1
            return None
        return body


async def churn(session, system: System, rx: Receiver, calls: Calls, until: float, res: dict) -> None:
    api = f"{system.api}/api"
    mine: list[str] = []  # churn tasks that exist
    n = 0
    delayed = 0
    while time.time() < until:
        started = time.monotonic()
        n += 1
        kind = random.choice(["create", "create", "edit", "pause", "delete", "delayed", "delayed"])
        if kind == "create" or not mine:
            body = await calls(session, "Create", "POST", f"{api}/Task/Create",
                               data=http_form(f"churn-{n}", rx.url(f"/churn/{n}"), "0/10 * * * * ?"))
            if body:
                mine.append(body["Data"])
        elif kind == "edit":
            tid = random.choice(mine)
            await calls(session, "Stop", "POST", f"{api}/Task/Stop", data={"id": tid})
            await calls(session, "Edit", "POST", f"{api}/Task/Edit",
                        data={**http_form(f"churn-{n}-edited", rx.url(f"/churn/{n}"), "5/10 * * * * ?", False),
                              "Id": tid})
            await calls(session, "Start", "POST", f"{api}/Task/Start", data={"id": tid})
        elif kind == "pause":
            tid = random.choice(mine)
            await calls(session, "Pause", "POST", f"{api}/Task/Pause", data={"id": tid})
            await calls(session, "Resume", "POST", f"{api}/Task/Resume", data={"id": tid})
        elif kind == "delete":
            tid = mine.pop(random.randrange(len(mine)))
            await calls(session, "Stop", "POST", f"{api}/Task/Stop", data={"id": tid})
            await calls(session, "Delete", "POST", f"{api}/Task/Delete", data={"id": tid})
        else:
            body = await calls(session, "DelayTask/Create", "POST", f"{api}/DelayTask/Create", data={
                "SourceApp": "soak", "Topic": "soak", "ContentKey": f"d{n}",
                "DelayTimeSpan": str(random.randint(5, 30)),
                "NotifyUrl": rx.url(f"/delayed/{n}"), "NotifyDataType": "application/json", "NotifyBody": "{}"})
            delayed += body is not None
        await calls(session, "QueryList", "GET", f"{api}/Task/QueryList",
                    params={"pageNumber": "1", "pageSize": "100"})
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    res["churn"] = {"rounds": n, "tasks_left": len(mine), "delayed_created": delayed}
    for tid in mine:
        await calls(session, "Stop", "POST", f"{api}/Task/Stop", data={"id": tid})


async def scenario(system: System, rx: Receiver, args, res: dict) -> None:
    import aiohttp

    calls = Calls()
    async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await rx.wait(session)
        say(f"creating {args.steady} steady tasks (every 5 s)")
        ids = []
        for i in range(args.steady):
            body = await calls(session, "Create", "POST", f"{system.api}/api/Task/Create",
                               data=http_form(f"steady-{i}", rx.url(f"/steady/{i}"), "0/5 * * * * ?"))
            if body:
                ids.append(body["Data"])
        w0 = (int(time.time()) // 5 + 4) * 5
        w1 = w0 + args.minutes * 60
        say(f"window of {args.minutes} min with churn")
        await asyncio.sleep(max(0.0, w0 - time.time()))
        await churn(session, system, rx, calls, w1, res)
        for tid in ids:
            await calls(session, "Stop", "POST", f"{system.api}/api/Task/Stop", data={"id": tid})
        await asyncio.sleep(35)  # the last delayed tasks fall due
        hits = await rx.hits(session, "/")
    steady = [h for h in hits if h[0].startswith("/steady/") and w0 - 0.5 <= h[2] < w1 - 0.5]
    got = {(h[0], round(h[2] / 5)) for h in steady}
    late = [h[2] - round(h[2] / 5) * 5 for h in steady]
    keys = Counter(h[1] for h in steady)
    delayed_hits = [h for h in hits if h[0].startswith("/delayed/")]
    res["steady"] = {"tasks": len(ids), "expected": len(ids) * args.minutes * 12, "delivered": len(got),
                     "duplicates": sum(v - 1 for v in keys.values() if v > 1),
                     "p99_s": round(pct(late, 99), 3) if late else None}
    res["delayed"] = {"created": res["churn"]["delayed_created"], "delivered": len({h[0] for h in delayed_hits}),
                      "duplicates": len(delayed_hits) - len({h[0] for h in delayed_hits})}
    res["api"] = {a: {"calls": len(v), "p50_ms": round(pct(v, 50) * 1000), "p99_ms": round(pct(v, 99) * 1000),
                      "max_ms": round(max(v) * 1000), "failed": calls.failed[a]} for a, v in sorted(calls.lat.items())}
    res["slow_calls"] = calls.slow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--steady", type=int, default=100)
    ap.add_argument("--seed", type=int, default=22)
    args = ap.parse_args()
    random.seed(args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res: dict = {"args": vars(args)}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sm-soak-") as tmp:
        rx = Receiver()
        system = System(Path(tmp), timezone="UTC")
        system.start(timeout=300)
        try:
            asyncio.run(scenario(system, rx, args, res))
        finally:
            system.stop()
            rx.close()
            logs = out / f"stall-soak-{stamp}-logs"
            shutil.copytree(Path(tmp) / "logs", logs, dirs_exist_ok=True)
    text = {p.name: p.read_text(errors="replace") for p in logs.glob("*.log")}
    res["database_is_locked"] = {name: t.count("database is locked") for name, t in text.items()}
    res["stall_reports"] = {name: t.count("schedulemaster.stall") for name, t in text.items()}
    res["restarts"] = [line.strip() for line in system.output if " exited with code " in line]
    (out / f"stall-soak-{stamp}.json").write_text(json.dumps(res, indent=2))
    s, d = res["steady"], res["delayed"]
    print(f"steady firings   expected {s['expected']:,}  delivered {s['delivered']:,}  duplicates {s['duplicates']}"
          f"  lateness p99 {s['p99_s']} s")
    print(f"delayed          created {d['created']}  delivered {d['delivered']}  duplicates {d['duplicates']}")
    print(f"API calls > 2 s  {len(res['slow_calls'])}  {res['slow_calls'][:10]}")
    for action, a in res["api"].items():
        print(f"  {action:18s} {a['calls']:6d} calls  p50 {a['p50_ms']} ms  p99 {a['p99_ms']} ms"
              f"  max {a['max_ms']} ms  failed {a['failed']}")
    print(f"'database is locked' {res['database_is_locked']}   stall reports {res['stall_reports']}")
    print(f"restarts {res['restarts']}")
    print(f"wrote {out / f'stall-soak-{stamp}.json'} and the logs beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
