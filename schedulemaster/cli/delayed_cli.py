"""`schedulemaster delayed ...`: delayed tasks (延时任务) through the legacy API's /api/DelayTask/*.

A delayed task is one HTTP callback (POST NotifyUrl with NotifyBody) sent once, after a delay
or at a wall time in the system's zone; it counts as successful when the receiver answers 2xx
with "success" in the body. Input is checked here first: bad input exits 2 with a one-line
error before anything is sent; API failures exit 1 (a 400 validation answer exits 2).
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from schedulemaster.store.delayed_store import STATUS_NAMES, STATUS_TEXT
from schedulemaster.timeutil import parse_span

from schedulemaster.cli.admin_cli import Api, Password, User, _table, call

delayed_app = typer.Typer(help="Delayed tasks (延时任务): one-shot HTTP callbacks.", no_args_is_help=True)

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_BATCH_ITEMS = 10_000             # the API's limit per CreateBatch request
MAX_BATCH_BYTES = 15 * 1024 * 1024   # the API refuses bodies over 16 MiB (413): stay below it
_GUID = re.compile(r"^\{?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})\}?$",
                   re.IGNORECASE)

IdArg = typer.Argument(..., metavar="ID", help="the delayed task's id (a GUID)")


def _bad(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit 2, nothing sent."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_duration(text: str) -> int:
    """'30', '30s', '5m', '2h', '1d' -> whole seconds (a plain number means seconds)."""
    try:
        seconds = parse_span(text, "duration").total_seconds()
    except ValueError as exc:
        _bad(str(exc))
    if seconds < 1:
        _bad(f"duration {text!r} must be at least 1 second")
    return round(seconds)


def parse_guid(text: str, what: str = "id") -> str:
    m = _GUID.match(text.strip())
    if not m:
        _bad(f"{what} {text!r} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return str(uuid.UUID(m.group(1)))


def parse_time(text: str, option: str, date_only: bool = True) -> tuple[datetime, bool]:
    """'YYYY-MM-DD HH:MM:SS' (or 'YYYY-MM-DD' when allowed) -> (time, was it a bare date)."""
    t = text.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(t, fmt), False
        except ValueError:
            pass
    if date_only:
        try:
            return datetime.strptime(t, "%Y-%m-%d"), True
        except ValueError:
            pass
    shape = '"YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS"' if date_only else '"YYYY-MM-DD HH:MM:SS"'
    _bad(f"{option} {text!r} is not a valid time {shape}")


def parse_status(text: str) -> int:
    t = text.strip().lower()
    if t.isdigit() and int(t) in STATUS_NAMES:
        return int(t)
    by_name = {v: k for k, v in STATUS_NAMES.items()} | {v: k for k, v in STATUS_TEXT.items()}
    if t in by_name:
        return by_name[t]
    _bad(f"--status {text!r} is not 0-4 or one of {', '.join(STATUS_NAMES.values())}")


def status_label(row: dict[str, Any]) -> str:
    s = row.get("Status")
    return f"{s} {STATUS_NAMES.get(s, '?')} ({row.get('StatusText') or STATUS_TEXT.get(s, s)})"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _short(text: Any, limit: int = 60) -> str:
    s = " ".join(_fmt(text).split())
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _detail(api: str, user: str, password: str, task_id: str) -> dict[str, Any]:
    data = call(api, user, password, "GET", "DelayTask/QueryDetail", params={"id": task_id})["Data"]
    if data is None:
        typer.echo(f"error: no delayed task {task_id}", err=True)
        raise typer.Exit(1)
    return data


# ---- list / show ----------------------------------------------------------------------------
@delayed_app.command("list")
def delayed_list(
    status: Optional[str] = typer.Option(None, "--status", help="0-4 or voided|created|ready|succeeded|failed"),
    topic: Optional[str] = typer.Option(None, "--topic", help="exact topic"),
    content_key: Optional[str] = typer.Option(None, "--content-key", help="exact content key"),
    source_app: Optional[str] = typer.Option(None, "--source-app", help="exact source app"),
    start: Optional[str] = typer.Option(None, "--from", help='created at or after: "YYYY-MM-DD" or '
                                                             '"YYYY-MM-DD HH:MM:SS"'),
    end: Optional[str] = typer.Option(None, "--to", help='created before: "YYYY-MM-DD HH:MM:SS", or "YYYY-MM-DD" '
                                                         "for up to the end of that day"),
    page: int = typer.Option(1, "--page", min=1, help="page number"),
    size: int = typer.Option(20, "--size", min=1, max=1000, help="rows per page (at most 1000)"),
    api: str = Api, user: str = User, password: str = Password,
) -> None:
    """List delayed tasks, newest first, with a "total N" line.

    Filters are exact matches; times are wall times in the system's zone (as the API shows them).
    """
    params: dict[str, Any] = {"pageNumber": page, "pageSize": size}
    if status is not None:
        params["status"] = parse_status(status)
    for key, value in (("topic", topic), ("contentKey", content_key), ("sourceApp", source_app)):
        if value:
            params[key] = value
    if start:
        params["startDate"] = parse_time(start, "--from")[0].strftime("%Y-%m-%d %H:%M:%S")
    if end:
        when, bare = parse_time(end, "--to")
        # a bare date: the API counts it through the end of that day
        params["endDate"] = when.strftime("%Y-%m-%d" if bare else "%Y-%m-%d %H:%M:%S")
    data = call(api, user, password, "GET", "DelayTask/QueryList", params=params)["Data"]
    rows = [{**r, "Status": status_label(r)} for r in data["rows"]]
    _table(rows, ["Id", "Topic", "ContentKey", "Status", "NextAttemptTime", "FailedRetrys", "CreateTime"])
    typer.echo(f"total {data['total']}")


SHOW_FIELDS = ["Id", "Status", "SourceApp", "Topic", "ContentKey", "DelayPattern", "DelayTimeSpan",
               "DelayAbsoluteTime", "NextAttemptTime", "CreateTime", "CreateUserName", "ExecuteTime", "FinishTime",
               "FailedRetrys", "Attempts", "NotifyUrl", "NotifyDataType", "NotifyBody", "Executors", "Remark"]
ATTEMPT_COLUMNS = ["Attempt", "Kind", "DueTime", "FireTime", "LatenessSeconds", "ElapsedMs", "StatusCode",
                   "Success", "Error", "Excerpt", "Dispatcher"]


@delayed_app.command("show")
def delayed_show(task_id: str = IdArg, api: str = Api, user: str = User, password: str = Password) -> None:
    """Show a delayed task's fields, then a table of its callback attempts (newest first)."""
    data = _detail(api, user, password, parse_guid(task_id))
    width = max(len(k) for k in SHOW_FIELDS)
    for key in SHOW_FIELDS + [k for k in data if k not in SHOW_FIELDS and k not in ("AttemptLog", "StatusText")]:
        value = status_label(data) if key == "Status" else _fmt(data.get(key))
        typer.echo(f"{key + ':':<{width + 1}} {value}")
    attempts = data.get("AttemptLog") or []
    if not attempts:
        typer.echo("no attempts yet")
        return
    _table([{**a, "Error": _short(a.get("Error")), "Excerpt": _short(a.get("Excerpt"))} for a in attempts],
           ATTEMPT_COLUMNS)


