"""The node's Claimer, through the real MasterClient, against a recording stand-in for the
Prefect client it rides on (the real endpoints are exercised end to end in test_failover.py): calls stay under the master's
limit, an idle node still tells the master it lives, the master's NodeActivity, and the life of a claim in the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from schedulemaster.store import claims
from schedulemaster.node import node_claims
from schedulemaster.coordination.client import MasterClient
from schedulemaster.coordination.wire import MAX_CLAIMS, MAX_LATEST, LatestRequest
from schedulemaster.deployments.spec import spec_of
from schedulemaster.master.coordination_api import NodeActivity
from schedulemaster.node.node_claims import Claimer


class FakeMaster:
    """A Prefect client whose ``request`` answers /claims like the master: wins every firing
    no other node has."""

    def __init__(self, taken: set[str] = frozenset()):
        self.calls: list[tuple[str, dict]] = []
        self.taken = set(taken)

    async def request(self, method, path, json=None, headers=None):
        self.calls.append((path, json))
        if path.endswith("/latest"):
            LatestRequest.model_validate(json)  # as the master's endpoint does: 422 past its limit
            answer = {t: "2026-01-01T00:00:00Z" for t in json["task_ids"]}
        elif path.endswith("/release"):
            answer = {"released": len(json["firings"])}
        else:
            answer = {"won": [f["firing_id"] for f in json["firings"] if f["firing_id"] not in self.taken],
                      "superseded": False}

        class Resp:
            content = jsonlib.dumps(answer).encode()
        return Resp()


def claimer(master: FakeMaster) -> Claimer:
    return Claimer(MasterClient(master), "worker1", str(uuid.uuid4()))


def items(n: int):
    tid, t0 = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [(f"f{i}", tid, t0 + timedelta(seconds=i)) for i in range(n)]


def test_a_large_catch_up_is_claimed_in_calls_the_master_accepts():
    master = FakeMaster(taken={"f7", "f1200"})
    c = claimer(master)
    asyncio.run(c.claim(items(9000)))
    sizes = [len(body["firings"]) for _, body in master.calls]
    assert sum(sizes) == 9000 and max(sizes) <= MAX_CLAIMS
    assert len(c.won) == 8998 and set(c.lost) == {"f7", "f1200"}
    # what is known is not claimed again
    asyncio.run(c.claim(items(9000)))
    assert len(master.calls) == len(sizes)
    # releases are chunked too
    asyncio.run(c.release([f"f{i}" for i in range(3000)]))
    released = [len(b["firings"]) for p, b in master.calls if p.endswith("/release")]
    assert sum(released) == 3000 and max(released) <= MAX_CLAIMS


def test_the_latest_instants_of_more_tasks_than_one_call_carries_are_all_read():
    """A node taking over 12,000 tasks once failed every sync: one call of them all was refused."""
    master = FakeMaster()
    ids = [uuid.uuid4() for _ in range(MAX_LATEST + 2000)]
    latest = asyncio.run(MasterClient(master).latest(ids))
    assert set(latest) == {str(i) for i in ids}
    assert [len(body["task_ids"]) for _, body in master.calls] == [MAX_LATEST, 2000]


def test_an_idle_node_sends_a_keepalive_at_most_every_few_seconds():
    master = FakeMaster()
    c = claimer(master)
    asyncio.run(c.claim([]))  # nothing to claim, no keepalive asked: no call
    assert master.calls == []
    asyncio.run(c.claim([], keepalive=True))
    asyncio.run(c.claim([], keepalive=True))  # just called: not again
    assert [len(b["firings"]) for _, b in master.calls] == [0]
    c.last_call -= node_claims.KEEPALIVE
    asyncio.run(c.claim([], keepalive=True))
    assert len(master.calls) == 2


def test_node_activity_is_per_process_and_expires():
    a = NodeActivity()
    assert not a.alive("worker1")
    a.saw("worker1", "inc-1")
    assert a.alive("worker1") and a.alive("worker1", "inc-1")
    assert not a.alive("worker1", "inc-2")  # another process under the name proves nothing
    assert not a.alive("worker2")
    a._seen["worker1"] = ("inc-1", time.monotonic() - 60)
    assert not a.alive("worker1", "inc-1")


@pytest.fixture(params=["sqlite", "postgresql"])
def claims_engine(request, tmp_path):
    from sqlalchemy import create_engine
    from sqlmodel import SQLModel

    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    else:
        import psycopg

        db = f"sm_claims_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        eng = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}")
    SQLModel.metadata.create_all(eng, tables=[claims.FiringClaim.__table__])
    yield eng
    eng.dispose()
    if request.param == "postgresql":
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_a_fired_claim_ends_at_once_and_waits_for_its_record(claims_engine):
    eng = claims_engine
    t0, tid = datetime.now(timezone.utc), str(uuid.uuid4())
    assert sorted(claims.claim(eng, "w1", "i1", [("a", tid, t0), ("b", tid, t0), ("c", tid, t0)])) == ["a", "b", "c"]
    assert claims.claim(eng, "w2", "i2", [("a", tid, t0)]) == []
    assert claims.fired(eng, "w1", "i1", [("a", True), ("b", False)]) == 2
    assert claims.fired(eng, "w2", "i2", [("c", True)]) == 0  # not its claim
    assert [c.firing_id for c in claims.unfinished(eng)] == ["c"]  # only c may still be running
    assert claims.unrecorded_holders(eng) == [("w1", "i1")]
    assert sorted(c.outcome for c in claims.unrecorded(eng, "w1", "i1")) == ["fired-failed", "fired-ok"]
    assert claims.finish(eng, ["a"], "recorded") == 1
    assert claims.finish(eng, ["b", "c"], "recorded") == 2
    assert claims.unrecorded_holders(eng) == [] and claims.unfinished(eng) == []
    # finished claims go after 10 minutes; a fired one waits a day for its record
    claims.claim(eng, "w1", "i1", [("d", tid, t0)])
    claims.fired(eng, "w1", "i1", [("d", True)])
    assert claims.purge(eng, t0 + timedelta(minutes=30)) == 3
    assert [c.firing_id for c in claims.unrecorded(eng, "w1", "i1")] == ["d"]
    assert claims.purge(eng, t0 + timedelta(days=2)) == 1


def test_the_latest_claim_of_an_instant_in_another_zone_is_the_same_instant(claims_engine):
    """Instants come in the task's zone (+08:00); SQLite kept their wall time and gave it back
    as UTC, eight hours on, so a node taking the task over saw its last claim in the future."""
    from zoneinfo import ZoneInfo

    at = datetime(2026, 12, 8, 1, 27, 6, tzinfo=ZoneInfo("Asia/Shanghai"))
    early = datetime(2026, 12, 7, 17, 27, 7, tzinfo=timezone.utc)  # one second later, in UTC
    tid = str(uuid.uuid4())
    claims.claim(claims_engine, "w1", "i1", [("z1", tid, at), ("z2", tid, early)])
    assert claims.latest(claims_engine, [tid]) == {tid: early}
    assert [c.scheduled for c in claims.unfinished(claims_engine)] == [at, early]


def test_a_claim_released_unfired_can_be_taken_again_and_is_not_the_latest(claims_engine):
    """A node gives back the claim of an instant it will not fire (its task was paused, or
    moved to another node): that instant is nobody's last firing, and the node that fires
    the task now may claim it and catch it up. A claim still held or fired stays taken."""
    eng, tid = claims_engine, str(uuid.uuid4())
    t0 = datetime(2026, 12, 8, 4, 15, 10, tzinfo=timezone.utc)
    before = t0 - timedelta(minutes=1)
    assert sorted(claims.claim(eng, "w1", "i1", [("prev", tid, before), ("x", tid, t0)])) == ["prev", "x"]
    claims.fired(eng, "w1", "i1", [("prev", True)])
    assert claims.latest(eng, [tid]) == {tid: t0}
    assert claims.claim(eng, "w2", "i2", [("x", tid, t0), ("prev", tid, before)]) == []  # held; fired
    assert claims.release(eng, "w1", "i1", ["x"]) == 1
    assert claims.latest(eng, [tid]) == {tid: before}
    assert claims.claim(eng, "w2", "i2", [("x", tid, t0), ("prev", tid, before)]) == ["x"]
    assert [(c.firing_id, c.node) for c in claims.unfinished(eng)] == [("x", "w2")]
    assert claims.latest(eng, [tid]) == {tid: t0}
    assert claims.claim(eng, "w1", "i1", [("x", tid, t0)]) == []  # w2's now


def test_firings_waiting_for_their_claims_share_one_call_at_a_time():
    """Under a slow master, each firing sending its own claim made hundreds of requests at
    once; now they wait for one call that carries all of them."""

    class SlowMaster(FakeMaster):
        in_flight = peak = 0

        async def request(self, method, path, json=None, headers=None):
            SlowMaster.in_flight += 1
            SlowMaster.peak = max(SlowMaster.peak, SlowMaster.in_flight)
            await asyncio.sleep(0.2)
            try:
                return await super().request(method, path, json, headers)
            finally:
                SlowMaster.in_flight -= 1

    master = SlowMaster(taken={"f3"})
    c = claimer(master)

    async def main():
        return await asyncio.gather(*(c.take(fid, tid, at) for fid, tid, at in items(200)))

    results = asyncio.run(main())
    assert results.count(True) == 199 and results[3] is False
    assert SlowMaster.peak == 1 and len(master.calls) <= 2, len(master.calls)
    assert c.wanted == {}


def test_waiting_firings_make_no_extra_calls_while_others_report():
    """Firings keep finishing under load, so there is always something to report; a firing
    answered by the call it waited for must not make another call just for that."""

    class SlowMaster(FakeMaster):
        async def request(self, method, path, json=None, headers=None):
            await asyncio.sleep(0.1)
            c.fired(f"done{len(self.calls)}", True)  # other firings finish meanwhile
            return await super().request(method, path, json, headers)

    master = SlowMaster()
    c = claimer(master)

    async def main():
        return await asyncio.gather(*(c.take(fid, tid, at) for fid, tid, at in items(100)))

    assert all(asyncio.run(main()))
    assert len(master.calls) <= 2, len(master.calls)


def fire_at_offsets(receiver, path: str, offsets: list[float], claim_delay: float, run_delay: float):
    """Firings of one task due at `offsets` (s) through a real FiringLoop: claims answered by a
    stand-in master after `claim_delay`, each request answered by a real receiver after
    `run_delay`. Returns (fired, skipped, arrivals)."""
    from schedulemaster.node.firing import Entry, FiringLoop
    from schedulemaster.timeutil import utcnow
    from schedulemaster.flows.http_task import new_session

    class SlowClaims(FakeMaster):
        async def request(self, method, path, json=None, headers=None):
            if path.endswith("/claims"):
                await asyncio.sleep(claim_delay)
            return await super().request(method, path, json, headers)

    receiver.on(path, 200, "success", delay=run_delay)
    before = len(receiver.at(path))

    async def main():
        loop = FiringLoop(SlowClaims(), "worker1", "pool", 10)
        loop.http = new_session(20)
        entry = Entry(uuid.uuid4(), spec_of({"Id": "turns", "Title": "turns", "MetaType": 2,
                                             "Http": {"RequestUrl": receiver.url(path), "Method": "GET"}}), 1, 1)
        t0, started = utcnow(), []
        for off in offsets:
            at = t0 + timedelta(seconds=off)
            await asyncio.sleep(max(0.0, (at - utcnow()).total_seconds()))
            started.append(asyncio.create_task(loop.fire(entry, at)))
        await asyncio.gather(*started)
        await loop.http.close()
        return loop.fired, loop.skipped

    fired, skipped = asyncio.run(main())
    return fired, skipped, len(receiver.at(path)) - before


def test_firings_released_together_by_a_slow_claim_all_run_in_turn(receiver):
    """The soak lost 3 firings: a 5 s claim answer released three firings of a task at once,
    the first ran, the second waited, the third was skipped as if the task were too slow.
    Nothing ran when they came due, so all of them run, one after the other."""
    # the first claim call carries f0 only; f1-f3 come due meanwhile and share the next call
    fired, skipped, arrivals = fire_at_offsets(receiver, "/turns/burst", [0, 0.1, 0.2, 0.3],
                                               claim_delay=0.8, run_delay=0.2)
    assert (fired, skipped, arrivals) == (4, 0, 4)


def test_a_run_longer_than_the_period_still_lets_one_firing_wait_and_skips_the_rest(receiver):
    """A blocked Quartz trigger does not pile up: while a run that began before an instant is
    still going and a firing already waits, that instant is skipped."""
    fired, skipped, arrivals = fire_at_offsets(receiver, "/turns/slow", [0, 0.3, 0.6],
                                               claim_delay=0, run_delay=1.0)
    assert (fired, skipped, arrivals) == (2, 1, 2)


def catching_up_loop(latest: dict, fired_now: list):
    """A real FiringLoop whose master answers /claims/latest with ``latest`` (task id -> ISO
    instant) and whose late firings are collected in ``fired_now`` instead of run."""
    from schedulemaster.node.firing import FiringLoop

    class LatestMaster(FakeMaster):
        async def request(self, method, path, json=None, headers=None):
            if path.endswith("/claims/latest"):
                class Resp:
                    content = jsonlib.dumps(latest).encode()
                return Resp()
            return await super().request(method, path, json, headers)

    loop = FiringLoop(LatestMaster(), "worker1", "pool", 10)

    async def fire_in_turn(entry, instants, why, claimed=True):
        fired_now.extend(instants)
    loop._fire_in_turn = fire_in_turn
    return loop


@pytest.mark.parametrize("behind", ["taken over", "timer stalled"])
@pytest.mark.parametrize("misfire, fired, missed", [("skip", 10, "10000+"), ("once", 11, "10000+"),
                                                     ("all", 100, "10000+")])
def test_a_day_long_gap_is_counted_and_its_newest_instants_still_fire(misfire, fired, missed, behind):
    """A node back after a day (or whose timer stalled for a day): a one-second task's last
    10 s (its threshold) fire late, the gap is one Missed record; ``once`` adds the newest
    missed instant, ``all`` the newest 100. Both ways of falling behind plan alike."""
    from schedulemaster.node.firing import Entry

    now = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=0.5)
    tid = uuid.uuid4()

    spec = spec_of({"Id": str(tid), "Title": "every second", "MetaType": 2, "RunLoop": True,
                    "CronExpression": "* * * * * ?", "Http": {"RequestUrl": "http://127.0.0.1:9/x"},
                    "Policy": {"MisfirePolicy": misfire, "MisfireThresholdSeconds": 10}})
    fired_now: list[datetime] = []

    async def main():
        loop = catching_up_loop({str(tid): (now - timedelta(days=1)).isoformat()}, fired_now)
        entry = Entry(tid, spec, (now - timedelta(days=2), 1), 1)
        if behind == "taken over":
            await loop.catch_up([entry], now)
        else:  # the timer pops the first instant after the last claim, a day late
            loop._timer_behind(entry, (now - timedelta(days=1)).replace(microsecond=0) + timedelta(seconds=1), now)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        return loop.recorder.pending

    pending = asyncio.run(main())
    assert len(fired_now) == fired and fired_now == sorted(fired_now)
    assert fired_now[-1] == now.replace(microsecond=0) and now - fired_now[-1] < timedelta(seconds=1)
    if misfire == "once":
        assert fired_now[0] == now.replace(microsecond=0) - timedelta(seconds=10)  # the newest missed one
    [record] = [r for r in pending if r.not_run == "Missed"]
    assert record.message.startswith(f"missed {missed} firing(s)") and record.missed == 10_000


@pytest.mark.parametrize("cron, kept", [("10 * * * * ?", True), ("20 * * * * ?", False)])
def test_a_change_synced_after_an_instant_fell_due_keeps_that_instant(cron, kept):
    """A Running task's record changed (an edit) while the node's timer had not yet reached
    an instant already due (a busy event loop): the new entry started after "now", so that
    instant was dropped without a word. It stays due when the changed task still fires then."""
    from schedulemaster.deployments import tasks as dep
    from schedulemaster.node.firing import Entry, FiringLoop

    tid = uuid.uuid4()
    due = datetime.now(timezone.utc).replace(second=10, microsecond=0) - timedelta(minutes=1)
    now = due + timedelta(milliseconds=80)

    def record(expression: str, updated: datetime) -> dep.TaskRecord:
        spec = spec_of({"Id": str(tid), "Title": "edited at its instant", "MetaType": 2, "RunLoop": True,
                        "CronExpression": expression, "Http": {"RequestUrl": "http://127.0.0.1:9/x"}})
        return dep.TaskRecord(tid, str(tid), spec, dep.Status.Running, due - timedelta(hours=1), updated)

    async def main():
        loop = FiringLoop(FakeMaster(), "worker1", "pool", 10)
        old = record("10 * * * * ?", due - timedelta(hours=1))
        loop.book[tid] = Entry(tid, old.spec, (old.updated, old.status), 1, due)  # due, not yet popped
        assert await loop._apply(record(cron, due + timedelta(milliseconds=50)), now)
        return loop.book[tid].next_at, [at for at, _, t, gen in loop.heap if t == tid and gen == loop.book[tid].gen]

    next_at, queued = asyncio.run(main())
    expected = due if kept else due + timedelta(seconds=10)
    assert (next_at, queued) == (expected, [expected])


def test_a_store_from_before_the_outcome_index_gets_it_at_start(claims_engine):
    """The failover service looks for the few fired-not-recorded claims every 5 s among the
    last 10 minutes' (100,000 at 10,000 tasks): ``outcome`` is indexed, and a store an
    older version made gets the index at the next start, once."""
    from sqlalchemy import inspect, text

    from schedulemaster.store.db import add_missing_indexes

    name = "ix_sm_firing_claims_outcome"
    with claims_engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {name}"))  # as an older version made the table
    with claims_engine.begin() as conn:
        assert name not in {i["name"] for i in inspect(conn).get_indexes("sm_firing_claims")}
        assert name in add_missing_indexes(conn)
    with claims_engine.begin() as conn:
        assert name in {i["name"] for i in inspect(conn).get_indexes("sm_firing_claims")}
        assert add_missing_indexes(conn) == []
    t0 = datetime.now(timezone.utc)
    claims.claim(claims_engine, "worker1", "inc-1", [("f1", str(uuid.uuid4()), t0)])
    claims.fired(claims_engine, "worker1", "inc-1", [("f1", True)])
    assert claims.unrecorded_holders(claims_engine) == [("worker1", "inc-1")]


@pytest.mark.parametrize("held_here", [True, False])
def test_a_task_resumed_after_its_claimed_instant_still_fires_it(held_here):
    """Seen in the 10,000-task benchmark: a task paused a second before its instant and resumed
    just before it, while this node had already claimed the instant ahead. The node saw the
    Resume only after the instant: the task came back as new, its catch-up took the claimed
    instant for one already fired, and nothing fired it. Held here unfired, it fires now; an
    instant claimed and fired elsewhere does not."""
    from schedulemaster.node.firing import Entry, firing_id

    now = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=0.5)
    at = now - timedelta(seconds=1.5)  # a whole second
    tid = uuid.uuid4()

    spec = spec_of({"Id": str(tid), "Title": "paused and resumed", "MetaType": 2, "RunLoop": True,
                    "CronExpression": f"{at.second} * * * * ?", "TimeZone": "UTC",
                    "StartedAt": (now - timedelta(hours=1)).isoformat(), "ResumedAt": (at - timedelta(seconds=1)).isoformat(),
                    "Http": {"RequestUrl": "http://127.0.0.1:9/x"}})
    fired_now: list[datetime] = []

    async def main():
        loop = catching_up_loop({str(tid): at.isoformat()}, fired_now)
        if held_here:
            loop.claimer.won[firing_id(tid, at)] = at
        await loop.catch_up([Entry(tid, spec, (now - timedelta(hours=2), 1), 1)], now)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert fired_now == ([at] if held_here else [])
