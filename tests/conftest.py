import pytest

from helpers import Receiver, System


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    s = System(tmp_path_factory.mktemp("sm-data")).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()
