"""`schedulemaster up` as a user runs it: ready, stops cleanly, and Running tasks resume."""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import System

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_restart_resumes_running_tasks_and_sigterm_leaves_no_orphans(tmp_path, receiver):
    s = System(tmp_path / "data").start()
    try:
        out = "".join(s.output)
        assert "admin / 111111" in out and f":{s.api_port}" in out and f":{s.prefect_port}/" in out
        tid = s.create_http(receiver.url("/resume"), cron="* * * * * ?", Title="resumes", RunNow="true")
        receiver.wait_for("/resume", 2)
        children = s.child_pids()
        assert len(children) == 2
    finally:
        code = s.stop(signal.SIGTERM)
    assert code == 0
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in children), "a child outlived `up`"
    time.sleep(2)
    stopped = len(receiver.at("/resume"))
    time.sleep(2)
    assert len(receiver.at("/resume")) == stopped  # nothing fires while everything is down

    s.start()  # same data dir
    try:
        receiver.wait_for("/resume", stopped + 2, timeout=60)
        assert s.detail(tid)["Status"] == 1
        children = s.child_pids()
        assert len(children) == 2
    finally:
        s.stop(signal.SIGINT)  # Ctrl-C
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in children)
