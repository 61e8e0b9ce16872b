"""The changes this project makes to Prefect's behaviour inside its own processes.

1. Prefect 3.8.8 validates every schedule's time zone against ``get_timezones()``, which lists
the whole tz database from disk on each call (``zoneinfo.available_timezones()``: 5 ms
here, more under load). Every deployment read validates its schedules, several times
(ORM row, server schema, response, client schema), so with task deployments carrying a
schedule the master spent most of its CPU walking /usr/share/zoneinfo (seen with py-spy
during the sustained benchmark: Creates took 3-20 s). The list does not change while a
process runs, so it is computed once.

2. On SQLite, Prefect's server lets at most 100 requests in at once (``RequestLimitMiddleware``,
a guard against concurrent SQLite writes). Node coordination (firing claims, the nodes
table: schedulemaster/master/coordination_api.py) never touches Prefect's database, yet it queued
behind requests waiting up to 60 s for SQLite's write lock: claims took 37 s and every
firing of those seconds was late. Those paths skip the limiter; everything else keeps it.

3. On SQLite, Prefect opens its explicit transactions DEFERRED unless the caller asked for
``with_for_update``: the write lock is taken at the first write. When another connection
committed after this transaction's first read, SQLite refuses the upgrade at once
(SQLITE_BUSY_SNAPSHOT: "database is locked", no waiting), so under concurrent writers
Prefect's own services failed now and then (seen: the worker channel's heartbeat, which
then closed the node's channel; the triggers service). Every explicit transaction here
starts IMMEDIATE: it waits its turn for the write lock at BEGIN, and nothing after BEGIN
can be refused. Only that BEGIN is IMMEDIATE: reads outside a transaction (Prefect's read
endpoints, and sessions Prefect opens inside a transaction) begin as before, without the
lock. Those transactions also take turns inside the master's process (``_writer_turn``).

4. ``prefect.settings`` provides its legacy ``PREFECT_*`` names through a module
``__getattr__`` that builds a Setting object on every access, and the server imports one
inside a validator of every event (``from prefect.settings import ...`` in
``_validate_event_name_length``): 8 % of the master's CPU while recording 33 firings a
second (py-spy). That Setting object is made once and put in the module (it still reads the
current settings when asked for its value).

5. On SQLite, Prefect's event persister writes each batch of events and their resources as
multi-row VALUES statements, which SQLAlchemy compiles afresh for every flush (a statement
of thousands of parameters): with the master recording 200 firings a second, one event each,
that compile was most of the persister's CPU (py-spy). The same rows go in through
schedulemaster/sqlite_rows.py, whose statement text is made once per shape.

6. Prefect's background services run on a docket worker over the in-process ``memory://``
backend, whose defaults wake it four times a second (a scheduler script and a stream read
every 250 ms) to start services that run every few seconds at the most: about a tenth of an
idle master's CPU (py-spy). It wakes once a second instead; a service starts up to a second
later.

7. Prefect's API compresses responses with Starlette's GZipMiddleware at its default level, 9:
a page of 1,000 task rows (about 2 MB of JSON, what a node's sync and ``sm.tasks()`` read)
cost the master more to compress than to read and build (py-spy). Level 1 (GZIP_LEVEL) is
several times cheaper for a slightly larger answer.

8. A task's deployment shows its Quartz schedule switched on while the task is Running, so the
UI tells the truth, but its node fires it (deployments/prefect_schedule.py): Prefect's
scheduler service passes deployments of this project's task flow by (entrypoint
``ENTRYPOINT``), as it passes paused ones. Every other deployment on the server is scheduled
as Prefect always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime, timedelta, timezone

from schedulemaster.deployments.tasks import ENTRYPOINT
from schedulemaster.sqlite_rows import insert_rows

log = logging.getLogger("schedulemaster.prefect_patches")


#: also the nodes' wait for a change of the task book (a read, held up to 30 s)
UNLIMITED_PREFIXES = ("/api/schedulemaster/claims", "/api/schedulemaster/nodes", "/api/schedulemaster/tasks/changes")


def apply() -> None:
    """Every change, for the process that serves Prefect's API (the master)."""
    apply_client()
    _materialize_legacy_settings()
    _exempt_coordination_from_request_limit()
    _immediate_sqlite_transactions()
    _sqlite_events_without_compiling()
    _docket_worker_once_a_second()
    _cheaper_api_compression()
    _scheduler_passes_task_deployments()


