"""Fixtures every test directory shares: the session's live system and HTTP receiver."""

import pytest

from helpers import FAST_REFRESH, Receiver, System

#: fixtures that start a live system or need a live database: a test using any of them is e2e
LIVE_FIXTURES = {"system", "cluster", "target", "pg_target", "source", "pg_source"}


#: the longest files, in the order xdist starts them (``--dist loadfile --no-loadscope-reorder``):
#: each of the four workers gets two files at first, the 1st with the 5th, the 2nd with the 6th, ...,
#: so a long one is paired with a shorter one; the rest go to whichever worker is free
LONG_FILES = ("master/test_failover.py", "master/test_failover_chaos.py", "dispatcher/test_e2e_delayed.py",
              "ms_compat/test_legacy_import.py", "system/test_up.py", "dispatcher/test_delayed_postgres.py",
              "notebook/test_notebooks.py", "notebook/test_python_api.py")


def pytest_collection_modifyitems(items):
    """Mark e2e every test whose fixtures start live parts, so `-m "not e2e"` is the fast
    subset whatever a file remembered to mark (files that start systems inline mark themselves);
    then put the long files first (a stable sort: within a file, the order stays)."""
    for item in items:
        if LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)

    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONG_FILES) if path.endswith("/tests/" + name)), len(LONG_FILES))

    items.sort(key=rank)


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    s = System(tmp_path_factory.mktemp("sm-data"), env=FAST_REFRESH).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()
