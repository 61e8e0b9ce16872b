"""Tasks as Python objects: ``@schedulemaster.task``, ``http_task``, ``delay`` and ``Task``.

A task is named by its title (titles are unique), so running a notebook cell again finds
the task the last run made and updates it instead of adding a second one. Every change
goes through the legacy API, so a task made here obeys the same rules, answers the same
errors and shows in the same places (the Prefect UI, QueryList) as one made by curl.

Changes are idempotent: asking for the state a task is already in does nothing and returns
that state; asking for what the original refused (pausing a stopped task) raises
``LegacyError`` with the original's message. Editing needs a stopped task in the original;
here a running or paused task is stopped, edited and put back in its state.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

from schedulemaster.coordination.client import package_exists
from schedulemaster.deployments import plan, quartz
from schedulemaster.deployments.chain import find_cycle
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.deployments.policy import PolicyError
from schedulemaster.deployments.policy import form_value as policy_form_value
from schedulemaster.deployments.policy import from_form as policy_from_form
from schedulemaster.deployments.tasks import POLICIES, STATUS_NAMES
from schedulemaster.notebook import shipping
from schedulemaster.notebook.connection import Connection, current, prefect_errors
from schedulemaster.notebook.frames import logs, node_names, runs, task_records
from schedulemaster.notebook.legacy_client import LegacyError, LegacyNotFound
from schedulemaster.notebook.lookup import find_task, read_spec
from schedulemaster.timeutil import parse_span

HTTP_FIELDS = {"RequestUrl": "HttpRequestUrl", "Method": "HttpMethod", "ContentType": "HttpContentType",
               "Headers": "HttpHeaders", "Body": "HttpBody"}


def params_json(params: dict[str, Any] | None) -> str:
    """Custom parameters as the original's CustomParamsJson (values as text, as it stored them)."""
    if not params:
        return "[]"
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> value, got {type(params).__name__}")
    rows = []
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"a parameter name must be a non-empty string, got {key!r}")
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False) \
            if isinstance(value, (dict, list)) else str(value)
        rows.append({"ParamKey": key, "ParamValue": text, "ParamRemark": ""})
    return json.dumps(rows, ensure_ascii=False)


def check_cron(cron: str | None) -> None:
    """The server's own Quartz parser, with its message, before anything is sent."""
    if cron is None:
        return
    if not isinstance(cron, str):
        raise TypeError(f"cron must be a Quartz expression string, got {type(cron).__name__}")
    try:
        quartz.parse(cron)
    except quartz.CronError as exc:
        raise ValueError(f"cron表达式验证失败：{exc} ({cron!r})") from None


def check_executors(conn: Connection, executors: Iterable[str] | None) -> list[str]:
    """Executors must name nodes this system knows (online or not); a typo would otherwise
    leave the task with nowhere to run."""
    if isinstance(executors, str):
        raise TypeError("executors must be a list of node names, e.g. ['worker1']")
    names = list(executors or [])
    if not names:
        return []
    if not all(isinstance(n, str) for n in names):
        raise TypeError("executors must be a list of node names, e.g. ['worker1']")
    known = node_names(conn)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown executor{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                         f"the nodes of this system are {', '.join(sorted(known)) or '(none yet)'}")
    return names


def form_from_spec(spec: TaskSpec) -> dict[str, Any]:
    """The ScheduleInfo form that re-creates ``spec`` (an Edit replaces every field)."""
    form = {"Id": spec.Id, "Title": spec.Title, "MetaType": spec.MetaType,
            "Remark": spec.Remark, "RunLoop": spec.RunLoop,
            "CronExpression": spec.CronExpression, "AssemblyName": spec.AssemblyName,
            "ClassName": spec.ClassName, "CustomParamsJson": spec.CustomParamsJson,
            "StartDate": (spec.StartDate or "").replace("T", " ") or None,
            "EndDate": (spec.EndDate or "").replace("T", " ") or None,
            "Keepers": list(spec.Keepers), "Nexts": list(spec.Nexts),
            "Executors": list(spec.Executors), "NotifyBlocks": list(spec.NotifyBlocks),
            "FailoverPolicy": spec.FailoverPolicy, **spec.Policy.form_values()}
    for key, field in HTTP_FIELDS.items():
        form[field] = getattr(spec.Http, key) if spec.Http else None
    return form