def apply_client() -> None:
    """The changes a process that only talks to Prefect's API needs (a node, the dispatcher):
    importing Prefect's server there would cost each such process seconds of CPU at start
    and about 80 MB of memory for code it never runs."""
    _cache_timezones()


def _immediate_sqlite_transactions() -> None:
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration

    if getattr(AioSqliteConfiguration, "_schedulemaster_immediate", False):
        return

    @contextlib.asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False):
        async with _writer_turn():
            async with session.begin() as transaction:
                # The mode is read when the connection emits its BEGIN, which happens here;
                # kept set for the whole block, it would reach every session opened inside it
                # (Prefect opens some: a work queue's status event reads its pool while the
                # update's transaction holds the lock), whose BEGIN IMMEDIATE then waits on
                # this transaction for SQLite's busy timeout, 60 s, and fails
                token = SQLITE_BEGIN_MODE.set("IMMEDIATE")
                try:
                    await session.connection()
                finally:
                    SQLITE_BEGIN_MODE.reset(token)
                yield transaction

    AioSqliteConfiguration.begin_transaction = begin_transaction
    AioSqliteConfiguration._schedulemaster_immediate = True


_TURNS: dict = {}  # event loop -> (asyncio.Lock, the task holding it)
TURN_WAIT_SECONDS = 30.0


@contextlib.asynccontextmanager
async def _writer_turn():
    """One explicit transaction at a time per process, first come first served.

    Every write to Prefect's SQLite database happens in the master's one process (nodes and
    the dispatcher go through its API), so its writers can queue here instead of in SQLite,
    whose busy handler polls with sleeps of up to 100 ms: under four concurrent Creates
    some waited 1-2.6 s while the lock was free most of the time. Re-entrant for the task
    that holds the turn (a transaction opened inside another is SQLite's business, as before).
    """
    loop = asyncio.get_running_loop()
    lock, owner = _TURNS.get(loop, (None, None))
    if lock is None:
        lock = asyncio.Lock()
        _TURNS[loop] = (lock, None)
    me = asyncio.current_task()
    if owner is not None and owner is me:
        yield
        return
    try:
        await asyncio.wait_for(lock.acquire(), TURN_WAIT_SECONDS)
    except asyncio.TimeoutError:
        # A holder waiting on something that needs a turn itself would otherwise wait forever:
        # go on to SQLite, whose busy timeout bounds it as it did before the queue
        log.warning("no turn for a Prefect write transaction in %.0f s (held by %s); going on without",
                    TURN_WAIT_SECONDS, _TURNS[loop][1].get_name() if _TURNS[loop][1] else "?")
        yield
        return
    _TURNS[loop] = (lock, me)
    try:
        yield
    finally:
        _TURNS[loop] = (lock, None)
        lock.release()


def _sqlite_events_without_compiling() -> None:
    from prefect.server.events.storage import database

    if getattr(database._write_sqlite_events, "_schedulemaster", False):
        return

    async def write_sqlite_events(session, events) -> None:
        """Prefect's ``_write_sqlite_events``: events already stored are skipped, the rest
        written with their resources."""
        import sqlalchemy as sa
        from prefect.server.database import provide_database_interface

        db = provide_database_interface()
        for batch in database._in_safe_batches(events):  # keeps the IN list below bounded
            stored = set((await session.scalars(
                sa.select(db.Event.id).where(db.Event.id.in_({event.id for event in batch})))).all())
            todo = [event for event in batch if event.id not in stored]
            await insert_rows(session, db.Event.__table__, [event.as_database_row() for event in todo])
            await insert_rows(session, db.EventResource.__table__,
                              [row for event in todo for row in event.as_database_resource_rows()])

    write_sqlite_events._schedulemaster = True  # type: ignore[attr-defined]
    database._write_sqlite_events = write_sqlite_events


