"""`schedulemaster import`: move an existing ScheduleMaster database over.

The CLI reads the original's tables (``ms_compat/legacy_import.py``) and hands the items to
the running master, kind by kind, in batches (``/api/schedulemaster/import/*`` on the Prefect
port, guarded by Prefect's auth string): settings, then users (their ids here are needed to
map Keepers), then tasks children first (so every Nexts names a task that exists), then
pending delayed tasks, then, with ``--with-history``, traces and their logs. The master
decides and writes each item on its own; ``--dry-run`` asks it the same questions and
writes nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any, Optional
from uuid import UUID

import typer

CHECKLIST = """Next steps:
  1. Port each .NET plugin listed above to Python (TaskBase), upload it as <AssemblyName>.zip
     (schedulemaster plugin upload), then Start its task.
  2. Stop the original's workers before starting tasks here, so no task runs on both.
  3. Start the imported tasks: re-run this import with --start (tasks Running in the original
     start here, Paused ones start paused), or Start them one by one.
  4. Point legacy clients at this API (port 30000): their ms_auth_user / ms_auth_secret keep working."""

BATCH = {"settings": 100, "users": 200, "tasks": 50, "delayed": 500, "history": 500}
DONE = ("created", "updated", "kept")
EXIT_INCOMPLETE = 3
MAX_BATCH_BYTES = 16 * 1024 * 1024  # a quarter of the master's limit per request (import_api.MAX_BODY)


class TargetError(Exception):
    """The running system did not take a batch (down, refused, auth)."""


class Target:
    """The master's import endpoints, through httpx (Prefect's auth string as Basic auth)."""

    def __init__(self, api_url: str, dry_run: bool, overwrite: bool, start: bool, timezone: str | None,
                 user_role: str = "admin"):
        import httpx

        headers = {"content-type": "application/json"}
        from schedulemaster.credentials import basic_auth, client_auth_string

        auth = client_auth_string()
        if auth:
            headers["authorization"] = basic_auth(auth)
        self.api_url = api_url.rstrip("/")
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(600, connect=5))
        self.options = {"dry_run": dry_run, "overwrite": overwrite, "start": start, "timezone": timezone,
                        "user_role": user_role}

    def reachable(self) -> str | None:
        """None when the master answers, else why not."""
        import httpx

        try:  # an empty dry-run batch: answers only when the endpoint exists and the credentials pass
            r = self.client.post(f"{self.api_url}/schedulemaster/import/settings",
                                 content=json.dumps({"options": {"dry_run": True}, "items": []}).encode())
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if r.status_code == 401:
            return "it refused the credentials: set PREFECT_API_AUTH_STRING to the master's auth string"
        if r.status_code == 404:
            return "it has no import endpoint: is it a ScheduleMaster master of this version?"
        if r.status_code != 200:
            return f"it answered {r.status_code}: {r.text[:200]}"
        return None

    def send(self, kind: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import httpx

        body = json.dumps({"options": self.options, "items": payloads}, default=_json_default, ensure_ascii=False)
        try:
            r = self.client.post(f"{self.api_url}/schedulemaster/import/{kind}", content=body.encode())
        except httpx.HTTPError as exc:
            raise TargetError(f"{kind}: the master did not answer ({type(exc).__name__}: {exc})") from None
        if r.status_code != 200:
            raise TargetError(f"{kind}: the master answered {r.status_code}: {r.text[:500]}")
        return r.json()["outcomes"]


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if hasattr(value, "__float__"):  # Decimal from some drivers
        return float(value)
    raise TypeError(f"cannot send {type(value).__name__}")


def import_command(
        source: str = typer.Option(..., "--from", help="the original's database, e.g. "
                                   "mysql://root:pw@127.0.0.1/schedule_master or postgresql://..."),
        dry_run: bool = typer.Option(False, "--dry-run", help="print what would happen; change nothing"),
        start: bool = typer.Option(False, "--start", help="tasks Running (Paused) in the original start "
                                   "(start paused) here; plugins need their Python port uploaded first"),
        with_history: bool = typer.Option(False, "--with-history", help="also the traces (as runs) and their logs"),
        overwrite: bool = typer.Option(False, "--overwrite", help="on a conflict (an item changed in the original "
                                       "and here since the last import) the original's values win"),
        source_tz: Optional[str] = typer.Option(None, "--source-timezone", help="the zone the original's times are "
                                                "in (its workers' local time); default: this system's"),
        target: Optional[str] = typer.Option(None, "--target", help="the master's Prefect API URL "
                                             "(default: this machine's, from SM_PREFECT_PORT)"),
        report: Optional[Path] = typer.Option(None, "--report", help="also write every item (kind, id, title, "
                                              "action, notes) to this file as JSON, for an audit trail"),
        user_role: str = typer.Option("admin", "--user-role", help="the role accounts created by the import get: "
                                      "admin (they could do everything in the original), operator or viewer"),
        map_node: list[str] = typer.Option([], "--map-node", metavar="OLD=NEW", help="the original's node OLD is "
                                           "this system's NEW in tasks' and delayed tasks' Executors (repeatable)"),
) -> None:
    """Import tasks (same ids), users (same password hashes), settings and pending delayed tasks
    from a ScheduleMaster database into the running system. Safe to run again: nothing is
    duplicated, changed rows are updated, conflicts are reported."""
    from rich.console import Console
    from rich.markup import escape

    from schedulemaster.ms_compat.legacy_import import SourceError, plan_import, read_source
    from schedulemaster.store.db import DEFAULT_CONFIGS
    from schedulemaster.settings import Settings

    console = Console(width=None if sys.stdout.isatty() else 200)
    if source_tz is not None:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(source_tz)
        except Exception:
            typer.echo(f"error: unknown time zone {source_tz!r} (an IANA name, e.g. Asia/Shanghai)", err=True)
            raise typer.Exit(2)
    if report is not None and not (report.parent.is_dir() and os.access(report.parent, os.W_OK)):
        typer.echo(f"error: --report {report}: its folder does not exist or is not writable", err=True)
        raise typer.Exit(2)
    from schedulemaster.ms_compat import roles

    if roles.parse(user_role) is None:
        typer.echo(f"error: --user-role {user_role!r}: one of {', '.join(roles.ROLES)}", err=True)
        raise typer.Exit(2)
    try:
        renames = parse_node_map(map_node)
    except ValueError as exc:
        typer.echo(f"error: --map-node {exc}", err=True)
        raise typer.Exit(2)
    t0 = time.monotonic()
    with console.status("reading the original's database..."):
        try:
            snap = read_source(source)
        except SourceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
    plan = plan_import(snap, known_configs={k for k, *_ in DEFAULT_CONFIGS}, start=start)
    rename_nodes(plan, renames)
    plan.timings["read"] = round(time.monotonic() - t0, 3)
    tgt = Target(target or Settings.from_env().prefect_api_url, dry_run, overwrite, start, source_tz,
                 roles.parse(user_role))
    down = tgt.reachable()
    if down is not None:
        if not dry_run:
            typer.echo(f"error: the target system ({tgt.api_url}) is not reachable: {down}. Start it "
                       "(./sm up, or schedulemaster master) and run the import again; nothing was changed", err=True)
            raise typer.Exit(1)
        console.print(f"note: the target system ({tgt.api_url}) is not reachable ({down}): this dry run judges "
                      "the original's rows only; with the system up it also says what each item does here")
        _report(console, plan, dry_run=True, history=with_history, applied=False, path=report)
        if any(i.action == "cannot" for i in plan.items):
            raise typer.Exit(EXIT_INCOMPLETE)
        return
    try:
        _apply(console, plan, tgt, source if with_history else None)
    except TargetError as exc:
        _report(console, plan, dry_run=dry_run, history=with_history, applied=True, path=report)
        typer.echo(f"error: {exc}. Items already written stay written; run the import again to go on", err=True)
        raise typer.Exit(1)
    _report(console, plan, dry_run=dry_run, history=with_history, applied=True, path=report)
    pinned = [i for i in plan.items if i.unknown_nodes]
    if pinned:
        console.print(f"[bold red]{len(pinned)} task(s) pinned to nodes this system does not know[/] (they would "
                      "never fire on them; imported, not started unless another of their nodes is here):")
        for item in pinned:  # titles and names are the original's text, not markup
            console.print(f"  {item.key}  {escape(item.title[:60])}: {escape(', '.join(item.unknown_nodes))}")
        names = sorted({n for i in pinned for n in i.unknown_nodes})
        console.print(f"rename them with --map-node, e.g. --map-node {escape(names[0])}=worker1, and import again")
    if pinned or any(i.action in ("cannot", "failed", "conflict") for i in plan.items):
        raise typer.Exit(EXIT_INCOMPLETE)


def _write_report(path: Path | None, plan) -> None:
    if path is None:
        return
    items = [{"kind": i.kind, "key": i.key, "title": i.title, "action": i.action, "notes": i.notes,
              "target_id": i.target_id, "unknown_nodes": i.unknown_nodes} for i in plan.items]
    path.write_text(json.dumps({"items": items, "history": plan.history_result, "timings": plan.timings},
                               ensure_ascii=False, indent=1))


def _apply(console, plan, tgt: Target, history_source: str | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    users = plan.of("user")
    phases = [("settings", lambda p: _send_kind(p, tgt, "settings", plan.of("setting"))),
              ("users", lambda p: _send_kind(p, tgt, "users", users)),
              ("tasks", lambda p: _send_tasks(p, tgt, plan.of("task"), _user_ids(users))),
              ("delayed", lambda p: _send_kind(p, tgt, "delayed", plan.of("delayed")))]
    if history_source is not None:
        phases.append(("history", lambda p: _send_history(p, tgt, plan, history_source)))
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        for name, phase in phases:
            t0 = time.monotonic()
            phase(progress)
            plan.timings[name] = round(time.monotonic() - t0, 3)


def _send_kind(progress, tgt: Target, kind: str, items, size: int | None = None) -> None:
    todo = [i for i in items if i.action == "import"]
    bar = progress.add_task(kind, total=len(todo))
    size = size or BATCH[kind]
    for n in range(0, len(todo), size):
        part = todo[n:n + size]
        _apply_outcomes(part, tgt.send(kind, [i.payload for i in part]))
        progress.advance(bar, len(part))


def parse_node_map(pairs: list[str]) -> dict[str, str]:
    """``OLD=NEW`` pairs as {old: new}; ValueError naming the pair that is not one."""
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = (pair or "").partition("=")
        old, new = old.strip(), new.strip()
        shown = repr(pair[:60])
        if not sep or not old or not new:
            raise ValueError(f"{shown}: give OLD=NEW, both names not empty")
        if len(old) > 100 or len(new) > 100:
            raise ValueError(f"{shown}: a node name is 100 characters at most")
        if any(c in old + new for c in ",=") or not (old + new).isprintable():
            raise ValueError(f"{shown}: a node name has no comma, '=' or control character")
        if renames.get(old, new) != new:
            raise ValueError(f"{shown}: {old} is already mapped to {renames[old]}")
        renames[old] = new
    return renames


def rename_nodes(plan, renames: dict[str, str]) -> None:
    """The original's node names as this system's in every task's and delayed task's Executors;
    the fingerprint of what the original says is taken after the renaming, so importing again
    with a new mapping updates what the last one wrote."""
    from schedulemaster.ms_compat.legacy_import import source_fingerprint

    if not renames:
        return
    for item in plan.items:
        names = (item.payload or {}).get("executors") if item.kind in ("task", "delayed") else None
        if not names or not any(n in renames for n in names):
            continue
        item.payload["executors"] = list(dict.fromkeys(renames.get(n, n) for n in names))
        item.notes.append("nodes renamed: " + ", ".join(f"{n} -> {renames[n]}" for n in names if n in renames))
        if "sourcefp" in item.payload:
            item.payload["sourcefp"] = source_fingerprint(item.payload)


def _apply_outcomes(items, outcomes: list[dict[str, Any]]) -> None:
    """What the master did with each item (same order as sent)."""
    for item, outcome in zip(items, outcomes):
        item.action = outcome["action"]
        item.target_id = outcome.get("target_id")
        item.unknown_nodes = list(outcome.get("unknown_nodes") or [])
        if outcome.get("message"):
            item.notes.append(outcome["message"])


def _user_ids(users) -> dict[int, int]:
    """The original's user id -> the same person's id here (for Keepers and creators)."""
    ids = {}
    for u in users:
        if u.payload is not None and u.action in DONE + ("conflict",):
            ids[u.payload["id"]] = int(u.target_id) if u.target_id else u.payload["id"]
    return ids


def _send_tasks(progress, tgt: Target, tasks, user_ids: dict[int, int]) -> None:
    """Level by level, children first: a parent names only children that are (or, in a dry
    run, would be) here, so one child that cannot come over never fails its parent."""
    here: set[str] = set()
    levels = sorted({t.level for t in tasks if t.action == "import"})
    bar = progress.add_task("tasks", total=sum(1 for t in tasks if t.action == "import"))
    for level in levels:
        todo = [t for t in tasks if t.action == "import" and t.level == level]
        for t in todo:
            p = t.payload
            lost = [c for c in p["nexts"] if c not in here]
            if lost:
                t.notes.append(f"{len(lost)} child task(s) not imported: dropped from Nexts")
                p["nexts"] = [c for c in p["nexts"] if c in here]
            lost_k = [k for k in p["keepers"] if k not in user_ids]
            if lost_k:
                t.notes.append(f"keepers {lost_k} were not imported: dropped")
            p["keepers"] = [user_ids[k] for k in p["keepers"] if k in user_ids]
            p["createuserid"] = user_ids.get(p["createuserid"], p["createuserid"])
        # with --start a plugin's Start may wait up to a minute for its node: smaller requests
        size = BATCH["tasks"] if not tgt.options["start"] else 5
        for n in range(0, len(todo), size):
            part = todo[n:n + size]
            _apply_outcomes(part, tgt.send("tasks", [t.payload for t in part]))
            here.update(t.key for t in part if t.target_id)
            progress.advance(bar, len(part))


def _send_history(progress, tgt: Target, plan, source: str) -> None:
    from schedulemaster.ms_compat.legacy_import import iter_history

    tasks_here = {t.key for t in plan.of("task") if t.target_id}
    total = plan.history.get("scheduletraces", 0)
    bar = progress.add_task("history", total=total)
    counts = {"created": 0, "kept": 0, "failed": 0}
    failures: list[str] = []
    sent = 0
    for batch in iter_history(source, tasks_here, BATCH["history"]):
        if tgt.options["dry_run"]:
            counts["created"] += len(batch)
        else:
            for outcome in (o for part in _by_size(batch) for o in tgt.send("history", part)):
                ok = outcome["action"] in DONE
                counts[outcome["action"] if ok and outcome["action"] != "updated" else "failed"] += 1
                if not ok and len(failures) < 20:
                    failures.append(f"{outcome['key']}: {outcome['message']}")
        sent += len(batch)
        progress.update(bar, completed=sent)
    progress.update(bar, completed=total)
    plan.history_result = {"runs": counts["created"], "kept": counts["kept"], "failed": counts["failed"],
                           "skipped": max(0, total - sent), "failures": failures}


def _by_size(batch: list[dict[str, Any]], limit: int = MAX_BATCH_BYTES) -> list[list[dict[str, Any]]]:
    """Split a history batch so that no request body passes ``limit`` (traces carry up to 50
    log lines each, and a stack trace can be long)."""
    parts: list[list[dict[str, Any]]] = [[]]
    size = 0
    for item in batch:
        n = len(json.dumps(item, default=_json_default, ensure_ascii=False).encode())
        if parts[-1] and size + n > limit:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += n
    return parts


_ACTIONS = ("created", "updated", "kept", "conflict", "failed", "cannot", "skip")


def _report(console, plan, *, dry_run: bool, history: bool, applied: bool, path: Path | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    _write_report(path, plan)

    if not applied:  # the source judged alone: every importable item would be sent
        columns, title = ("import", "cannot", "skip"), "dry run: the original's rows (nothing was changed)"
    else:
        columns = _ACTIONS
        title = "dry run: what the import would do (nothing was changed)" if dry_run else "import summary"
    summary = Table("kind", *[("would be " + c if dry_run and c in ("created", "updated", "kept") else c)
                              for c in columns], title=title)
    for kind in ("setting", "user", "task", "delayed"):
        summary.add_row(kind, *[str(plan.count(kind, a)) for a in columns])
    console.print(summary)
    details = Table("kind", "id / name", "title", "action", "notes", title="items that need attention")
    for item in plan.items:
        if item.notes or item.action in ("cannot", "failed", "conflict"):
            details.add_row(item.kind, escape(item.key), escape(item.title[:40]), item.action,
                            escape("; ".join(item.notes)))  # the original's text, not markup
    if details.row_count:
        console.print(details)
    if history:
        result = plan.history_result
        if result is None or dry_run:
            console.print("history: " + ", ".join(f"{t} {n} rows" for t, n in plan.history.items())
                          + ("" if result is None else f"; {result['runs']} traces of imported tasks would become runs"))
        else:
            console.print(f"history: {result['runs']} traces recorded as runs (with their logs), {result['kept']} "
                          f"already recorded, {result['failed']} failed, {result['skipped']} skipped (their task "
                          "was not imported)")
            for line in result["failures"]:
                console.print(f"  {escape(line)}")
    console.print(CHECKLIST)