# ---- create --------------------------------------------------------------------------------
@delayed_app.command("create")
def delayed_create(
    url: str = typer.Option(..., "--url", help="NotifyUrl: the http(s) URL the callback POSTs to"),
    body: str = typer.Option(..., "--body", help='NotifyBody (at most 1000 characters); with --form a JSON '
                                                 'array [{"Key":"k","Value":"v"}, ...]'),
    form: bool = typer.Option(False, "--form", help="send the body form-encoded (NotifyDataType "
                                                    "application/x-www-form-urlencoded) instead of as JSON"),
    topic: str = typer.Option(..., "--topic", help="Topic (at most 100 characters)"),
    content_key: str = typer.Option(..., "--content-key", help="ContentKey, e.g. the business object's key"),
    source_app: str = typer.Option("cli", "--source-app", help="SourceApp"),
    after: Optional[str] = typer.Option(None, "--after", help="fire after DURATION: 30, 30s, 5m, 2h, 1d "
                                                              "(a plain number means seconds)"),
    at: Optional[str] = typer.Option(None, "--at", help='fire at "YYYY-MM-DD HH:MM:SS", a wall time in the '
                                                        "system's zone"),
    task_id: Optional[str] = typer.Option(None, "--id", help="the task's id (a GUID) [default: a new one]"),
    remark: Optional[str] = typer.Option(None, "--remark", help="Remark"),
    executors: Optional[list[str]] = typer.Option(None, "--executor", help="an executor node name (repeatable)"),
    api: str = Api, user: str = User, password: str = Password,
) -> None:
    """Create a delayed task; prints its id. Exactly one of --after / --at is required."""
    if (after is None) == (at is None):
        _bad("give exactly one of --after DURATION or --at \"YYYY-MM-DD HH:MM:SS\"")
    data: dict[str, Any] = {"SourceApp": source_app, "Topic": topic, "ContentKey": content_key, "NotifyUrl": url,
                            "NotifyDataType": FORM_TYPE if form else JSON_TYPE, "NotifyBody": body}
    if after is not None:
        data.update(DelayPattern="Relative", DelayTimeSpan=str(parse_duration(after)))
    else:
        data.update(DelayPattern="Absolute",
                    DelayAbsoluteTime=parse_time(at, "--at", date_only=False)[0].strftime("%Y-%m-%d %H:%M:%S"))
    if form:
        try:
            pairs = json.loads(body)
        except ValueError:
            pairs = None
        if not isinstance(pairs, list):
            _bad('with --form, --body must be a JSON array such as [{"Key":"a","Value":"1"}]')
    if task_id is not None:
        data["Id"] = parse_guid(task_id, "--id")
    if remark:
        data["Remark"] = remark
    if executors:
        data["Executors"] = executors
    typer.echo(call(api, user, password, "POST", "DelayTask/Create", data=data)["Data"])


