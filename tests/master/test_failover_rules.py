"""The failover service's rules that need no live system (the live ones: test_failover.py,
test_failover_chaos.py)."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace as NS

from schedulemaster.deployments.tasks import INCARNATION_LABEL
from schedulemaster.master.failover import taken_before_restart

NOW = datetime(2026, 12, 7, 13, 11, 3, tzinfo=timezone.utc)


def run(taken: datetime, **labels) -> NS:
    return NS(labels={"prefect.worker.name": "worker3", **labels}, state=NS(timestamp=taken))


def test_a_run_taken_by_a_killed_process_before_it_labelled_it_is_orphaned():
    """Seen in the chaos test: worker3 took two re-runs (Pending), was killed before labelling
    them with its incarnation, and came back under the same name: they stayed Pending for ever."""
    node = NS(started_at=NOW)  # the process holding the name now
    assert taken_before_restart(run(NOW - timedelta(seconds=5)), node)
    assert not taken_before_restart(run(NOW + timedelta(seconds=1)), node)  # the new process took it
    # labelled: the incarnation decides (the service's other rule), not the times
    assert not taken_before_restart(run(NOW - timedelta(seconds=5), **{INCARNATION_LABEL: "x"}), node)
    assert not taken_before_restart(run(NOW - timedelta(seconds=5)), None)  # a node never registered
    assert not taken_before_restart(NS(labels={"prefect.worker.name": "worker3"}, state=None), node)
