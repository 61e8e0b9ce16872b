"""What the master pays to keep each Running task's next fire time in Prefect's UI.

    .venv/bin/python bench/upcoming.py --stand-ins 500 --repeat 20

schedulemaster/master/upcoming.py keeps one Scheduled stand-in run per Running task and moves it
every time its instant passes: at 10,000 tasks firing once a minute, about 170 moves a second.
This times, on a fresh Prefect database in a temporary directory (SQLite, or --postgres on this
machine's PostgreSQL), in this process:

1. written anew: ``Upcoming._write`` of N stand-ins that do not exist (a task started), through
   bulk_runs.insert_runs (pydantic models, a delete and two inserts);
2. moved: the same N stand-ins moved to a later instant in place (sqlite_rows.update_rows);

each --repeat times, and prints wall and CPU time per stand-in (p50 over the repeats) for both,
against each other. Prefect's own way, one ``create_flow_run`` per run, is the reference for (1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def measure(count: int, repeat: int) -> dict[str, tuple[float, float]]:
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    from schedulemaster.deployments.spec import spec_of
    from schedulemaster.master.upcoming import Shown, Upcoming, stand_in

    db = provide_database_interface()
    await db.create_db()
    spec = spec_of({"Id": "x", "Title": "bench", "MetaType": 2, "RunLoop": True, "CronExpression": "0 * * * * ?",
                    "Http": {"RequestUrl": "http://127.0.0.1:9/"}})
    tasks = []
    async with db.session_context(begin_transaction=True) as s:
        for k in range(count):
            flow = await models.flows.create_flow(s, schemas.core.Flow(name=f"bench-{k}"))
            tasks.append(Shown(uuid.uuid4(), flow.id, None, {}, spec))
    service = Upcoming()
    at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
    times: dict[str, list[tuple[float, float]]] = {"written anew": [], "moved in place": [],
                                                  "Prefect's create_flow_run": []}

    async def timed(label: str, work) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        await work()
        times[label].append(((time.perf_counter() - wall) / count, (time.process_time() - cpu) / count))

    for r in range(repeat):
        for t in tasks:
            t.at = at + timedelta(minutes=2 * r)
        await service._write([], [t.id for t in tasks])  # none there: each is written anew
        await timed("written anew", lambda: service._write(tasks, []))
        for t in tasks:
            t.at += timedelta(minutes=1)
        await timed("moved in place", lambda: service._write(tasks, []))

        async def prefect_way():
            async with db.session_context(begin_transaction=True) as s:
                for t in tasks:
                    run = stand_in(t, t.at)
                    await models.flow_runs.create_flow_run(s, run.model_copy(update={
                        "id": uuid.uuid4(), "idempotency_key": f"ref-{r}-{t.id}"}))
        await timed("Prefect's create_flow_run", prefect_way)
    return {label: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for label, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-ins", type=int, default=500, help="stand-ins per write (tasks due at once)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="a fresh database on this machine's PostgreSQL")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sm-upcoming-")
    os.environ.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    name = None
    if args.postgres:
        import psycopg

        name = f"sm_bench_upcoming_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    else:
        os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home}/prefect.db"
    sys.path.insert(0, str(ROOT))
    try:
        result = asyncio.run(measure(args.stand_ins, args.repeat))
    finally:
        if name:
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    db = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{args.stand_ins} stand-ins per write, {args.repeat} repeats, {db}; per stand-in, p50 over the repeats")
    for label, (wall, cpu) in result.items():
        print(f"  {label:28} {wall * 1000:7.3f} ms wall  {cpu * 1000:7.3f} ms CPU")


if __name__ == "__main__":
    main()
