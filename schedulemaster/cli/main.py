"""The `schedulemaster` command: up, master, node, cron, and the admin groups (plugin, account, config, delayed)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from schedulemaster.settings import Settings, local_timezone

app = typer.Typer(help="ScheduleMaster on Prefect: a distributed task scheduler.",
                  no_args_is_help=True, add_completion=False)

DataDir = typer.Option(None, "--data-dir", help="SQLite files, logs and plugins [default: ./.schedulemaster]")
ApiPort = typer.Option(None, "--api-port", help="legacy API port [default: 30000]")
PrefectPort = typer.Option(None, "--prefect-port", help="Prefect server and UI port [default: 4200]")
TimeZone = typer.Option(None, "--timezone", help="zone cron is evaluated in [default: this machine's]")


def _settings(data_dir: Optional[Path], api_port: Optional[int], prefect_port: Optional[int],
              tz: Optional[str]) -> Settings:
    try:
        s = Settings.from_env()
    except ValueError as exc:  # an SM_* variable that cannot be right
        raise typer.BadParameter(str(exc)) from None
    if data_dir is not None:
        s.data_dir = data_dir
    if api_port is not None:
        s.api_port = api_port
    if prefect_port is not None:
        s.prefect_port = prefect_port
    if tz is not None:
        s.timezone = tz
    _check_zone(s.timezone)
    for port in (s.api_port, s.prefect_port):
        if not 1 <= port <= 65535:
            raise typer.BadParameter(f"port {port} is not in 1-65535")
    if s.api_port == s.prefect_port:
        raise typer.BadParameter("--api-port and --prefect-port must differ")
    _check_auth_strings()
    return s


def _check_auth_strings() -> None:
    """Prefect 3.8.8 compares the auth string with ``secrets.compare_digest`` on str, which raises
    TypeError for non-ASCII text: the server then answers every request with a 500 (seen
    here). Refuse it before anything starts."""
    import os

    for key in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"):
        value = os.environ.get(key)
        if value is not None and not value.isascii():
            raise typer.BadParameter(f"{key} must be ASCII: Prefect's server cannot compare other characters "
                                     "(it would answer every request with a 500)")


def _check_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone '{name}' (use an IANA name such as Asia/Shanghai)")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def up(data_dir: Optional[Path] = DataDir, api_port: Optional[int] = ApiPort,
       prefect_port: Optional[int] = PrefectPort, timezone_: Optional[str] = TimeZone,
       maxc: int = typer.Option(20, "--maxc", min=1, max=1000, help="node worker1's parallel firings")) -> None:
    """Start everything: Prefect server + UI, the legacy API and executor node worker1."""
    from schedulemaster.credentials import CredentialError
    from schedulemaster.supervisor import run_up

    try:
        code = run_up(_settings(data_dir, api_port, prefect_port, timezone_), maxc=maxc)
    except CredentialError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(code)


@app.command()
def master(data_dir: Optional[Path] = DataDir, api_port: Optional[int] = ApiPort,
           prefect_port: Optional[int] = PrefectPort, timezone_: Optional[str] = TimeZone) -> None:
    """Run the master: Prefect server, UI and the legacy API (no executor)."""
    from schedulemaster.credentials import CredentialError
    from schedulemaster.master.process import serve_master

    _logging()
    try:
        asyncio.run(serve_master(_settings(data_dir, api_port, prefect_port, timezone_)))
    except CredentialError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


@app.command()
def node(name: str = typer.Option("worker1", "--name", help="node name (the original's IdentityName)"),
         priority: int = typer.Option(1, "--priority", min=0, max=1000, help="weight when picking a node"),
         maxc: int = typer.Option(20, "--maxc", min=1, max=1000, help="firings run at once; more queue"),
         master_url: Optional[str] = typer.Option(None, "--master", help="Prefect API URL of the master"),
         wait_for_name: float = typer.Option(0.0, "--wait-for-name", min=0, max=3600,
                                             help="seconds to wait while a live node holds this name "
                                                  "(a killed node counts as live until it is offline, ~20 s)"),
         connect_timeout: float = typer.Option(300.0, "--connect-timeout", min=1, max=86400,
                                               help="seconds to wait for the master to answer"),
         data_dir: Optional[Path] = DataDir, prefect_port: Optional[int] = PrefectPort) -> None:
    """Run an executor node (a Prefect worker of type schedulemaster-node)."""
    import os

    from schedulemaster.node.process import serve_node

    if not name or len(name) > 100 or any(c in name for c in "/%") or name != name.strip():
        raise typer.BadParameter(f"invalid node name '{name}' (1-100 characters, no '/' or '%')")
    if master_url:
        if not master_url.startswith(("http://", "https://")):
            raise typer.BadParameter("--master must be an http(s) URL such as http://host:4200/api")
        os.environ["SM_PREFECT_API_URL"] = master_url.rstrip("/")
    _logging()
    raise typer.Exit(asyncio.run(serve_node(_settings(data_dir, None, prefect_port, None), name, priority, maxc,
                                            wait_for_name, connect_timeout)))


@app.command()
def dispatcher(name: str = typer.Option("dispatcher", "--name",
                                       help="unique per dispatcher: its Prefect runs and each attempt carry it "
                                            "(a new one marks runs left Running under its name Crashed)"),
               max_held: int = typer.Option(5000, "--max-held", min=10, max=100_000,
                                            help="callbacks claimed at once (due within 0.5 s, or in flight)"),
               per_host: int = typer.Option(100, "--per-host", min=1, max=10_000,
                                            help="connections to one receiver at once"),
               lease: float = typer.Option(30.0, "--lease", min=2.0, max=3600.0,
                                           help="seconds a claim outlives its dispatcher (PostgreSQL: how soon "
                                                "another dispatcher re-sends what a dead one held)"),
               data_dir: Optional[Path] = DataDir, prefect_port: Optional[int] = PrefectPort,
               timezone_: Optional[str] = TimeZone) -> None:
    """Run the delayed-task dispatcher (``up`` starts one; on PostgreSQL several may run)."""
    from schedulemaster.dispatcher.process import serve_dispatcher

    if not name or len(name) > 40 or any(c in name for c in "/%:,") or name != name.strip():
        raise typer.BadParameter(f"invalid dispatcher name '{name}' (1-40 characters, no '/', '%', ':' or ',')")
    _logging()
    try:
        code = asyncio.run(serve_dispatcher(_settings(data_dir, None, prefect_port, timezone_), name,
                                            max_held=max_held, per_host=per_host, lease=lease))
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(code)


@app.command()
def cron(expression: str = typer.Argument(..., help="a Quartz expression, e.g. '0/10 * * * * ?'"),
         count: int = typer.Option(5, "--count", min=1, max=1000, help="how many fire times"),
         after: Optional[str] = typer.Option(None, "--after", help="YYYY-MM-DDTHH:MM:SS, local to --tz [default: now]"),
         tz: Optional[str] = typer.Option(None, "--tz", help="IANA zone [default: this machine's]")) -> None:
    """Print the next fire times of a Quartz cron expression, one per line."""
    from schedulemaster.deployments import quartz

    zone_name = tz or local_timezone()
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        typer.echo(f"error: unknown time zone '{zone_name}'", err=True)
        raise typer.Exit(2)
    if after:
        try:
            start = datetime.strptime(after, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=zone)
        except ValueError:
            typer.echo(f"error: --after '{after}' is not YYYY-MM-DDTHH:MM:SS", err=True)
            raise typer.Exit(2)
    else:
        start = datetime.now(timezone.utc)
    try:
        expr = quartz.parse(expression)
    except quartz.CronError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    for t in expr.next_fires(count, start, zone):
        typer.echo(t.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S"))


from schedulemaster.cli.admin_cli import account_app, config_app, nodes_app, plugin_app  # noqa: E402
from schedulemaster.cli.import_cli import import_command  # noqa: E402
from schedulemaster.cli.delayed_cli import delayed_app  # noqa: E402

app.command("import")(import_command)
app.add_typer(plugin_app, name="plugin")
app.add_typer(account_app, name="account")
app.add_typer(config_app, name="config")
app.add_typer(nodes_app, name="nodes")
app.add_typer(delayed_app, name="delayed")


if __name__ == "__main__":
    app()
