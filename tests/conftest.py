"""Fixtures every test directory shares: the session's live system and HTTP receiver."""

import pytest

from helpers import FAST_REFRESH, Receiver, System

#: fixtures that start a live system or need a live database: a test using any of them is e2e
LIVE_FIXTURES = {"system", "cluster", "target", "pg_target", "source", "pg_source"}


#: files that take minutes, longest first: xdist (``--dist loadfile``) hands out files in
#: collection order, and one of these started last would hold the whole run up
LONG_FILES = ("master/test_failover_chaos.py", "master/test_failover.py", "ms_compat/test_legacy_import.py",
              "system/test_up.py", "dispatcher/test_e2e_delayed.py", "dispatcher/test_delayed_postgres.py",
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
