import pytest

from helpers import Receiver, System

#: fixtures that start a live system or need a live database: a test using any of them is e2e
LIVE_FIXTURES = {"system", "cluster", "target", "pg_target", "source", "pg_source"}


def pytest_collection_modifyitems(items):
    """Mark e2e every test whose fixtures start live parts, so `-m "not e2e"` is the fast
    subset whatever a file remembered to mark (files that start systems inline mark themselves)."""
    for item in items:
        if LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    # the delayed-task dispatcher reports to Prefect every 5 s instead of every minute
    s = System(tmp_path_factory.mktemp("sm-data"), env={"SM_DELAYED_REPORT_SECONDS": "5",
                                                        "SM_BODY_IDLE_SECONDS": "3"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()
