"""The master and the dispatcher create the store's tables at the same moment: on SQLite that
raced ("table ... already exists") and the master exited, so `up` never came up."""

from __future__ import annotations

import threading

from schedulemaster.store.db import Store


def test_concurrent_inits_of_a_sqlite_store_all_succeed(tmp_path):
    errors: list[str] = []

    def init() -> None:
        try:
            Store(f"sqlite:///{tmp_path / 'store.db'}").init()
        except Exception as exc:
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=init) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    assert store.user_by_name("admin") is not None  # seeded once, not six times
