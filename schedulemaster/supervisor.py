"""`schedulemaster up`: the whole system as one supervised group of child processes.

Children: the master (Prefect server + UI + legacy API), one executor node and the
delayed-task dispatcher. A child
that dies is restarted; Ctrl-C or SIGTERM stops them all; and each child gets SIGTERM
from the kernel if the supervisor itself is killed (PR_SET_PDEATHSIG), so none is orphaned.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from schedulemaster.coordination import wire
from schedulemaster.settings import Settings

PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # workers ignore TERM otherwise (docs/prefect-facts.md: Signals)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "schedulemaster.cli", *self.args],
                                     stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     preexec_fn=_child_setup)
        out.close()
        self.started_at = time.monotonic()


def wait_ready(settings: Settings, node: str | None = None, auth: str | None = None,
               timeout: float = 180.0, since: datetime | None = None) -> bool:
    """Both doors answer (Prefect's API and the legacy API's health check) and ``node`` has
    registered with the master, so a task started now fires (a system that said "up" while
    its node was still starting let the first firings pass with no node). ``since``: a
    registration older than this is a previous run's."""
    deadline = time.monotonic() + timeout
    urls = [f"http://127.0.0.1:{settings.prefect_port}/api/health",
            f"http://127.0.0.1:{settings.api_port}/api/health"]
    nodes_url = f"http://127.0.0.1:{settings.prefect_port}/api{wire.NODES_PATH}"
    basic = tuple(auth.split(":", 1)) if auth and ":" in auth else None
    # one client for every look: a new one builds a TLS context each time, a tenth of a
    # core here while the children start on the same cores
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if all(client.get(u, timeout=2).status_code == 200 for u in urls):
                    if node is None:
                        return True
                    r = client.get(nodes_url, auth=basic)
                    rows = [wire.NodeRow.model_validate(row) for row in r.json()] if r.status_code == 200 else []
                    if any(row.name == node and (since is None or row.started_at >= since) for row in rows):
                        return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
    return False


def default_password_in_use(settings: Settings) -> bool:
    """The seeded admin still has the original's default password (read from the store the
    master has just made ready, as the master's own warning reads it)."""
    from schedulemaster.store.db import Store

    store = Store(settings.store_url)
    try:
        return store.admin_has_default_password()
    except Exception:  # a store that cannot be read now: no warning rather than no `up`
        return False
    finally:
        store.engine.dispose()


RED, RESET = "\033[31;1m", "\033[0m"


def run_up(settings: Settings, node_name: str = "worker1", maxc: int = 20, echo=print) -> int:
    from schedulemaster.credentials import (CLIENT_KEY, SERVER_KEY, is_loopback, owner_only_umask, secure_tree,
                                            server_auth_string)

    owner_only_umask()
    secure_tree(settings.data_dir)
    auth, _created = server_auth_string(settings.data_dir, settings.prefect_host)
    # the children's environment is readable by this user only (/proc/<pid>/environ is 0400)
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", SERVER_KEY: auth, CLIENT_KEY: auth}
    logs = settings.data_dir.resolve() / "logs"
    children = [
        Child("master", ["master"], logs / "master.log", env=env),
        # a node restarted after a crash waits until its dead predecessor counts as offline
        Child(node_name, ["node", "--name", node_name, "--priority", "1", "--maxc", str(maxc),
                          "--wait-for-name", "60"],
              logs / f"node-{node_name}.log", env=env),
        Child("dispatcher", ["dispatcher"], logs / "dispatcher.log", env=env),
    ]
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0, started = time.monotonic(), datetime.now(timezone.utc)
    for c in children:
        c.start()
    if wait_ready(settings, node_name, auth, since=started):
        host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "") else settings.api_host
        echo(f"ScheduleMaster is up in {time.monotonic() - t0:.1f} s  (data: {settings.data_dir.resolve()})")
        echo(f"  Prefect UI     http://127.0.0.1:{settings.prefect_port}/")
        echo(f"  console        http://{host}:{settings.api_port}/   (sign in with a legacy account)")
        echo(f"  legacy API     http://{host}:{settings.api_port}/api/Task/QueryList?pageNumber=1&pageSize=10")
        echo("  default login  admin / 111111   (ms_auth_user: admin, ms_auth_secret: 811a5cb95196217ed3fda54cf73b9244)")
        echo(f"  executor node  {node_name}   time zone {settings.timezone}")
        if os.environ.get(SERVER_KEY):
            echo(f"  Prefect login  the auth string in {SERVER_KEY} (the UI asks for it at sign-in)")
        else:
            where = (settings.data_dir / "prefect-auth").resolve()
            echo(f"  Prefect login  the auth string in {where} (owner-only; the UI asks for it at sign-in;")
            echo(f"                 a node, the CLI or a notebook on another machine: export {CLIENT_KEY}=<it>)")
        echo("  delayed tasks  dispatcher   (POST /api/DelayTask/Create)")
        api = f"http://127.0.0.1:{settings.api_port}"
        echo(f"  Python         import schedulemaster as sm; sm.connect({api!r})   (notebooks/: examples)")
        echo(f"  logs           {logs}/")
        echo("Ctrl-C stops everything.")
        if not is_loopback(settings.api_host) and default_password_in_use(settings):
            red, reset = (RED, RESET) if sys.stdout.isatty() else ("", "")
            echo(f"{red}WARNING: the legacy API listens on {settings.api_host}:{settings.api_port} and account admin "
                 f"still has the default password 111111: anyone who reaches this machine can sign in. Change it: "
                 f".venv/bin/schedulemaster account change-password.{reset}")
    elif not stopping:
        echo(f"the system did not become ready; see {logs}/master.log")
    try:
        while not stopping:
            for c in children:
                if c.proc is not None and c.proc.poll() is not None and not stopping:
                    code = c.proc.returncode
                    backoff = min(30.0, 2 ** min(c.restarts, 5))
                    echo(f"{c.name} exited with code {code}; restarting in {backoff:.0f} s (log: {c.log_path})")
                    time.sleep(backoff)
                    c.restarts += 1
                    if not stopping:
                        c.start()
            time.sleep(0.2)
    finally:
        echo("stopping...")
        # The node and the dispatcher first (side by side), so the node's firings in flight
        # are recorded while the master still listens; then the master.
        master, *clients = children
        _stop(clients)
        _stop([master])
    return 0


def _stop(group: list[Child], grace: float = 20.0) -> None:
    """SIGTERM to every process of ``group`` at once, then wait for each; SIGKILL for a
    process still there ``grace`` seconds later."""
    running = [c.proc for c in group if c.proc is not None and c.proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
