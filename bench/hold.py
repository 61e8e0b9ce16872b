"""Hold one live system with many tasks, to profile it (py-spy, sm.tasks(), curl) at leisure.

    .venv/bin/python bench/hold.py --tasks 10000 --data-dir /tmp/hold      # then Ctrl-C
    .venv/bin/python bench/hold.py --tasks 10000 --running --postgres

Starts `schedulemaster up` on --data-dir (kept between runs: a second start finds the tasks of
the first and creates only the missing ones), with a local receiver the tasks call, creates HTTP
tasks up to --tasks (4 at once; each fires once a minute at its own second when --running), and
writes what a probe needs to --info (the API and Prefect URLs, every process's pid, the client
environment and Prefect's credential) before holding until interrupted. bench/scale.py measures;
this only keeps the system up, so what a profile shows is not cut short by the next step. The
tasks call a receiver on a port chosen at each start: tasks created by an earlier start fail
their firings (a downstream that is gone, a load of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from delayed import Receiver, api_call, say  # noqa: E402
from helpers import AUTH, System, bench_credential  # noqa: E402

import scale  # noqa: E402

bench_credential()


async def fill(system: System, rx: Receiver, tasks: int, running: bool) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=300)) as session:
        await rx.wait(session)
        _e, status, body = await api_call(session, "GET", f"{system.api}/api/Task/QueryList",
                                          params={"pageNumber": "1", "pageSize": "1"})
        have = body.get("total", 0) if status == 200 and isinstance(body, dict) else 0
        say(f"{have} tasks there")
        if have >= tasks:
            return {"created": 0}
        made = await scale.create_tasks(session, system, rx, tasks - have, 4, f"hold{int(time.time()) % 10000}",
                                        run_now=running)
        made.pop("ids", None)
        return made


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--running", action="store_true", help="create them Running (RunNow), not stopped")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/sm-hold"))
    ap.add_argument("--info", type=Path, default=Path("/tmp/sm-hold.json"), help="where to write the probe's facts")
    ap.add_argument("--postgres", action="store_true",
                    help="the store and Prefect on this machine's PostgreSQL (database sm_hold, kept)")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    env = {"SM_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/sm_hold"} if args.postgres else {}
    rx = Receiver()
    system = System(args.data_dir, env=env, timezone="UTC")
    t = time.monotonic()
    system.start(timeout=600)
    say(f"up in {time.monotonic() - t:.1f} s")
    try:
        say(f"create: {asyncio.run(fill(system, rx, args.tasks, args.running))}")
        facts = {"api": system.api, "prefect": system.prefect, "pids": scale.processes(system),
                 "client_env": system.client_env, "auth": system.auth_string}
        fd = os.open(args.info, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds Prefect's credential
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(facts, out)
        say(f"holding; facts in {args.info}; Ctrl-C (or SIGTERM) stops")
        signal.signal(signal.SIGTERM, _interrupt)
        while system.proc.poll() is None:
            time.sleep(1)
        say("the system exited on its own")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        system.stop()
        rx.close()


if __name__ == "__main__":
    raise SystemExit(main())
