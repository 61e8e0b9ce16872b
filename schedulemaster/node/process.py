"""An executor node process: the node worker (worker.py) run until a signal, with exit codes."""

from __future__ import annotations

import asyncio
import logging
import signal

from schedulemaster import prefect_patches, stall_watch
from schedulemaster.settings import Settings

log = logging.getLogger("schedulemaster.node")


async def serve_node(settings: Settings, name: str, priority: int, max_concurrency: int,
                     wait_for_name: float = 0.0, connect_timeout: float = 300.0) -> int:
    """Run until SIGTERM/SIGINT; the exit code is 1 when a part of the node failed, 2 when
    the master cannot be reached or the name is taken, 3 when another process took the name."""
    settings.apply_prefect_env()
    prefect_patches.apply_client()
    from schedulemaster.node.worker import NodeWorker, NotStarted

    worker = NodeWorker(settings.work_pool, name=name, limit=max_concurrency, priority=priority,
                        settings=settings, wait_for_name=wait_for_name, connect_timeout=connect_timeout)
    loop = asyncio.get_running_loop()
    stall_watch.start(loop)
    stall_watch.freeze_startup_heap()  # the task book it loads next stays collectable
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.start(printer=log.info)
    except NotStarted as exc:
        log.error("node %s not started: %s", name, exc)
        return 2
    except Exception:
        log.exception("node %s failed", name)
        return 1
    return worker.exit_code
