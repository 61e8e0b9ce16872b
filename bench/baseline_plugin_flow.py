"""Plain Prefect's way to run the same plugin callable: one flow run (one process) per firing."""

import sys
from pathlib import Path

from prefect import flow

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugin_pkg"))


@flow(name="bench-baseline-plugin")
def run_plugin() -> int:
    from bench_plugins import Noop

    from schedulemaster import TaskContext

    job = Noop()
    job.initialize()
    ctx = TaskContext("bench")
    job.run(ctx)
    return ctx.result