def _same(form: dict[str, Any], spec: TaskSpec) -> bool:
    """Would ``form`` leave ``spec`` as it is? (then an upsert writes nothing)"""
    old = form_from_spec(spec)
    for key, value in form.items():
        if key in ("Id", "RunNow"):
            continue
        a, b = old.get(key), value
        if isinstance(b, (list, tuple)):
            a, b = [str(x) for x in a or []], [str(x) for x in b]
        elif key == "CustomParamsJson":
            a, b = json.loads(a or "[]"), json.loads(b or "[]")
        elif isinstance(b, datetime):
            b = b.strftime("%Y-%m-%d %H:%M:%S")
        if (a or None) != (b or None) and not (isinstance(b, bool) and bool(a) == b):
            return False
    return True


class Task:
    """One ScheduleMaster task. Its methods call the running system; nothing is cached but
    the id and title."""

    def __init__(self, task_id: str, title: str, conn: Connection | None = None):
        self.id = str(task_id)
        self.title = title
        self._conn = conn

    @property
    def conn(self) -> Connection:
        return self._conn or current()

    def __repr__(self) -> str:
        try:
            status = self.status
        except Exception:
            status = "?"
        return f"<Task {self.title!r} {self.id} {status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # ---- reading -----------------------------------------------------------------------
    def detail(self) -> dict[str, Any]:
        """QueryTaskDetail's row (with ``NextFireTimes``) plus ``StatusName``."""
        row = self.conn.legacy.task(self.id)
        if row is None:
            raise LegacyNotFound("任务不存在!")
        row["StatusName"] = STATUS_NAMES.get(row.get("Status"), str(row.get("Status")))
        return row

    @property
    def status(self) -> str:
        """``stopped``, ``running`` or ``paused``."""
        return self.detail()["StatusName"]

    def spec(self) -> TaskSpec:
        """The task as its nodes fire it (its deployment's ``task`` parameter), typed."""
        return read_spec(self.conn, self.id)

    def next_fires(self, count: int = 5, after: datetime | None = None) -> list[datetime]:
        """The next ``count`` instants this task fires at if it runs (StartDate, EndDate and
        RunLoop included), in the task's zone: the same Quartz evaluation the nodes use."""
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 10_000:
            raise ValueError(f"count must be a whole number from 1 to 10000, got {count!r}")
        spec = self.spec()
        zone = ZoneInfo(spec.TimeZone)
        start = after or datetime.now(timezone.utc)
        if start.tzinfo is None:
            start = start.replace(tzinfo=zone)
        return [t.astimezone(zone) for t in plan.upcoming(spec, count, start)]

    def runs(self, since: str | timedelta | datetime | None = None, **kw: Any):
        """This task's runs as a DataFrame (see ``schedulemaster.runs``)."""
        return runs(task=self, since=since, conn=self.conn, **kw)

    # ---- state changes -----------------------------------------------------------------
    def _move(self, action: str, target: str, allowed_from: tuple[str, ...]) -> dict[str, Any]:
        now = self.status
        if now == target:
            return self.detail()
        if action != "start" or now not in allowed_from:
            getattr(self.conn.legacy, action)(self.id)  # when refused: the original's message
            return self.detail()
        before = self._start_run_ids()
        try:
            self.conn.legacy.start(self.id)
        except LegacyError as exc:
            if type(exc) is LegacyError:  # not a transport or auth error: say why, if the node did
                raise LegacyError(self._why_start_failed(exc.message, before), status=exc.status) from None
            raise
        return self.detail()

    def _start_run_ids(self) -> set[str]:
        try:
            return set(runs(task=self, kind="start", limit=50, conn=self.conn)["run_id"])
        except Exception:
            return set()

    def _why_start_failed(self, message: str, before: set[str]) -> str:
        """A plugin Start that failed on the node left a run saying why: add its message (only
        a run this Start made, not an earlier attempt's)."""
        try:
            df = runs(task=self, kind="start", limit=50, conn=self.conn)
            df = df[~df["run_id"].isin(before)]
            if len(df) and df.iloc[0]["state"] != "COMPLETED" and df.iloc[0]["message"]:
                return f"{message} {df.iloc[0]['message']}"
        except Exception:  # the reason is a courtesy; the Start's own answer stands
            pass
        return message

    def start(self) -> dict[str, Any]:
        """Start (a paused task resumes). Returns the task's detail."""
        if self.status == "paused":
            return self.resume()
        return self._move("start", "running", ("stopped",))

    def pause(self) -> dict[str, Any]:
        return self._move("pause", "paused", ("running",))

    def resume(self) -> dict[str, Any]:
        return self._move("resume", "running", ("paused",))

    def stop(self) -> dict[str, Any]:
        return self._move("stop", "stopped", ("running", "paused"))

    def delete(self) -> None:
        """Delete the task (stopping it first). Deleting a task that is gone does nothing."""
        try:
            status = self.status
        except LegacyNotFound:
            return
        if status != "stopped":
            self.stop()
        self.conn.legacy.delete(self.id)

    def run_once(self, wait: bool = False, timeout: float = 120.0):
        """Fire once now (RunOnce: the task must be running). With ``wait``, block until the
        run ends and return its row (``runs()`` columns) with its log lines in ``logs``."""
        def ids() -> set[str]:
            return set(runs(task=self, kind="run-once", limit=200, conn=self.conn)["run_id"]) if wait else set()

        before = ids()  # the new run is the one not there before (no clock comparison)
        self.conn.legacy.run_once(self.id)
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            df = runs(task=self, kind="run-once", limit=200, conn=self.conn)
            df = df[~df["run_id"].isin(before)]
            if len(df) and df.iloc[0]["state"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                row = df.iloc[0].copy()
                # Log lines are shipped in batches, a moment after the final state: wait for
                # the engine's last line ("Finished in state ...") or 15 s.
                settle = time.monotonic() + 15
                while True:
                    row["logs"] = logs(row["run_id"], conn=self.conn)
                    done = row["logs"]["message"].str.startswith("Finished in state").any()
                    if done or time.monotonic() > settle:
                        return row
                    time.sleep(0.5)
            time.sleep(0.5)
        raise TimeoutError(f"the RunOnce of {self.title!r} did not finish within {timeout:g} s")

    def edit(self, **fields: Any) -> dict[str, Any]:
        """Change ScheduleInfo fields (``CronExpression="0 * * * * ?"``...); a running or
        paused task is stopped for the edit and put back in its state."""
        form = {**form_from_spec(self.spec()), **fields, "Id": self.id}
        _write(self.conn, form, self)
        return self.detail()

    # ---- chains --------------------------------------------------------------------------
    def then(self, *children: "Task") -> "Task":
        """Make ``children`` run after each successful run of this task (Nexts)."""
        for child in children:
            if not isinstance(child, Task):
                raise TypeError(f"a child task must be a Task, got {type(child).__name__}")
        spec = self.spec()
        nexts = list(spec.Nexts)
        new = [c.id for c in children if c.id not in nexts]
        if not new:
            return children[-1] if children else self
        _check_no_cycle(self.conn, self, new)
        self.edit(Nexts=nexts + new)
        return children[-1]

    def __rshift__(self, other: "Task") -> "Task":
        """``a >> b``: b runs after a (``a >> b >> c`` chains three)."""
        return self.then(other)


def _check_no_cycle(conn: Connection, parent: Task, children: list[str]) -> None:
    """Refuse new ``children`` of ``parent`` when one already leads back to it, before the
    parent is stopped for the edit (the server checks again when it writes), with the
    server's own words and search; one read of the tasks for all of them."""
    records = task_records(conn)
    graph = {tid: list(rec.spec.Nexts) for tid, rec in records.items()}
    graph[parent.id] = graph.get(parent.id, []) + children
    path = find_cycle(graph, parent.id)
    if path:
        titles = {tid: rec.spec.Title or tid for tid, rec in records.items()}
        raise LegacyError("子任务形成循环：" + " → ".join(titles.get(p, p) for p in path))


@contextmanager
def _stopped(task: Task):
    """Hold ``task`` stopped (Edit's precondition) and put it back in its state afterwards,
    also when the edit is refused."""
    was = task.status
    if was != "stopped":
        task.conn.legacy.stop(task.id)
    try:
        yield
    except BaseException as exc:
        if was != "stopped":
            try:
                _restore(task, was)
            except Exception as again:  # the edit's error is the one to see; say the task stays stopped
                exc.add_note(f"and {task.title!r} could not be put back to {was}: {again}; it is stopped")
        raise
    if was != "stopped":
        _restore(task, was)


def _restore(task: Task, was: str) -> None:
    """Start again, then pause when it was paused (the legacy API has no start-paused: for a
    moment the task is running and may fire)."""
    task.start()
    if was == "paused":
        task.pause()


def _write(conn: Connection, form: dict[str, Any], task: Task) -> None:
    """Edit a task in place, keeping its state."""
    with _stopped(task):
        conn.legacy.edit_task(**form)


def upsert(conn: Connection, form: dict[str, Any], *, start: bool = False,
           upload: Callable[[], None] | None = None) -> Task:
    """Create the task titled ``form["Title"]`` or bring the existing one to ``form``;
    ``upload`` stores a function task's new code (before an Edit points the task at it)."""
    title = form["Title"]
    row = find_task(conn, title)
    if row is None:
        # Create first, so the server judges every field before the code is stored; a
        # package that then cannot be stored takes its new task with it.
        task = Task(conn.legacy.create_task(**form), title, conn)
        if upload:
            try:
                upload()
            except BaseException:
                conn.legacy.delete(task.id)
                raise
    else:
        task = Task(row["Id"], title, conn)
        spec = task.spec()
        changed = not _same(form, spec)
        if upload:  # new code under a new name: nothing uses it until the Edit points to it
            upload()
        if changed:
            with _stopped(task):
                # an Edit replaces every field: keep what the form does not set (Nexts, blocks)
                conn.legacy.edit_task(**{**form_from_spec(spec), **form, "Id": task.id})
    if start:
        task.start()
    return task


def check_failover(failover: str | None) -> dict[str, str]:
    """The form field of a failover policy: what another node does with a firing whose node
    died under it (``"retry-elsewhere"``: run it again there; ``"fail"``: record it Failed and
    mail the keepers). None keeps the task's current policy."""
    if failover is None:
        return {}
    if not isinstance(failover, str) or failover.strip().lower() not in POLICIES:
        raise ValueError(f"failover must be one of {', '.join(map(repr, POLICIES))}, got {failover!r}")
    return {"FailoverPolicy": failover.strip().lower()}


#: the keyword arguments of ``task`` and ``http_task`` that set a policy, and their form fields
POLICY_ARGS = {"misfire": "MisfirePolicy", "misfire_threshold": "MisfireThresholdSeconds",
               "overlap": "OverlapPolicy", "max_parallel": "MaxParallel", "timeout": "TimeoutSeconds",
               "retries": "Retries", "retry_interval": "RetryIntervalSeconds", "backoff": "RetryBackoff",
               "fail_on_non_2xx": "FailOnNon2xx", "expected_text": "ExpectedText",
               "alarm_after_failures": "AlarmAfterFailures", "alarm_late_seconds": "AlarmLateSeconds",
               "alarm_on_missed": "AlarmOnMissed"}


def policy_form(given: dict[str, Any], *, plugin: bool) -> dict[str, Any]:
    """The form fields of the policy arguments given (None: keep the task's), checked here as
    the API checks them so a mistake is a ValueError before anything is written."""
    form: dict[str, Any] = {}
    for arg, value in given.items():
        if value is None:
            continue
        field = POLICY_ARGS[arg]
        if field in ("FailOnNon2xx", "AlarmOnMissed") and not isinstance(value, bool):
            raise TypeError(f"{arg} must be True or False, got {value!r}")
        form[field] = str(value).lower() if field == "FailOnNon2xx" else value
    try:
        policy_from_form(form, None, plugin=plugin)
    except PolicyError as exc:
        arg = next(a for a, f in POLICY_ARGS.items() if f == exc.field)
        raise ValueError(f"{arg}: {exc}") from None
    return {field: policy_form_value(field, value) for field, value in form.items()}


def _common_form(title: str, cron: str | None, run_loop: bool | None, executors, keepers, params, start_date,
                 end_date, remark, failover: str | None = None) -> dict[str, Any]:
    if not isinstance(title, str) or not title.strip():
        raise ValueError("a task needs a non-empty title")
    check_cron(cron)
    conn = current()
    if keepers is not None and (isinstance(keepers, (str, int)) or
                                not all(isinstance(k, int) and not isinstance(k, bool) for k in keepers)):
        raise TypeError("keepers must be a list of user ids, e.g. [1]")
    return {"Title": title, "RunLoop": bool(cron) if run_loop is None else bool(run_loop),
            "CronExpression": cron, "Executors": check_executors(conn, executors),
            "Keepers": list(keepers or []), "CustomParamsJson": params_json(params),
            "StartDate": wall_time(start_date, conn, "start_date"),
            "EndDate": wall_time(end_date, conn, "end_date"), "Remark": remark, **check_failover(failover)}


def wall_time(value: datetime | None, conn: Connection, what: str) -> datetime | None:
    """A datetime as the legacy API reads it: a wall time in the system's zone. An aware one is
    converted; a naive one already is such a wall time."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    return value.astimezone(ZoneInfo(conn.timezone)).replace(tzinfo=None) if value.tzinfo else value


class ScheduledFunction(Task):
    """A task whose work is a Python function shipped to the nodes; calling it runs the
    function here (handy to try it in the notebook first)."""

    def __init__(self, task_id: str, title: str, fn: Callable[..., Any], conn: Connection | None = None):
        super().__init__(task_id, title, conn)
        self.fn = fn
        self.__wrapped__ = fn
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", title)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.fn(*args, **kw)

    def __reduce__(self):
        """Another task's function that calls this one ships the function, not the handle
        (which holds a connection)."""
        return (_function_of, (self.fn,))


def _function_of(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def task(cron: str | Callable[..., Any] | None = None, *, title: str | None = None,
         executors: list[str] | None = None, keepers: list[int] | None = None,
         params: dict[str, Any] | None = None, run_loop: bool | None = None,
         start_date: datetime | None = None, end_date: datetime | None = None, remark: str | None = None,
         failover: str | None = None, misfire: str | None = None, misfire_threshold: int | None = None,
         overlap: str | None = None, timeout: int | None = None, retries: int | None = None,
         retry_interval: int | None = None, backoff: str | None = None, alarm_after_failures: int | None = None,
         alarm_late_seconds: int | None = None, alarm_on_missed: bool | None = None, start: bool = False):
    """Schedule a function on the executor nodes::

        @sm.task(cron="0/10 * * * * ?", executors=["worker1"], params={"batch": 500})
        def sync_orders(context):
            context.write_log(f"batch {context.get_argument('batch', int)}")

    The function (``def f(context)`` or ``def f()``; a ``TaskBase`` subclass works too) is
    pickled with what it uses and stored on the master, and the nodes load it at Start. The
    task is titled after the function unless ``title`` is given; decorating again (a cell run
    again) updates that task. Without ``cron`` the task fires once when started (RunLoop off).
    ``failover`` says what happens to a firing whose node dies under it: ``"retry-elsewhere"``
    (the default: another node runs it again, with the same Idempotency-Key) or ``"fail"``.

    Policies (None keeps the task's; the defaults are the original's behaviour):
    ``misfire`` ``"skip"`` / ``"once"`` / ``"all"`` for instants later than ``misfire_threshold``
    seconds (60); ``overlap`` ``"queue"`` (wait for the previous run, one firing at most) or
    ``"skip"``; ``timeout`` seconds, after which the run's cancellation token is set and it
    fails "timeout"; ``retries`` more attempts after a failure, ``retry_interval`` seconds
    apart (10), ``backoff`` ``"fixed"`` or ``"exponential"``; the keepers are told after
    ``alarm_after_failures`` failures in a row (1), of a firing more than ``alarm_late_seconds``
    late (0: never), and with ``alarm_on_missed`` of instants not fired.
    """
    if callable(cron) and not isinstance(cron, str):  # bare @sm.task
        return task()(cron)
    policies = policy_form({"misfire": misfire, "misfire_threshold": misfire_threshold, "overlap": overlap,
                            "timeout": timeout, "retries": retries, "retry_interval": retry_interval,
                            "backoff": backoff, "alarm_after_failures": alarm_after_failures,
                            "alarm_late_seconds": alarm_late_seconds, "alarm_on_missed": alarm_on_missed},
                           plugin=True)

    def decorate(fn: Callable[..., Any]) -> ScheduledFunction:
        name = title or getattr(fn, "__name__", None) or ""
        if name == "<lambda>":
            raise ValueError("a lambda has no name to title its task by: pass title=...")
        form = _common_form(name, cron, run_loop, executors, keepers, params, start_date, end_date, remark,
                            failover) | policies
        filename, data = shipping.package(fn, name)  # refuses what cannot travel, before any write
        conn = current()
        form.update(MetaType=1, AssemblyName=filename.rsplit(".", 1)[0], ClassName=shipping.CLASS_NAME)

        def upload() -> None:
            conn.legacy.upload_plugin(filename, data)

        # the package name carries the code's fingerprint: stored already = this very code
        stored = _package_stored(conn, form["AssemblyName"])
        t = upsert(conn, form, start=start, upload=None if stored else upload)
        return ScheduledFunction(t.id, name, fn, conn)

    return decorate


def _package_stored(conn: Connection, name: str) -> bool:
    """Whether the master holds the package ``name`` (what the nodes fetch)."""

    with prefect_errors(conn.prefect_url):
        return package_exists(conn.prefect(), name)


def http_task(title: str, url: str, cron: str | None = None, *, method: str = "GET", body: str | None = None,
              content_type: str | None = None, headers: dict[str, str] | None = None,
              executors: list[str] | None = None, keepers: list[int] | None = None,
              params: dict[str, Any] | None = None, run_loop: bool | None = None,
              start_date: datetime | None = None, end_date: datetime | None = None,
              remark: str | None = None, failover: str | None = None, misfire: str | None = None,
              misfire_threshold: int | None = None, overlap: str | None = None, max_parallel: int | None = None,
              timeout: int | None = None, retries: int | None = None, retry_interval: int | None = None,
              backoff: str | None = None, fail_on_non_2xx: bool | None = None, expected_text: str | None = None,
              alarm_after_failures: int | None = None, alarm_late_seconds: int | None = None,
              alarm_on_missed: bool | None = None, start: bool = False) -> Task:
    """Create (or update, by title) an HTTP task (MetaType 2) and return it; ``failover`` and
    the policies as in :func:`task`, and: ``overlap`` may also be ``"cancel"`` (the running
    request is cancelled for the new one) or ``"parallel"`` (up to ``max_parallel`` at once);
    ``timeout`` bounds the request; ``fail_on_non_2xx`` decides for this task what the global
    ``Http_FailOnNon2xx`` setting does; ``expected_text`` must be in a successful answer."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"url must be an absolute http:// or https:// address, got {url!r}")
    policies = policy_form({"misfire": misfire, "misfire_threshold": misfire_threshold, "overlap": overlap,
                            "max_parallel": max_parallel, "timeout": timeout, "retries": retries,
                            "retry_interval": retry_interval, "backoff": backoff,
                            "fail_on_non_2xx": fail_on_non_2xx, "expected_text": expected_text,
                            "alarm_after_failures": alarm_after_failures, "alarm_late_seconds": alarm_late_seconds,
                            "alarm_on_missed": alarm_on_missed}, plugin=False)
    form = _common_form(title, cron, run_loop, executors, keepers, params, start_date, end_date, remark,
                        failover) | policies
    if headers is not None and not isinstance(headers, dict):
        raise TypeError("headers must be a dict of name -> value")
    if isinstance(body, (dict, list)):
        body = json.dumps(body, ensure_ascii=False)
        content_type = content_type or "application/json"
    method = method.strip().upper() if isinstance(method, str) else method  # stored upper-case
    form.update(MetaType=2, HttpRequestUrl=url, HttpMethod=method, HttpBody=body,
                HttpContentType=content_type or ("application/json" if body else None),
                HttpHeaders=params_json(headers) if headers else None)
    return upsert(current(), form, start=start)


def get_task(title_or_id: str) -> Task:
    """The task with this title (or id)."""
    conn = current()
    row = find_task(conn, title_or_id)
    if row is None and re.fullmatch(r"[0-9a-fA-F-]{32,36}", title_or_id or ""):
        detail = conn.legacy.task(title_or_id)
        if detail:
            return Task(detail["Id"], detail["Title"], conn)
    if row is None:
        raise LegacyError(f"任务不存在! (no task titled {title_or_id!r})")
    return Task(row["Id"], row["Title"], conn)


def delay(url: str, body: str | dict | list = "", *, after: str | int | float | timedelta | None = None,
          at: datetime | None = None, topic: str = "notebook", content_key: str | None = None,
          source_app: str = "notebook", data_type: str | None = None, executors: list[str] | None = None,
          remark: str | None = None, id: str | None = None) -> str:
    """A delayed task: POST ``body`` to ``url`` after ``after`` (or at ``at``). Returns its id.

    ``at`` without a time zone is a wall time in the system's zone (``sm.current().timezone``),
    as the legacy API reads DelayAbsoluteTime; give an aware datetime to mean another zone.
    With ``id`` the call is safe to repeat: an id that exists already is returned as is."""
    if (after is None) == (at is None):
        raise ValueError("give exactly one of after= (e.g. '30s') or at= (a datetime)")
    if isinstance(body, (dict, list)):
        body = json.dumps(body, ensure_ascii=False)
        data_type = data_type or "application/json"
    fields: dict[str, Any] = {"Id": id, "SourceApp": source_app, "Topic": topic,
                              "ContentKey": content_key or f"{topic}-{int(time.time() * 1000)}",
                              "NotifyUrl": url, "NotifyDataType": data_type or "application/json",
                              "NotifyBody": body, "Remark": remark, "Executors": executors}
    if after is not None:
        span = parse_span(after, "after")
        if span.total_seconds() < 0:
            raise ValueError(f"after must not be negative, got {after!r}")
        fields.update(DelayPattern="Relative", DelayTimeSpan=int(round(span.total_seconds())))
    else:
        if not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime, got {type(at).__name__}")
        fields.update(DelayPattern="Absolute", DelayAbsoluteTime=wall_time(at, current(), "at"))
    try:
        return current().legacy.create_delayed(**fields)
    except LegacyError as exc:
        if id is not None and exc.message == "任务ID已存在!":
            return id
        raise
