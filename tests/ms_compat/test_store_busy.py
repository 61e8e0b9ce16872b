"""A write refused because the store was busy answers in the legacy shape and says to retry
(ms_compat/task_api.py failed_write); any other failure keeps the original's message. The
errors are the real ones: SQLite's lock through SQLAlchemy, asyncpg's deadlock class."""

from __future__ import annotations

import json
import sqlite3

import asyncpg
import pytest
import sqlalchemy as sa

from schedulemaster.ms_compat.task_api import STORE_BUSY, failed_write, store_busy


def sqlite_locked(tmp_path) -> sa.exc.OperationalError:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sa.exc.OperationalError) as caught:
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    finally:
        engine.dispose()
        holder.close()
    return caught.value


def answer(response) -> dict:
    return json.loads(response.body)


def test_a_busy_store_says_nothing_was_written_and_to_retry(tmp_path):
    locked = sqlite_locked(tmp_path)
    assert "database is locked" in str(locked)
    deadlock = sa.exc.DBAPIError("UPDATE deployment ...", {}, asyncpg.exceptions.DeadlockDetectedError("deadlock"))
    for exc in (locked, deadlock, TimeoutError(), sa.exc.TimeoutError("QueuePool limit reached")):
        assert store_busy(exc), exc
        body = answer(failed_write("数据保存失败!", exc))
        assert body["Success"] is False and body["Message"] == f"数据保存失败! {STORE_BUSY}", body


def test_other_failures_keep_the_original_message(tmp_path):
    unique = sa.exc.IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed: flow.name"))
    for exc in (unique, ValueError("bad"), KeyError("x")):
        assert not store_busy(exc), exc
        assert answer(failed_write("任务编辑失败!", exc))["Message"] == "任务编辑失败!"
