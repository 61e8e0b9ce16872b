"""Say who is stuck when a process stalls: its event loop blocked, or a database write
transaction held open.

SQLite has one write lock per file and Prefect's server waits up to 60 s for it, so one
transaction left open while its owner waits on something else stalls every writer of the
process (and the nodes behind it) for a minute with nothing in the logs but a later
"database is locked". A watcher thread looks once a second and logs, once per stall, the
stack of whoever holds things up: the loop's thread when the loop does not turn, the
asyncio task (or thread) that opened a write transaction more than ``TRANSACTION_SECONDS``
ago. Cheap enough to run always: a transaction costs two dict operations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger("schedulemaster.stall")

LOOP_SECONDS = 5.0
TRANSACTION_SECONDS = 10.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")


@dataclass
class _Open:
    since: float
    task: asyncio.Task | None
    thread: int
    sqlite: sqlite3.Connection | None  # None: another database (its locks are per row)
    wrote: bool = False
    reported: bool = False
    statement: str = ""

    def holds_lock(self) -> bool:
        """Wrote, and (on SQLite) the connection is inside a transaction: Prefect runs
        SQLite in autocommit outside explicit transactions, where a write holds no lock."""
        return self.wrote and (self.sqlite is None or self.sqlite.in_transaction)


@dataclass
class StallWatch:
    """One per process: ``watch(loop)`` once the loop runs; ``stop()`` at exit."""

    loop_seconds: float = LOOP_SECONDS
    transaction_seconds: float = TRANSACTION_SECONDS
    stalls: int = 0  #: stalls reported so far (the tests read it)
    _open: dict[int, _Open] = field(default_factory=dict)
    _beat: float = field(default_factory=time.monotonic)
    _loop_thread: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_thread = threading.get_ident()
        self._listen()
        threading.Thread(target=self._run, args=(loop,), name="stall-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        for name, fn in self._listeners():
            if event.contains(Engine, name, fn):
                event.remove(Engine, name, fn)

    def _listeners(self):
        return (("begin", self._begin), ("commit", self._end), ("rollback", self._end),
                ("before_cursor_execute", self._statement))

    # ---- transactions ---------------------------------------------------------------
    def _listen(self) -> None:
        for name, fn in self._listeners():
            if not event.contains(Engine, name, fn):
                event.listen(Engine, name, fn)

    def _begin(self, conn) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a thread without a loop (the store's engines in to_thread)
            task = None
        self._open[id(conn)] = _Open(time.monotonic(), task, threading.get_ident(), _sqlite_of(conn))

    def _end(self, conn) -> None:
        held = self._open.pop(id(conn), None)
        if held is not None and held.reported:
            log.warning("the write transaction reported above ended after %.1f s",
                        time.monotonic() - held.since)

    def _statement(self, conn, _cursor, statement: str, *_args) -> None:
        held = self._open.get(id(conn))
        if held is not None and not held.wrote and statement.lstrip()[:15].upper().startswith(_WRITES):
            held.wrote = True
            held.statement = statement.strip().splitlines()[0][:120]

    # ---- the watcher ----------------------------------------------------------------
    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        blocked_since: float | None = None
        asked = time.monotonic()
        self._beat = asked
        loop.call_soon_threadsafe(self._tick)
        while not self._stop.wait(1.0):
            if loop.is_closed():
                return
            now = time.monotonic()
            # the tick asked for at the last look has not run: the loop has not turned since
            late = now - asked if self._beat < asked else 0.0
            if late == 0.0:
                asked = now
                try:
                    loop.call_soon_threadsafe(self._tick)
                except RuntimeError:  # the loop closed between the check and the call
                    return
            if late > self.loop_seconds and blocked_since is None:
                blocked_since = asked
                self.stalls += 1
                log.warning("event loop blocked for %.1f s; its thread is at:\n%s", late,
                            self._thread_stack(self._loop_thread))
            elif late <= self.loop_seconds and blocked_since is not None:
                log.warning("event loop turned again after %.1f s", now - blocked_since)
                blocked_since = None
            for held in list(self._open.values()):
                if not held.reported and now - held.since > self.transaction_seconds and held.holds_lock():
                    held.reported = True
                    self.stalls += 1
                    log.warning("a write transaction has been open %.1f s (%s); its owner is at:\n%s",
                                now - held.since, held.statement, self._owner_stack(held))
            if _census_wanted.is_set():
                _census_wanted.clear()
                # a warning: asked for (SM_HEAP_CENSUS), and the master logs nothing below that
                log.warning("after a long garbage collection: %s", heap_census())

    def _tick(self) -> None:
        self._beat = time.monotonic()

    def _owner_stack(self, held: _Open) -> str:
        if held.task is not None:
            return f"task {held.task.get_name()}:\n{_await_chain(held.task)}"
        return f"thread {held.thread}:\n{self._thread_stack(held.thread)}"

    @staticmethod
    def _thread_stack(ident: int | None) -> str:
        frame = sys._current_frames().get(ident) if ident is not None else None
        return "".join(traceback.format_stack(frame, limit=40)) if frame is not None else "(gone)"


def _sqlite_of(conn) -> sqlite3.Connection | None:
    """The sqlite3 connection under a SQLAlchemy connection (pysqlite, or aiosqlite's adapter)."""
    raw = getattr(getattr(conn, "connection", None), "dbapi_connection", None)
    for attr in ("_connection", "_conn"):  # aiosqlite's adapter -> aiosqlite.Connection -> sqlite3
        if isinstance(raw, sqlite3.Connection):
            break
        raw = getattr(raw, attr, None)
    return raw if isinstance(raw, sqlite3.Connection) else None


def _await_chain(task: asyncio.Task) -> str:
    """Where a suspended task waits, coroutine by coroutine (Task.get_stack shows only the
    outermost frame of a coroutine task)."""
    lines, coro = [], task.get_coro()
    for _ in range(60):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines) or "(no frames)"


