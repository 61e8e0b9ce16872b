"""`up` says ready only when both APIs answer and its node has registered in this run."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schedulemaster.settings import Settings
from schedulemaster.supervisor import wait_ready


class Fake:
    """Both of the master's doors on 127.0.0.1: health checks, and the nodes list (auth)."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.auth_seen: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/api/health":
                    body = b"true"
                elif self.path == "/api/schedulemaster/nodes":
                    fake.auth_seen.append(self.headers.get("authorization"))
                    body = json.dumps(fake.nodes).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def settings(self) -> Settings:
        return Settings(prefect_port=self.servers[0].server_port, api_port=self.servers[1].server_port)

    def close(self):
        for s in self.servers:
            s.shutdown()


@pytest.fixture
def fake():
    f = Fake()
    yield f
    f.close()


def node(name: str, started: datetime) -> dict:
    return {"name": name, "priority": 1, "max_concurrency": 20, "started_at": started.isoformat()}


@pytest.mark.timeout(30)
def test_ready_waits_for_the_node_of_this_run(fake):
    since = datetime.now(timezone.utc)
    settings = fake.settings()
    assert wait_ready(settings, "worker1", "sm:secret", timeout=1.0, since=since) is False  # no node yet
    fake.nodes = [node("worker1", since - timedelta(hours=1)), node("other", since + timedelta(seconds=1))]
    assert wait_ready(settings, "worker1", "sm:secret", timeout=1.0, since=since) is False  # a previous run's
    fake.nodes.append(node("worker1", since + timedelta(seconds=1)))
    assert wait_ready(settings, "worker1", "sm:secret", timeout=5.0, since=since) is True
    assert fake.auth_seen[-1] and fake.auth_seen[-1].startswith("Basic ")  # Prefect's credential sent


@pytest.mark.timeout(30)
def test_ready_survives_a_malformed_nodes_answer(fake):
    fake.nodes = [{"name": "worker1"}]  # no started_at: not a node row
    assert wait_ready(fake.settings(), "worker1", "sm:secret", timeout=1.0) is False
