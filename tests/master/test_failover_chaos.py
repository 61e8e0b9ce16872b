"""A bounded chaos run: seconds-level firings on three nodes while worker2 and worker3 are
killed -9 and restarted at random (the cluster of tests/master/conftest.py)."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from schedulemaster.node.firing import firing_id

from failover_cluster import every_second, handed_over, stop_all, unfinished_claims
from helpers import wait_until


@pytest.mark.e2e
def test_chaos_random_kills_lose_and_duplicate_nothing(cluster, receiver):
    """Seconds-level firings on three nodes while worker2 and worker3 are killed -9 and
    restarted at random: every (task, instant) arrives, and twice only when marked a re-run."""
    s = cluster
    rng = random.Random(6)
    ids = [every_second(s, receiver, f"/fo/chaos{i}", f"fo-chaos{i}") for i in range(6)]
    start = datetime.now(timezone.utc)
    kills = 0
    restarted: dict[str, datetime] = {}  # victim -> when its new process was started
    try:
        deadline = time.monotonic() + 70
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(8, 16))
            victim = rng.choice(["worker2", "worker3"])
            if s.nodes[victim].poll() is None:
                s.nodes[victim].send_signal(signal.SIGKILL)
                s.nodes[victim].wait()
                kills += 1
            time.sleep(rng.uniform(3, 8))
            restarted[victim] = datetime.now(timezone.utc)
            s.nodes[victim] = s.start_node(victim, "--wait-for-name", "60")
        # The last kill's firings are taken over while the tasks still run (a firing of a stopped
        # task is recorded failed, not re-run): its successor registers once the dead process
        # counts as offline, and the master then hands over what the dead one still held.
        wait_until(lambda: handed_over(s, restarted), timeout=120, interval=1)
    finally:
        end = datetime.now(timezone.utc)
        stop_all(s, ids)
    for n in ("worker2", "worker3"):
        s.wait_node(n, timeout=120)
    wait_until(lambda: unfinished_claims(s) == 0, timeout=120, interval=1)

    def tally() -> tuple[list, list, int]:
        lost, unmarked, arrivals = [], [], 0
        for i, t in enumerate(ids):
            keys = Counter(h.headers["idempotency-key"] for h in receiver.at(f"/fo/chaos{i}"))
            arrivals += sum(keys.values())
            first = start.replace(microsecond=0) + timedelta(seconds=3)
            expected = [firing_id(uuid.UUID(t), first + timedelta(seconds=k))
                        for k in range(int((end - first).total_seconds()) - 3)]
            lost += [(f"fo-chaos{i}", f"{first + timedelta(seconds=k):%H:%M:%S}")
                     for k, key in enumerate(expected) if key not in keys]
            reruns = {(r["parameters"].get("rerun") or {}).get("idempotency_key")
                      for r in s.flow_runs(t, 200) if "sm:rerun" in r["tags"]}
            unmarked += [k for k, n in keys.items() if n > 1 and k not in reruns]
        return lost, unmarked, arrivals

    def complete() -> tuple | None:
        result = tally()
        return None if result[0] else result

    # re-runs made just before the Stop still travel through Prefect's worker path
    try:
        lost, unmarked, arrivals = wait_until(complete, timeout=60, interval=2)
    except AssertionError:
        lost, unmarked, arrivals = tally()
    # printed, not asserted: runs of a dead node's firings left Scheduled, Pending or Running
    unfinished = [r["state_type"] for t in ids for r in s.flow_runs(t, 200) if "sm:rerun" in r["tags"]
                  and r["state_type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
    print(f"chaos: {kills} kills, {arrivals} arrivals, {len(lost)} lost, {len(unmarked)} unmarked duplicates, "
          f"re-runs not final: {Counter(unfinished)}")
    assert kills >= 3
    assert lost == [] and unmarked == []