_WATCH: StallWatch | None = None


#: a garbage collection pass this long is logged: it stops every thread holding the GIL, so a
#: large heap's full collection shows as a lone slow request with nothing else in the logs
GC_SECONDS = 0.2
#: SM_HEAP_CENSUS=1: after such a pass (at most every CENSUS_SECONDS), also log which objects
#: the collector scans (heap_census): what makes its passes long. Off by default: a census of a
#: few million objects holds the GIL for about a second.
CENSUS = os.environ.get("SM_HEAP_CENSUS") == "1"
CENSUS_SECONDS = 600.0
_gc_started: list[float] = []
_census_wanted = threading.Event()
_census_last: list[float] = []


def heap_census(top: int = 15) -> str:
    """How many objects the garbage collector scans (frozen ones are not), and the most
    numerous types among them."""
    import gc
    from collections import Counter

    objects = gc.get_objects()
    counts = Counter(type(o) for o in objects)
    del objects
    named = ", ".join(f"{t.__qualname__ if t.__module__ == 'builtins' else t.__module__ + '.' + t.__qualname__} "
                      f"{n:,}" for t, n in counts.most_common(top))
    return f"{sum(counts.values()):,} objects the collector scans; the most numerous: {named}"


def _gc_timer(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started and (took := time.perf_counter() - _gc_started[0]) >= GC_SECONDS:
        log.warning("garbage collection of generation %d took %.2f s (%d objects collected)",
                    info.get("generation", -1), took, info.get("collected", 0))
        now = time.monotonic()
        if CENSUS and (not _census_last or now - _census_last[0] >= CENSUS_SECONDS):
            _census_last[:] = [now]
            _census_wanted.set()  # the watcher's thread takes it: never inside the collector


def freeze_startup_heap() -> None:
    """Keep what a process built to start (the modules it imported: Prefect's, SQLAlchemy's,
    pydantic's; most of its objects) out of the collector's full passes, which scanned it all
    and stopped every thread 0.2-0.8 s each: the master's slow requests (bench/console.py), the
    node's late firings (a census at 10,000 tasks: 270,000 objects scanned, most of them
    functions, tuples and dicts of imported modules). Call once, after startup's imports."""
    import gc

    gc.collect()
    gc.freeze()
    _census_last.clear()  # a census of the startup heap said nothing: the next long pass gets one


def start(loop: asyncio.AbstractEventLoop | None = None) -> StallWatch:
    """Start this process's watcher (once; later calls return the same one)."""
    global _WATCH
    if _WATCH is None:
        import gc

        _WATCH = StallWatch()
        _WATCH.watch(loop or asyncio.get_running_loop())
        gc.callbacks.append(_gc_timer)
    return _WATCH
