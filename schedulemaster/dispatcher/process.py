"""The delayed-task dispatcher process (``schedulemaster dispatcher``; ``up`` starts one).

Its own process, so a million pending callbacks and 1,000 firings a second never share a
GIL with the Prefect server, and so it can be killed and restarted on its own. It needs
the store (SQLite file or PostgreSQL); Prefect only for what operators see
(schedulemaster/dispatcher/delayed_report.py), and keeps firing while Prefect is away.

On SQLite there is exactly one dispatcher (an exclusive lock on a file next to the
database), which is what lets it drop a dead predecessor's claims at once. On PostgreSQL
any number may run side by side: ``FOR UPDATE SKIP LOCKED`` gives each its own rows, and a
dead one's claims are taken over when their lease runs out.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from schedulemaster import alarms, prefect_patches, stall_watch
from schedulemaster.settings import Settings

log = logging.getLogger("schedulemaster.dispatcher")


def single_lock(store_url: str):
    """The SQLite store allows one dispatcher: hold an exclusive lock, next to the database
    file (whatever data dir points at it), for our lifetime."""
    from sqlalchemy.engine import make_url

    path = Path(make_url(store_url).database or "store").resolve().with_suffix(".dispatcher.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"another dispatcher already runs on this SQLite store ({path} is locked); "
                           "use PostgreSQL (SM_STORE_URL) to run several") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


async def serve_dispatcher(settings: Settings, name: str, max_held: int = 5000, per_host: int = 100,
                           lease: float = 30.0) -> int:
    settings.apply_prefect_env()
    prefect_patches.apply_client()
    from prefect.client.orchestration import get_client

    from schedulemaster.dispatcher.delayed_dispatch import Dispatcher
    from schedulemaster.dispatcher.delayed_report import Reporter
    from schedulemaster.keepers import mail_delayed_failure
    from schedulemaster.store.db import Configs, Store

    store = Store(settings.store_url)
    single = store.url.startswith("sqlite")
    lock = single_lock(store.url) if single else None
    for attempt in range(30):  # the master may be creating the same tables right now
        try:
            store.init()
            break
        except Exception as exc:
            if attempt == 29:
                raise
            log.info("store not ready yet (%s); retrying", str(exc).splitlines()[0][:200])
            await asyncio.sleep(1.0)
    configs = Configs(store, ttl=2.0)  # a saved setting reaches the dispatcher within 2 s

    async def mail_creator(settled, outcome) -> None:
        try:
            row = await asyncio.to_thread(store.delayed.get, settled.claim.id)
            if row is not None:
                when = datetime.now(timezone.utc).astimezone(ZoneInfo(settings.timezone))
                await asyncio.to_thread(mail_delayed_failure, store, row, outcome.error, when)
                await alarms.send(store, f"延时任务执行失败 — {row['topic']}/{row['contentkey']}",
                                  f"{when:%Y-%m-%d %H:%M:%S} {row['id']}: {outcome.error or ''}",
                                  subject=f"delayed {row['topic']}")
        except Exception as exc:  # the task's outcome stands; only the mail is lost
            log.error("mailing the creator of delayed task %s failed: %s", settled.claim.id, exc)

    dispatcher = Dispatcher(store.delayed, name, configs.get, max_held=max_held, per_host=per_host,
                            lease=lease, single=single, on_final_failure=mail_creator)
    loop = asyncio.get_running_loop()
    stall_watch.start(loop)
    stall_watch.freeze_startup_heap()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, dispatcher.stop)
    log.info("dispatcher %s started on %s store (%s)", dispatcher.me, "SQLite" if single else "PostgreSQL",
             "the only one" if single else "side by side with any others")
    async with get_client() as client:
        reporter = Reporter(client, dispatcher, store.delayed, name, settings.timezone)
        reporting = asyncio.create_task(reporter.run(), name="report")
        try:
            await dispatcher.run()
        finally:
            reporting.cancel()
            await asyncio.gather(reporting, return_exceptions=True)
            try:  # bounded: with Prefect gone, its client retries for minutes and the stop hung
                await asyncio.wait_for(reporter.report(), 10)
                await asyncio.wait_for(reporter.close_run("dispatcher stopped"), 10)
            except Exception as exc:
                log.warning("could not close the dispatcher's Prefect run: %s", exc)
    t = dispatcher.total
    log.info("dispatcher stopped: %d fired, %d succeeded, %d failed attempts, %d failed for good",
             t.fired, t.succeeded, t.failed_attempts, t.final_failures)
    if lock is not None:
        lock.close()
    return 0