def read_tasks(file: Path) -> list[dict[str, Any]]:
    """A JSON array of task objects, or JSON Lines (one object per line); '-' reads stdin."""
    name = "stdin" if str(file) == "-" else str(file)
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except FileNotFoundError:
        _bad(f"{name}: no such file")
    except IsADirectoryError:
        _bad(f"{name} is a directory, not a file")
    except OSError as exc:
        _bad(f"cannot read {name}: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        _bad(f"{name} is not UTF-8 text (expected a JSON array or JSON Lines)")
    if not text.strip():
        _bad(f"{name} is empty (expected a JSON array of delayed tasks or JSON Lines)")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            _bad(f"{name} is not valid JSON: {exc}")
        if not isinstance(items, list):  # pragma: no cover - '[' always starts a list
            _bad(f"{name} is not a JSON array")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                _bad(f"{name}: array item [{i}] is not a JSON object")
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                _bad(f"{name} line {n} is not JSON ({exc}); expected a JSON array or JSON Lines")
            if not isinstance(item, dict):
                _bad(f"{name} line {n} is not a JSON object; expected a JSON array or JSON Lines")
            items.append(item)
    if not items:
        _bad(f"{name} holds no delayed tasks")
    return items


def split_chunks(items: list[dict[str, Any]], max_items: int, max_bytes: int = MAX_BATCH_BYTES) -> list[list[bytes]]:
    """Items serialized, in chunks of at most ``max_items`` and about ``max_bytes`` of JSON."""
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    size = 2
    for item in items:
        encoded = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if current and (len(current) >= max_items or size + len(encoded) + 1 > max_bytes):
            chunks.append(current)
            current, size = [], 2
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        chunks.append(current)
    return chunks


@delayed_app.command("create-batch")
def delayed_create_batch(
    file: Path = typer.Argument(..., metavar="FILE", help="a JSON array of task objects, or JSON Lines "
                                                          "(one object per line); '-' reads stdin"),
    chunk_size: int = typer.Option(MAX_BATCH_ITEMS, "--chunk-size", min=1, max=MAX_BATCH_ITEMS,
                                   help="tasks per request"),
    api: str = Api, user: str = User, password: str = Password,
) -> None:
    """Create many delayed tasks from FILE; prints how many were created.

    Each object uses the API's field names (SourceApp, Topic, ContentKey, NotifyUrl, NotifyDataType, NotifyBody, DelayTimeSpan or DelayAbsoluteTime, DelayPattern, Id, Remark, Executors). They are sent in chunks of at most 10,000 per request, with a progress bar when there is more than one.

    Each chunk is all-or-none, but chunks are separate requests: when chunk k fails, nothing of it is created while the chunks before it stay created (the error says which chunk failed and how many were created before it). Give every object an Id to make re-sending safe: ids that already exist are refused.
    """  # noqa: E501 (typer keeps single line breaks inside a help paragraph)
    items = read_tasks(file)
    chunks = split_chunks(items, chunk_size)
    created, first = 0, 0

    def send(k: int, chunk: list[bytes]) -> int:
        body = b"[" + b",".join(chunk) + b"]"
        try:
            return len(call(api, user, password, "POST", "DelayTask/CreateBatch", content=body)["Data"])
        except typer.Exit:
            if len(chunks) == 1:
                typer.echo("error: nothing was created (a batch is all-or-none)", err=True)
            else:
                typer.echo(f"error: chunk {k}/{len(chunks)} (items [{first}]-[{first + len(chunk) - 1}] of the file, "
                           "counted from 0; an index [i] above counts from the chunk's first item) failed and none "
                           f"of it was created; {created} delayed tasks from the chunks before it were created",
                           err=True)
            raise

    if len(chunks) == 1:
        created = send(1, chunks[0])
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("creating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True)) as progress:
            bar = progress.add_task("creating", total=len(items))
            for k, chunk in enumerate(chunks, 1):
                created += send(k, chunk)
                first += len(chunk)
                progress.advance(bar, len(chunk))
    typer.echo(f"created {created} delayed task{'' if created == 1 else 's'}")


# ---- console actions ---------------------------------------------------------------------------
@delayed_app.command("void")
def delayed_void(task_id: str = IdArg, api: str = Api, user: str = User, password: str = Password) -> None:
    """Void (作废) a created or ready task: its callback is never sent."""
    typer.echo(call(api, user, password, "POST", "DelayTask/Void", data={"id": parse_guid(task_id)})["Message"])


@delayed_app.command("reset")
def delayed_reset(task_id: str = IdArg, api: str = Api, user: str = User, password: str = Password) -> None:
    """Reset (重置) a voided, succeeded or failed task to ready, with fresh retries.

    It fires again after its DelayTimeSpan from now (relative), or at its absolute time, at once if that has passed.
    """
    typer.echo(call(api, user, password, "POST", "DelayTask/Reset", data={"id": parse_guid(task_id)})["Message"])


def _attempt_key(a: dict[str, Any]) -> tuple:
    return a.get("Attempt"), a.get("Kind"), a.get("DueTime"), a.get("FireTime"), a.get("Dispatcher")


@delayed_app.command("execute")
def delayed_execute(
    task_id: str = IdArg,
    wait: bool = typer.Option(False, "--wait", help="wait for the callback's outcome; exit 1 if it failed"),
    timeout: float = typer.Option(30.0, "--timeout", min=0.5, max=86400, help="seconds --wait waits at most"),
    api: str = Api, user: str = User, password: str = Password,
) -> None:
    """Execute (执行) a task's callback now. A failed task gets one more try, without retries."""
    tid = parse_guid(task_id)
    seen: set[tuple] = set()
    if wait:
        seen = {_attempt_key(a) for a in _detail(api, user, password, tid).get("AttemptLog") or []}
    typer.echo(call(api, user, password, "POST", "DelayTask/Execute", data={"id": tid})["Message"])
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0.5)
        data = _detail(api, user, password, tid)
        new = [a for a in data.get("AttemptLog") or [] if _attempt_key(a) not in seen]
        if new:
            a = new[0]  # newest first
            code = f"HTTP {a['StatusCode']}" if a.get("StatusCode") is not None else "no answer"
            outcome = "succeeded" if a.get("Success") else f"failed: {a.get('Error') or code}"
            typer.echo(f"attempt {a.get('Attempt')} ({a.get('Kind')}) {outcome} [{code}, {a.get('ElapsedMs')} ms]; "
                       f"task status {status_label(data)}")
            if not a.get("Success"):
                raise typer.Exit(1)
            return
        if time.monotonic() >= deadline:
            typer.echo(f"error: no new attempt within {timeout:g} s (task status {status_label(data)})", err=True)
            raise typer.Exit(1)
