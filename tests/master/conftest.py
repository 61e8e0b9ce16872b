"""The cluster the failover tests run on: `up` in distributed mode (Prefect and the store on
this machine's PostgreSQL) with worker1, plus worker2 and worker3 in their own processes.
Module-scoped: each test file gets its own, so the files can run side by side."""

from __future__ import annotations

import uuid

import pytest

from helpers import FAST_REFRESH, PG, System, drop_databases, require_postgres


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_postgres()
    db = f"sm_fo_{uuid.uuid4().hex[:8]}"
    s = System(tmp_path_factory.mktemp("sm-fo"), env={**FAST_REFRESH, "SM_DATABASE_URL": f"{PG}/{db}"}).start()
    s.store_url = f"{PG}/{db}"
    s.nodes = {n: s.start_node(n) for n in ("worker2", "worker3")}
    try:
        for n in s.nodes:
            s.wait_node(n, timeout=120)
        yield s
    finally:
        for p in s.nodes.values():  # side by side: each stop waits for its node's records
            if p.poll() is None:
                p.terminate()
        for p in s.nodes.values():
            s.stop_node(p)
        s.stop()
        drop_databases(db, f"{db}_prefect")
