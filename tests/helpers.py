"""Real parts for the tests: the whole system started as a user would, and an HTTP receiver."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import httpx

ADMIN_SECRET = "811a5cb95196217ed3fda54cf73b9244"
AUTH = {"ms_auth_user": "admin", "ms_auth_secret": ADMIN_SECRET}


PG = "postgresql://postgres@127.0.0.1:5432"  # this machine's PostgreSQL (distributed mode)


def require_postgres() -> None:
    """Fail, not skip, when PostgreSQL is down: CI starts it, so its absence is a broken run."""
    import psycopg
    import pytest

    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except Exception:
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres); CI starts it")


def drop_databases(*names: str) -> None:
    """Drop test or benchmark databases, whoever is still connected."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: the start of a script for run_on_prefect_db: Prefect's server modules on the database URL of
#: argv[1], ``new_db()`` (its schema made, the work pool the tasks need) and what task specs need
PREFECT_DB_SCRIPT = r'''
import asyncio, os, sys, tempfile, uuid
from datetime import datetime, timedelta, timezone
os.environ["PREFECT_HOME"] = tempfile.mkdtemp()
os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = sys.argv[1]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
from schedulemaster import prefect_patches
prefect_patches.apply()
import sqlalchemy as sa
from prefect.server import models, schemas
from prefect.server.database import provide_database_interface
from prefect.utilities.callables import parameter_schema
from schedulemaster.deployments.spec import spec_of
from schedulemaster.deployments.tasks import Status, TaskRepository
from schedulemaster.flows.task_flow import run_task


async def new_db():
    db = provide_database_interface()
    await db.create_db()
    async with db.session_context(begin_transaction=True) as s:
        await models.workers.create_work_pool(session=s, work_pool=schemas.actions.WorkPoolCreate(
            name="schedulemaster", type="schedulemaster-node"))
    return db


def http_spec(title, cron="0 * * * * ?", **fields):
    return spec_of({"Id": str(uuid.uuid4()), "Title": title, "MetaType": 2, "RunLoop": True,
                    "CronExpression": cron, "TimeZone": "UTC",
                    "Http": {"RequestUrl": "http://127.0.0.1:9/x", "Method": "POST"}, **fields})


TASK_SCHEMA = parameter_schema(run_task).model_dump_for_openapi()
'''


def run_on_prefect_db(script: str, dialect: str, tmp_path, prefix: str) -> None:
    """Run ``script`` (it reads the database URL from argv[1] and prints "ok" last) in a fresh
    process against a new Prefect database: SQLite under ``tmp_path``, or a PostgreSQL database
    ``<prefix>_<random>`` on this machine, dropped afterwards."""
    import uuid

    def run(url: str) -> None:
        r = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=240)
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]

    if dialect == "sqlite":
        return run(f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}")
    require_postgres()
    from schedulemaster.store.db import ensure_database

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    ensure_database(f"{PG.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}")
    try:
        run(f"{PG.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}")
    finally:
        drop_databases(name)


def bench_credential() -> str:
    """Benchmarks start their systems with a Prefect credential they chose, and use it for
    their own clients and for the plain-Prefect workers they run against the same server.
    Call before anything imports prefect."""
    import secrets

    value = os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or "bench:" + secrets.token_urlsafe(24)
    os.environ["PREFECT_SERVER_API_AUTH_STRING"] = os.environ["PREFECT_API_AUTH_STRING"] = value
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def dotnet_form(pairs: list[tuple[str, str]]) -> bytes:
    """Exactly what .NET's FormUrlEncodedContent sends (Uri.EscapeDataString, %20 -> +)."""
    return "&".join(f"{quote(k, safe='-._~').replace('%20', '+')}={quote(v, safe='-._~').replace('%20', '+')}"
                    for k, v in pairs).encode("ascii")


# test plugin modules, on the path of the system's processes ("installed on the nodes")
PLUGINS_DIR = Path(__file__).parent / "plugins"
#: what the tests' systems refresh faster than production does, so tests wait less: the delayed
#: report every 5 s (not every minute), the nodes' view of the live and disabled nodes every second
#: (not every 5 s), and a stalled request body cut after 3 s (not 15)
FAST_REFRESH = {"SM_DELAYED_REPORT_SECONDS": "5", "SM_NODES_REFRESH_SECONDS": "1", "SM_BODY_IDLE_SECONDS": "3",
                "SM_UNSCHEDULABLE_GRACE_SECONDS": "2"}


