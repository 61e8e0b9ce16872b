import pytest

from helpers import Receiver, System


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    # the delayed-task dispatcher reports to Prefect every 5 s instead of every minute
    s = System(tmp_path_factory.mktemp("sm-data"), env={"SM_DELAYED_REPORT_SECONDS": "5"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()
