"""A task Create in the repository alone: TaskRepository.create, in-process, on a fresh SQLite file.

    .venv/bin/python bench/repo_create.py [--tasks 500] [--rounds 3]

No server, no API, no node: what the deployment rows cost (a task's flow, deployment, schedule
and event), so two commits can be compared on this machine without the noise of a live system.
Prints the mean time per Create of each round (half the tasks Running, each with its own title).
"""
import argparse
import asyncio, os, tempfile, uuid, time
os.environ["PREFECT_HOME"] = tempfile.mkdtemp()
os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/p.db"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
from schedulemaster import prefect_patches
prefect_patches.apply()
from prefect.server import models, schemas
from prefect.server.database import provide_database_interface
from prefect.utilities.callables import parameter_schema
from schedulemaster.deployments.spec import spec_of
from schedulemaster.deployments.tasks import Status, TaskRepository
from schedulemaster.flows.task_flow import run_task

def spec(title):
    return spec_of({"Id": str(uuid.uuid4()), "Title": title, "MetaType": 2, "RunLoop": True,
                    "CronExpression": "0 0 3 * * ?", "Http": {"RequestUrl": "http://127.0.0.1:9/x", "Method": "POST"}, "TimeZone": "UTC"})

async def main():
    db = provide_database_interface()
    await db.create_db()
    async with db.session_context(begin_transaction=True) as s:
        await models.workers.create_work_pool(session=s, work_pool=schemas.actions.WorkPoolCreate(name="schedulemaster", type="schedulemaster-node"))
    repo = TaskRepository()
    schema = parameter_schema(run_task).model_dump_for_openapi()
    for rnd in range(ARGS.rounds):
        t = time.perf_counter()
        for i in range(ARGS.tasks):
            await repo.create(uuid.uuid4(), spec(f"t{rnd}-{i}"), "schedulemaster", schema, Status.Running if i % 2 else Status.Stop)
        print(f"round {rnd}: {(time.perf_counter() - t) / ARGS.tasks * 1000:.2f} ms per create "
              f"({ARGS.tasks} tasks, {(rnd + 1) * ARGS.tasks} in all)")
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--tasks", type=int, default=500)
ap.add_argument("--rounds", type=int, default=3)
ARGS = ap.parse_args()
asyncio.run(main())
