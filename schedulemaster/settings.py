"""Where things live and which ports they use, read from ``SM_*`` environment variables.

One object feeds every process of the system (`up`, `master`, `node`, `api`), so the
supervisor only has to pass environment variables to its children.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def local_timezone() -> str:
    """The machine's IANA zone name (the original evaluated cron in the worker's local time)."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz or tz == "UTC":
        return tz
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    try:
        return Path("/etc/timezone").read_text().strip() or "UTC"
    except OSError:
        return "UTC"


RUN_EVENTS = ("all", "failed")
SWITCH = ("on", "off")


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(".schedulemaster"))
    api_host: str = "0.0.0.0"
    api_port: int = 30000
    prefect_host: str = "127.0.0.1"
    prefect_port: int = 4200
    timezone: str = field(default_factory=local_timezone)
    work_pool: str = "schedulemaster"
    #: proxies whose X-Forwarded-For the legacy API believes (comma-separated addresses or
    #: networks; none by default)
    trusted_proxies: str = ""
    #: which recorded firings publish Prefect's ``prefect.flow-run.<State>`` event: ``all``
    #: (as Prefect does for every run) or ``failed``. An event costs about as much master CPU
    #: as the rest of the firing's recording (README: Benchmark, Recording firings in Prefect)
    run_events: str = "all"
    #: each Running task's next fire time as a Scheduled run in Prefect's UI (master/upcoming.py):
    #: ``on`` or ``off`` (a move per firing: README, Benchmark, Next fire times in Prefect's UI)
    ui_next_runs: str = "on"
    #: ``/metrics`` on the legacy port without credentials (for a scraper in a trusted network)
    metrics_open: bool = False

    @classmethod
    def from_env(cls) -> "Settings":
        e = os.environ
        s = cls()
        s.data_dir = Path(e.get("SM_DATA_DIR", str(s.data_dir)))
        s.api_host = e.get("SM_API_HOST", s.api_host)
        s.api_port = int(e.get("SM_API_PORT", s.api_port))
        s.prefect_host = e.get("SM_PREFECT_HOST", s.prefect_host)
        s.prefect_port = int(e.get("SM_PREFECT_PORT", s.prefect_port))
        s.timezone = e.get("SM_TIMEZONE", s.timezone)
        s.work_pool = e.get("SM_WORK_POOL", s.work_pool)
        s.trusted_proxies = e.get("SM_TRUSTED_PROXIES", s.trusted_proxies).strip()
        s.run_events = e.get("SM_RUN_EVENTS", s.run_events).strip().lower()
        if s.run_events not in RUN_EVENTS:
            raise ValueError(f"SM_RUN_EVENTS must be one of {', '.join(RUN_EVENTS)}, not {s.run_events[:40]!r}")
        s.ui_next_runs = e.get("SM_UI_NEXT_RUNS", s.ui_next_runs).strip().lower()
        if s.ui_next_runs not in SWITCH:
            raise ValueError(f"SM_UI_NEXT_RUNS must be one of {', '.join(SWITCH)}, not {s.ui_next_runs[:40]!r}")
        opened = e.get("SM_METRICS_OPEN", "false").strip().lower()
        if opened not in ("true", "false"):
            raise ValueError(f"SM_METRICS_OPEN must be true or false, not {opened[:40]!r}")
        s.metrics_open = opened == "true"
        return s

    def to_env(self) -> dict[str, str]:
        """The SM_* variables that reproduce these settings in a child process."""
        return {
            "SM_DATA_DIR": str(self.data_dir.resolve()),
            "SM_API_HOST": self.api_host,
            "SM_API_PORT": str(self.api_port),
            "SM_PREFECT_HOST": self.prefect_host,
            "SM_PREFECT_PORT": str(self.prefect_port),
            "SM_TIMEZONE": self.timezone,
            "SM_WORK_POOL": self.work_pool,
            "SM_TRUSTED_PROXIES": self.trusted_proxies,
            "SM_RUN_EVENTS": self.run_events,
            "SM_UI_NEXT_RUNS": self.ui_next_runs,
            "SM_METRICS_OPEN": "true" if self.metrics_open else "false",
        }

    @property
    def prefect_api_url(self) -> str:
        return os.environ.get("SM_PREFECT_API_URL") or f"http://{self.prefect_host}:{self.prefect_port}/api"

    @property
    def store_url(self) -> str:
        """The project's tables: SM_STORE_URL, else SM_DATABASE_URL, else a SQLite file."""
        return (os.environ.get("SM_STORE_URL") or os.environ.get("SM_DATABASE_URL")
                or f"sqlite:///{(self.data_dir / 'schedulemaster.db').resolve()}")

    @property
    def prefect_db_url(self) -> str | None:
        """Prefect's database when not the default SQLite file: SM_PREFECT_DB_URL, else, in
        distributed mode (one setting: ``SM_DATABASE_URL=postgresql://user@host:5432/sm``),
        the database ``<name>_prefect`` next to the store's (Prefect migrates its own tables
        there; the two schemas never meet)."""
        if os.environ.get("SM_PREFECT_DB_URL"):
            return os.environ["SM_PREFECT_DB_URL"]
        url = os.environ.get("SM_DATABASE_URL")
        if not url:
            return None
        from sqlalchemy.engine import make_url

        target = make_url(url)
        if not target.drivername.startswith("postgres"):
            raise ValueError(f"SM_DATABASE_URL must be a postgresql:// URL, not {target.drivername}://")
        return target.set(drivername="postgresql+asyncpg",
                          database=f"{target.database}_prefect").render_as_string(hide_password=False)

    def prefect_env(self) -> dict[str, str]:
        """Prefect settings for every process; set before `prefect` is imported."""
        home = (self.data_dir / "prefect").resolve()
        env = {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": self.prefect_host,
            "PREFECT_SERVER_API_PORT": str(self.prefect_port),
            "PREFECT_SERVER_UI_API_URL": f"http://{'127.0.0.1' if self.prefect_host in ('0.0.0.0', '') else self.prefect_host}:{self.prefect_port}/api",
            # Firings are recorded as task-free flow runs in bulk; raising the recorder and
            # persister batches keeps the server ahead (docs/prefect-facts.md).
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
            # Nodes: poll once a second, look 5 s ahead (docs/prefect-facts.md: Workers, polling and lateness).
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            # A dead node is OFFLINE 3 heartbeats after its last one, seen by the foreman's
            # next loop: within ~20 s (schedulemaster/master/failover.py; Prefect's defaults: ~90 s).
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "5",
            # Services that matter little here run less often than Prefect's 5 s (idle CPU):
            # runs marked Late (only worker-path runs: RunOnce, runs started in the UI), paused
            # flow runs expiring (none here), the worker channel's cleanup leases.
            "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "15",
            "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "30",
            "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "30",
            "PREFECT_CLIENT_MAX_RETRIES": "8",
            # Browsers may call Prefect's API only from the UI's own origins (Prefect's default: any).
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ",".join(self.ui_origins()),
        }
        if self.prefect_db_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.prefect_db_url
        elif "PREFECT_API_DATABASE_CONNECTION_URL" not in os.environ:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        return env

    def ui_origins(self) -> list[str]:
        """Where the Prefect UI is served from: the names this machine answers to, and the bound host."""
        hosts = ["127.0.0.1", "localhost"]
        if self.prefect_host not in ("0.0.0.0", "::", "", *hosts):
            hosts.append(f"[{self.prefect_host}]" if ":" in self.prefect_host else self.prefect_host)
        return [f"http://{h}:{self.prefect_port}" for h in hosts]

    def apply_prefect_env(self) -> None:
        """Export the Prefect settings into this process (call before importing prefect), with
        the credential for Prefect's API where one is known (schedulemaster/credentials.py)."""
        from schedulemaster.credentials import CLIENT_KEY, client_auth_string, secure_dir

        secure_dir(self.data_dir)
        secure_dir(self.data_dir / "prefect")
        for key, value in self.prefect_env().items():
            if key.startswith(("PREFECT_WORKER_", "PREFECT_SERVER_SERVICES_", "PREFECT_SERVER_CORS_")):
                os.environ.setdefault(key, value)  # knobs an operator may override
            else:
                os.environ[key] = value
        if not os.environ.get(CLIENT_KEY):
            found = client_auth_string(self.data_dir)
            if found:
                os.environ[CLIENT_KEY] = found
