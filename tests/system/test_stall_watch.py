"""The stall watcher names who holds a process up: a blocked loop, a long write transaction."""

import asyncio
import logging
import time

import pytest
from sqlalchemy import create_engine, text

from schedulemaster.stall_watch import StallWatch


async def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the watcher said nothing"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(30)
def test_a_blocked_loop_is_reported_with_where_it_is_stuck(caplog):
    caplog.set_level(logging.WARNING, "schedulemaster.stall")

    def blocking_call_in_the_loop():
        time.sleep(2.5)

    async def main():
        watch = StallWatch(loop_seconds=1.0)
        watch.watch(asyncio.get_running_loop())
        try:
            await asyncio.sleep(1.2)  # the watcher's first beat
            blocking_call_in_the_loop()
            await _wait_for(lambda: "turned again" in caplog.text)
        finally:
            watch.stop()
        return watch

    watch = asyncio.run(main())
    assert watch.stalls == 1
    assert "event loop blocked" in caplog.text and "blocking_call_in_the_loop" in caplog.text


@pytest.mark.timeout(30)
def test_a_write_transaction_held_open_names_its_task(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "schedulemaster.stall")
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))

    async def holds_the_lock_while_waiting():
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            await asyncio.sleep(2.5)  # e.g. waiting on a second connection that waits on this one

    autocommit = create_engine(f"sqlite:///{tmp_path / 'x.db'}", isolation_level="AUTOCOMMIT")

    async def writes_in_autocommit():  # as Prefect's sessions outside a transaction: no lock kept
        with autocommit.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            await asyncio.sleep(2.5)

    async def reads_only():
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM t"))
            await asyncio.sleep(2.5)

    async def main():
        watch = StallWatch(transaction_seconds=1.0)
        watch.watch(asyncio.get_running_loop())
        try:
            await asyncio.gather(holds_the_lock_while_waiting(), reads_only())
            await writes_in_autocommit()
            await _wait_for(lambda: "ended after" in caplog.text)
        finally:
            watch.stop()
        return watch

    watch = asyncio.run(main())
    assert watch.stalls == 1  # neither the reader nor the autocommit writer is reported
    assert "INSERT INTO t" in caplog.text and "holds_the_lock_while_waiting" in caplog.text
    engine.dispose()
    autocommit.dispose()


class Crowd:
    """Objects the collector tracks, made in numbers a census must put first."""


@pytest.mark.timeout(30)
def test_a_long_collection_brings_a_census_of_what_the_collector_scans(monkeypatch, caplog):
    from schedulemaster import stall_watch

    caplog.set_level(logging.WARNING, "schedulemaster.stall")
    crowd = [Crowd() for _ in range(300_000)]
    census = stall_watch.heap_census(top=3)
    assert f"test_stall_watch.Crowd {len(crowd):,}" in census and "objects the collector scans" in census

    monkeypatch.setattr(stall_watch, "CENSUS", True)
    monkeypatch.setattr(stall_watch, "_census_last", [])

    async def main():
        watch = StallWatch()
        watch.watch(asyncio.get_running_loop())
        try:
            stall_watch._gc_timer("start", {})
            stall_watch._gc_started[:] = [time.perf_counter() - 1.0]  # as if the pass took a second
            stall_watch._gc_timer("stop", {"generation": 2, "collected": 0})
            await _wait_for(lambda: "after a long garbage collection" in caplog.text)
            stall_watch._gc_timer("start", {})
            stall_watch._gc_started[:] = [time.perf_counter() - 1.0]
            stall_watch._gc_timer("stop", {"generation": 2, "collected": 0})  # within CENSUS_SECONDS: none
            await asyncio.sleep(1.5)
        finally:
            watch.stop()

    asyncio.run(main())
    assert caplog.text.count("after a long garbage collection") == 1
    assert caplog.text.count("garbage collection of generation 2 took") == 2


def test_the_startup_heap_is_kept_out_of_full_collections():
    import subprocess
    import sys

    # in a process of its own: a frozen heap is the whole process's
    code = ("import gc, json, schedulemaster.stall_watch as w\n"
            "before = gc.get_freeze_count(); w.freeze_startup_heap(); after = gc.get_freeze_count()\n"
            "census = w.heap_census(top=1)\n"
            "print(json.dumps([before, after, int(census.split(' ')[0].replace(',', ''))]))\n")
    before, after, scanned = __import__("json").loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert before == 0 and after > 10_000 and scanned < after / 10, (before, after, scanned)
