"""`schedulemaster import`: move an existing ScheduleMaster database over (issue 8).

This slice plans the import and prints the plan (``--dry-run``); nothing is written yet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

CHECKLIST = """Next steps after an import:
  1. Port each .NET plugin listed above to Python (TaskBase), upload it as <AssemblyName>.zip
     (schedulemaster plugin upload), then Start its task.
  2. Point legacy clients at this API (port 30000): their ms_auth_user / ms_auth_secret keep working.
  3. Stop the original's workers before starting tasks here, so no task runs on both.
  4. Start the imported tasks (or re-run the import with --start for HTTP tasks)."""


def import_command(source: str = typer.Option(..., "--from", help="the original's database, e.g. "
                                              "mysql://root:pw@127.0.0.1/schedule_master or postgresql://..."),
                   dry_run: bool = typer.Option(False, "--dry-run", help="print what would happen; change nothing"),
                   start: bool = typer.Option(False, "--start", help="HTTP tasks Running in the original start here"),
                   with_history: bool = typer.Option(False, "--with-history", help="also traces and logs"),
                   data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="the target system's data dir")
                   ) -> None:
    """Import tasks, users, settings and pending delayed tasks from a ScheduleMaster database."""
    from rich.console import Console
    from rich.table import Table

    from schedulemaster.ms_compat.legacy_import import SourceError, plan_import, read_source
    from schedulemaster.ms_compat.store import DEFAULT_CONFIGS, Store
    from schedulemaster.settings import Settings

    if not dry_run:
        typer.echo("error: only --dry-run is available yet: writing the import is not built "
                   "(issue 8's next slice); nothing was changed", err=True)
        raise typer.Exit(2)
    settings = Settings.from_env()
    if data_dir is not None:
        settings.data_dir = data_dir
    console = Console(width=None if sys.stdout.isatty() else 200)
    with console.status("reading the original's database..."):
        try:
            snap = read_source(source)
        except SourceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
    existing_users: dict[str, str] = {}
    existing_delayed: set[str] = set()
    store_db = settings.data_dir / "schedulemaster.db"
    if store_db.exists() or not settings.store_url.startswith("sqlite"):
        store = Store(settings.store_url)
        existing_users = {u.username: u.password for u in store.list_users()}
        existing_delayed = {r["id"] for r in store.delayed.query(status=2, limit=1_000_000)[1]}
    existing_tasks, tasks_known = target_task_ids(settings.prefect_api_url)
    plan = plan_import(snap, known_configs={k for k, *_ in DEFAULT_CONFIGS}, existing_users=existing_users,
                       existing_tasks=existing_tasks, existing_delayed=existing_delayed, start=start)
    summary = Table("kind", "create", "update", "keep", "cannot carry over", title="dry run: nothing was changed")
    for kind in ("task", "user", "setting", "delayed"):
        summary.add_row(kind, *[str(plan.count(kind, a)) for a in ("create", "update", "keep", "cannot")])
    console.print(summary)
    details = Table("kind", "id / name", "title", "action", "notes", title="items that need attention")
    for item in plan.items:
        if item.notes or item.action == "cannot":
            details.add_row(item.kind, item.key, item.title[:40], item.action, "; ".join(item.notes))
    if details.row_count:
        console.print(details)
    if with_history:
        console.print("history: " + ", ".join(f"{t} {n} rows" for t, n in plan.history.items()))
    if not tasks_known:
        console.print(f"note: the target's Prefect API ({settings.prefect_api_url}) did not answer, so every "
                      "task shows as create; with the system up, tasks it already has show as update")
    console.print(CHECKLIST)


def target_task_ids(prefect_api: str) -> tuple[set[str], bool]:
    """Ids of the tasks (deployments tagged schedulemaster) the target already has."""
    import httpx

    ids: set[str] = set()
    try:
        offset = 0
        while True:
            r = httpx.post(f"{prefect_api}/deployments/filter", timeout=10, json={
                "deployments": {"tags": {"all_": ["schedulemaster"]}}, "limit": 200, "offset": offset})
            r.raise_for_status()
            page = r.json()
            ids.update(d["id"] for d in page)
            if len(page) < 200:
                return ids, True
            offset += 200
    except httpx.HTTPError:
        return set(), False