@dataclass
class System:
    """`schedulemaster up` in a subprocess, on free ports and a temporary data dir."""

    data_dir: Path
    api_port: int = field(default_factory=free_port)
    prefect_port: int = field(default_factory=free_port)
    timezone: str = "Asia/Shanghai"
    up_args: list[str] = field(default_factory=list)  # extra `up` options, e.g. ["--maxc", "50"]
    env: dict[str, str] = field(default_factory=dict)  # extra environment, e.g. SM_STORE_URL
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def prefect(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def start(self, timeout: float = 240) -> "System":
        cmd = [sys.executable, "-m", "schedulemaster.cli", "up", "--data-dir", str(self.data_dir),
               "--api-port", str(self.api_port), "--prefect-port", str(self.prefect_port),
               "--timezone", self.timezone, *self.up_args]
        self.output = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
                                         p for p in (str(PLUGINS_DIR), os.environ.get("PYTHONPATH")) if p)})
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("ScheduleMaster is up" in line for line in self.output):
                try:
                    self.wait_node()
                except BaseException:  # a fixture that fails here gets no teardown: stop it now
                    self.stop()
                    raise
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("up exited early:\n" + "".join(self.output))
            time.sleep(0.2)
        logs = self.logs()
        self.stop(signal.SIGKILL)  # its children get SIGTERM (PR_SET_PDEATHSIG): none outlives the test
        raise RuntimeError("up did not become ready:\n" + "".join(self.output) + logs)

    def _drain(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_node(self, name: str = "worker1", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.pf("POST", "/work_pools/schedulemaster/workers/filter", json={}, timeout=10)
            if r.status_code == 200 and any(w["name"] == name and w["status"] == "ONLINE" for w in r.json()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {name} never came online\n{self.logs()}")

    @property
    def auth_string(self) -> str:
        """The credential Prefect's API needs: the one the test gave, else the one `up`
        generated and keeps in the data directory."""
        value = self.env.get("PREFECT_SERVER_API_AUTH_STRING") or os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
        if value:
            return value
        return (self.data_dir / "prefect-auth").read_text().strip()

    @property
    def prefect_auth(self) -> tuple[str, str]:
        """Basic auth for Prefect's API (httpx's ``auth=``)."""
        user, _, password = self.auth_string.partition(":")
        return user, password

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for a client process of this system (CLI, import, notebook, extra node)."""
        return {"PREFECT_API_AUTH_STRING": self.auth_string}

    def pf(self, method: str, path: str, **kw) -> httpx.Response:
        """A call to this system's Prefect API with its credential; ``path`` after ``/api``.
        A 503 (Prefect on SQLite while the database is busy) is retried, as Prefect's own
        client does."""
        kw.setdefault("timeout", 30)
        for attempt in range(10):
            r = httpx.request(method, f"{self.prefect}{path}", auth=self.prefect_auth, **kw)
            if r.status_code != 503:
                break
            time.sleep(min(0.5 * (attempt + 1), 3.0))
        return r

    def logs(self) -> str:
        out = []
        for p in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def child_pids(self) -> list[int]:
        assert self.proc
        r = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in r.stdout.split()]

    def start_node(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Another executor node (`schedulemaster node`) against this system's master, in its
        own process (``env``: more environment); its output goes to logs/extra-<name>.log."""
        env = {**os.environ, **self.env, **(env or {}), **self.client_env, "SM_PREFECT_PORT": str(self.prefect_port),
               "SM_TIMEZONE": self.timezone,
               "SM_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(PLUGINS_DIR), os.environ.get("PYTHONPATH")) if p)}
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "logs" / f"extra-{name}.log"
        with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "schedulemaster.cli", "node", "--name", name, *args],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)

    @staticmethod
    def stop_node(p: subprocess.Popen, timeout: float = 30) -> None:
        """End a node from ``start_node``: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()

    def forget_node(self, p: subprocess.Popen, name: str) -> None:
        """End a node from ``start_node`` and take it out of the pool at once: stopped, it still
        counts as live until its heartbeats are missed, and a later test on this shared system
        had its plugin Start sent to it (and waited 60 s for nothing)."""
        self.stop_node(p)
        r = self.pf("DELETE", f"/work_pools/schedulemaster/workers/{name}", timeout=30)
        assert r.status_code in (204, 404), r.text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # ---- legacy API calls --------------------------------------------------------
    def post(self, action: str, data=None, headers=None, **kw) -> httpx.Response:
        h = dict(AUTH) if headers is None else headers
        return httpx.post(f"{self.api}/api/Task/{action}", data=data, headers=h, timeout=90, **kw)

    def get(self, action: str, params=None, headers=None) -> httpx.Response:
        h = dict(AUTH) if headers is None else headers
        return httpx.get(f"{self.api}/api/Task/{action}", params=params, headers=h, timeout=30)

    def create_http(self, url: str, cron: str = "0/2 * * * * ?", **fields) -> str:
        data = {"Title": fields.pop("Title", "http task"), "MetaType": "2", "RunLoop": "true",
                "CronExpression": cron, "HttpRequestUrl": url, "HttpMethod": "POST",
                "HttpContentType": "application/json", "HttpBody": '{"k":"v"}', **fields}
        body = self.post("Create", data=data).json()
        assert body["Success"], body
        return body["Data"]

    def create_plugin(self, cls: str, cron: str = "0/2 * * * * ?", params: dict | None = None,
                      module: str = "sm_demo_plugins", **fields) -> str:
        custom = json.dumps([{"ParamKey": k, "ParamValue": str(v), "ParamRemark": ""}
                             for k, v in (params or {}).items()])
        data = {"Title": fields.pop("Title", cls), "MetaType": "1", "RunLoop": "true",
                "CronExpression": cron, "AssemblyName": module, "ClassName": cls,
                "CustomParamsJson": custom, **fields}
        body = self.post("Create", data=data).json()
        assert body["Success"], body
        return body["Data"]

    def detail(self, task_id: str) -> dict | None:
        return self.get("QueryTaskDetail", {"id": task_id}).json()["Data"]

    def flow_runs(self, task_id: str, limit: int = 200) -> list[dict]:
        """The task's runs, without its stand-in for the next fire time (master/upcoming.py)."""
        from schedulemaster.deployments.tasks import upcoming_run_id

        r = self.pf("POST", "/flow_runs/filter", timeout=30, json={
            "deployments": {"id": {"any_": [task_id]}}, "limit": limit, "sort": "EXPECTED_START_TIME_DESC",
            "flow_runs": {"id": {"not_any_": [str(upcoming_run_id(task_id))]}}})
        r.raise_for_status()
        return r.json()

    def run_logs(self, run_id: str) -> list[str]:
        r = self.pf("POST", "/logs/filter", timeout=30,
                       json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        r.raise_for_status()
        return [x["message"] for x in r.json()]


@dataclass
class Hit:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what arrives; answers are per path."""

    def __init__(self):
        self.hits: list[Hit] = []
        self.answers: dict[str, tuple[int, str, str | None, float]] = {}
        #: answers given in turn, the last one again and again (``script``)
        self.scripts: dict[str, list[tuple[int, str, str | None, float]]] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                path = self.path.split("?")[0]
                with outer.lock:
                    outer.hits.append(Hit(time.time(), self.command, self.path,
                                          {k.lower(): v for k, v in self.headers.items()}, body))
                    script = outer.scripts.get(path)
                    answer = script.pop(0) if script and len(script) > 1 else script[0] if script else None
                status, text, ctype, delay = answer or outer.answers.get(path, (200, "success", "text/plain", 0.0))
                if delay:
                    time.sleep(delay)
                data = text.encode()
                try:
                    self.send_response(status)
                    if ctype:
                        self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a burst of callbacks must not overflow the listen backlog

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, status: int = 200, text: str = "success", ctype: str | None = "text/plain",
           delay: float = 0.0) -> None:
        self.answers[path] = (status, text, ctype, delay)

    def script(self, path: str, *answers: tuple[int, str]) -> None:
        """Answer the requests to ``path`` with (status, text) in turn; the last one repeats."""
        self.scripts[path] = [(status, text, "text/plain", 0.0) for status, text in answers]

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path.split("?")[0] == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = self.at(path)
            if len(hits) >= count:
                return hits
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(self.at(path))} of {count} requests arrived in {timeout} s")

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Ran:
    """What a CLI call gave: its exit code and what it wrote."""
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Ran:
    """``schedulemaster *args`` in this process, through the CLI's own Typer app: the arguments
    parsed, the output and exit code as a user gets them, without a second of Python start-up
    and imports per call. Commands that start processes (up, master, node, dispatcher) run as
    subprocesses instead, with a timeout. An exception the CLI does not turn into an exit code
    fails the test with its traceback."""
    from typer.testing import CliRunner

    from schedulemaster.cli.main import app

    r = CliRunner().invoke(app, list(args), input=stdin, env=env, catch_exceptions=False)
    return Ran(r.exit_code, r.stdout, r.stderr)


def wait_until(fn, timeout: float = 30, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s (last: {json.dumps(last, default=str)[:300]})")


async def serve_aiohttp(app) -> tuple[str, object]:
    """Start an aiohttp app on a free 127.0.0.1 port; returns (base URL, runner to clean up)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", runner
