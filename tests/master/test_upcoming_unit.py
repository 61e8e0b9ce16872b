"""The stand-in service's bookkeeping (schedulemaster/master/upcoming.py) without a database:
the task book and the writes replaced by fakes, so what is written when can be asserted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

from schedulemaster.deployments.spec import spec_of
from schedulemaster.master.upcoming import Shown, Upcoming

T0 = datetime(2026, 12, 7, 8, 0, 0, tzinfo=timezone.utc)


class Book:
    """A task book: (id -> updated) and a change token that moves with it. ``updated`` is on
    the real clock (the service asks for what changed since a little before its last look)."""

    def __init__(self):
        self.tasks: dict[uuid.UUID, datetime] = {}
        self.tokens_follow_commits = True  # as on SQLite

    async def change_token(self) -> str:
        return f"{len(self.tasks)}/{max(self.tasks.values(), default=None)}"

    async def versions(self, since):
        rows = [(i, u) for i, u in self.tasks.items() if since is None or u >= since]
        return len(self.tasks), rows, await self.change_token()


def task(cron: str = "0/10 * * * * ?", cron_ok: bool = True) -> Shown:
    spec = spec_of({"Id": "x", "Title": "t", "MetaType": 2, "RunLoop": True, "CronExpression": cron,
                    "Http": {"RequestUrl": "http://127.0.0.1:9/"}, "TimeZone": "UTC"})
    return Shown(uuid.uuid4(), uuid.uuid4(), None, {}, spec)


def service(book: Book, running: dict[uuid.UUID, Shown]) -> tuple[Upcoming, list]:
    up = Upcoming(repo=book)
    writes: list[tuple[list, list]] = []

    async def read(ids):
        return {i: running.get(i) for i in ids}

    async def write(puts, drops):
        if puts or drops:  # as the real one: nothing to do, no transaction
            writes.append(([(t.id, t.at) for t in puts], list(drops)))

    up._running, up._write = read, write
    return up, writes


def test_a_started_task_is_shown_moved_when_due_and_dropped_when_it_stops():
    async def go():
        book, a = Book(), task()
        running = {a.id: a}
        book.tasks[a.id] = T0
        up, writes = service(book, running)
        await up.look(T0)
        assert writes[-1] == ([(a.id, T0 + timedelta(seconds=10))], [])
        await up.look(T0 + timedelta(seconds=5))  # nothing changed, nothing due
        assert len(writes) == 1
        await up.look(T0 + timedelta(seconds=10))  # due: the next instant
        assert writes[-1] == ([(a.id, T0 + timedelta(seconds=20))], [])
        running.pop(a.id)  # paused: read again, not Running
        book.tasks[a.id] = datetime.now(timezone.utc)  # its `updated`: the database's clock
        await up.look(T0 + timedelta(seconds=12))
        assert writes[-1] == ([], [a.id])
        del book.tasks[a.id]  # deleted
        await up.look(T0 + timedelta(seconds=13))
        assert a.id not in up.shown

    asyncio.run(go())


def test_a_failed_write_is_done_again_at_the_next_look():
    async def go():
        book, a = Book(), task()
        book.tasks[a.id] = T0
        up, writes = service(book, {a.id: a})
        real = up._write
        failures = [RuntimeError("database is locked")]

        async def flaky(puts, drops):
            if failures:
                raise failures.pop()
            await real(puts, drops)

        up._write = flaky
        try:
            await up.look(T0)
        except RuntimeError:
            pass
        await up.look(T0 + timedelta(seconds=1))  # no change since, yet the stand-in is written
        assert writes == [([(a.id, T0 + timedelta(seconds=10))], [])]

    asyncio.run(go())


def test_looks_that_keep_failing_are_tried_less_often_and_a_good_one_resets(monkeypatch):
    """A failed look starts over from every Running task: a fault that stays must not rewrite
    thousands of stand-ins every second (seen at 12,000 tasks: the master at a full core)."""
    from schedulemaster.master import upcoming

    outcomes = [False, False, False, True, False, True] + [False] * 10
    slept: list[float] = []

    async def look(now=None):
        if not outcomes.pop(0):
            raise RuntimeError("UNIQUE constraint failed")
        return 0

    async def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 12:
            raise asyncio.CancelledError

    up = Upcoming(repo=Book())
    up.look = look
    monkeypatch.setattr(upcoming.asyncio, "sleep", sleep)
    try:
        asyncio.run(up.run())
    except asyncio.CancelledError:
        pass
    every = upcoming.LOOK_EVERY
    assert slept == [every * f for f in (2, 4, 8, 1, 2, 1, 2, 4, 8, 16, 32, 64)], slept


def test_a_task_whose_cron_does_not_parse_is_left_without_a_stand_in_and_the_rest_go_on():
    async def go():
        book, good, bad = Book(), task(), task()
        bad.spec = bad.spec.model_copy(update={"CronExpression": "not a cron"})
        book.tasks.update({good.id: T0, bad.id: T0})
        up, writes = service(book, {good.id: good, bad.id: bad})
        await up.look(T0)
        puts, drops = writes[-1]
        assert puts == [(good.id, T0 + timedelta(seconds=10))] and drops == [bad.id]

    asyncio.run(go())