DOCKET_WAKE = timedelta(seconds=1)
GZIP_LEVEL = 1


def _docket_worker_once_a_second() -> None:
    from prefect.server.api import background_workers

    _with_defaults(background_workers, "Worker", minimum_check_interval=DOCKET_WAKE,
                   scheduling_resolution=DOCKET_WAKE)


def _cheaper_api_compression() -> None:
    from prefect.server.api import server

    _with_defaults(server, "GZipMiddleware", compresslevel=GZIP_LEVEL)


def _scheduler_passes_task_deployments() -> None:
    from prefect.server.services import scheduler

    for name in ("_get_select_deployments_to_schedule_query", "_get_select_recent_deployments_to_schedule_query"):
        build = getattr(scheduler, name)
        if getattr(build, "_schedulemaster", False):
            continue

        def passing(db, *args, _build=build, _name=name, **kwargs):
            # is_distinct_from: a deployment without an entrypoint is still scheduled
            query = _build(db, *args, **kwargs).where(db.Deployment.entrypoint.is_distinct_from(ENTRYPOINT))
            if _name == "_get_select_recent_deployments_to_schedule_query":
                query = _recent_through_index(db, query, *args, **kwargs)
            return query

        passing._schedulemaster = True  # type: ignore[attr-defined]
        setattr(scheduler, name, passing)


def _recent_through_index(db, query, deployment_batch_size=None, loop_seconds: float = 5.0):
    """The recently updated deployments (every 5 s), read through the index on ``updated``.

    Prefect's query orders by id with a limit, and SQLite's planner then walks every
    deployment by id rather than the few updated in the last seconds: 10,000 rows a loop
    at 10,000 tasks. The same condition again as ``id IN (the recent ones)`` leads it to the
    index; the answer does not change (the cutoff is a second earlier than Prefect's own)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import aliased

    recent = aliased(db.Deployment)
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=loop_seconds + 2)
    return query.where(db.Deployment.id.in_(sa.select(recent.id).where(recent.updated >= cutoff)))


def _with_defaults(module, name: str, **defaults) -> None:
    """Replace the class Prefect instantiates as ``module.name`` (without passing these
    arguments) by a subclass whose keyword arguments default to ``defaults``; idempotent."""
    base = getattr(module, name)
    if getattr(base, "_schedulemaster_defaults", None) == defaults:
        return

    class Patched(base):  # type: ignore[misc, valid-type]
        _schedulemaster_defaults = defaults

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**defaults, **kwargs})

    Patched.__name__ = Patched.__qualname__ = base.__name__
    setattr(module, name, Patched)


def _exempt_coordination_from_request_limit() -> None:
    from prefect.server.api import server

    limited = server.RequestLimitMiddleware
    if getattr(limited, "_schedulemaster_exempt", False):
        return
    original = limited.__call__

    async def call(self, scope, receive, send):
        if scope.get("type") == "http" and str(scope.get("path", "")).startswith(UNLIMITED_PREFIXES):
            return await self.app(scope, receive, send)
        return await original(self, scope, receive, send)

    limited.__call__ = call
    limited._schedulemaster_exempt = True


#: legacy setting names Prefect's server imports inside functions on hot paths
HOT_SETTINGS = ("PREFECT_SERVER_EVENTS_MAXIMUM_EVENT_NAME_LENGTH",)


def _materialize_legacy_settings() -> None:
    from prefect import settings

    for name in HOT_SETTINGS:
        if name not in vars(settings):
            setattr(settings, name, getattr(settings, name))


def _cache_timezones() -> None:
    from prefect._internal.schemas import validators
    from prefect.types import _datetime

    if getattr(_datetime.get_timezones, "_schedulemaster_cached", False):
        return
    cached = functools.lru_cache(maxsize=1)(_datetime.get_timezones)
    cached._schedulemaster_cached = True  # type: ignore[attr-defined]
    _datetime.get_timezones = cached
    validators.get_timezones = cached
