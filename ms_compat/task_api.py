"""/api/Task/*: the original's TaskController, answering in its shapes and words.

Every task is a Prefect deployment (see ``deployments/tasks.py``); this module only turns
legacy requests into deployment changes and deployment state back into legacy views.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from schedulemaster.deployments import chain, plan, quartz
from schedulemaster.deployments import tasks as dep
from schedulemaster.deployments.policy import PolicyError
from schedulemaster.deployments.policy import from_form as policy_from_form
from schedulemaster.deployments.spec import HttpTarget, TaskSpec
from schedulemaster.deployments.tasks import DEFAULT_POLICY, POLICIES, Status, TaskRecord
from schedulemaster.flows import targets
from schedulemaster.flows.http_task import HttpTaskError, parse_params
from schedulemaster.ms_compat import responses as R
from schedulemaster.ms_compat.binding import page_bounds
from schedulemaster.store import claims
from schedulemaster.store.db import Configs, Store, SystemUser

log = logging.getLogger("schedulemaster.api")
#: how stale the nodes behind QueryTaskDetail's Unschedulable may be
NODE_VIEW_SECONDS = 2.0

FORM = "application/x-www-form-urlencoded"
MIN_YEAR = 1970  # a StartDate / EndDate before it is a typo (a task cannot end in year 1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SERVICE_ERROR = "服务出现异常请稍后再试！"
STORE_BUSY = "存储繁忙，未作任何修改，请稍后再试！"  # the store busy: nothing was written, retry
#: PostgreSQL's codes of a write that lost to another: serialization, deadlock, lock not
#: available, statement timeout (asyncpg's own timeout is a TimeoutError)
_BUSY_CODES = {"40001", "40P01", "55P03", "57014"}
PLUGIN_START_TIMEOUT = 60  # seconds a Start waits for the node to load and initialize a plugin


class TaskError(Exception):
    """A request the original would have refused or crashed on: answered Success:false.
    ``field``: the form field at fault, when one is (the console shows the message beside it;
    the API sends it as an ``X-SM-Field`` header, which legacy clients ignore)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def store_busy(exc: BaseException) -> bool:
    """Whether a write failed because the store was busy (SQLite's lock past its wait, a
    PostgreSQL lock or timeout, no pooled connection in time): its transaction rolled back,
    and the same request later may well succeed."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, (TimeoutError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return code in _BUSY_CODES or "database is locked" in str(orig) or "database is busy" in str(orig)
    return False


def failed_write(message: str, exc: BaseException):
    """The original's failure answer of a write, saying to retry when the store was busy."""
    return R.failed(f"{message} {STORE_BUSY}" if store_busy(exc) else message)


class TaskService:
    def __init__(self, store: Store, client, timezone_name: str, work_pool: str, parameter_schema: dict,
                 create_run=None, trouble_of=None):
        self.store = store
        self.client = client
        self.repo = dep.TaskRepository()
        self.tz = timezone_name
        self.work_pool = work_pool
        self.parameter_schema = parameter_schema
        self.configs = Configs(store)  # the network policy for HTTP targets, read through a cache
        self._nodes: tuple[float, chain.NodeView] | None = None  # (when read, what) for QueryTaskDetail
        #: async (task id, name=, tags=, parameters=) -> run id: a RunOnce run written in the
        #: master's own process (master/worker_runs.py); None: through Prefect's API
        self.create_run = create_run
        #: (task id) -> why its node cannot load its plugin, or None (master/task_trouble.py)
        self.trouble_of = trouble_of or (lambda _task_id: None)

    # ---- helpers ------------------------------------------------------------------
    def now_local(self) -> datetime:
        return datetime.now(ZoneInfo(self.tz)).replace(tzinfo=None)

    def to_local(self, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(ZoneInfo(self.tz)).replace(tzinfo=None)

    def next_run_time(self, rec: TaskRecord) -> datetime | None:
        if rec.status != Status.Running:
            return None
        try:
            nxt = plan.next_fire(rec.spec, datetime.now(timezone.utc))
        except quartz.CronError:
            return None
        return self.to_local(nxt)

    async def stats(self, rec: TaskRecord) -> tuple[int, datetime | None]:
        count, last = await self.repo.run_stats(rec.id)
        return count, self.to_local(last)

    async def node_view(self) -> chain.NodeView:
        """The pool's nodes, read at most every NODE_VIEW_SECONDS: two Prefect reads per
        QueryTaskDetail tripled its time (6 -> 19 ms), and nodes change far less often."""
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] > NODE_VIEW_SECONDS:
            self._nodes = (now, await chain.node_view(self.client, self.work_pool))
        return self._nodes[1]

    # ---- views --------------------------------------------------------------------
    async def entity(self, rec: TaskRecord) -> dict[str, Any]:
        """The raw `schedules` row QueryTaskDetail returned, plus the next five fire times."""
        s = rec.spec
        count, last = await self.stats(rec)
        nxt = self.next_run_time(rec)
        try:
            fires = plan.upcoming(s, 5, datetime.now(timezone.utc)) if rec.status == Status.Running else []
        except quartz.CronError:
            fires = []
        why = None
        if rec.status == Status.Running:
            try:
                why = (await self.node_view()).why_unschedulable(list(s.Executors))
            except Exception as exc:  # Prefect busy: the detail still answers, without the check
                log.warning("cannot check whether task %s has a node: %s", rec.id, exc)
            why = why or self.trouble_of(rec.id)
        return {
            "Id": str(rec.id), "Title": s.Title, "MetaType": s.MetaType,
            "Remark": s.Remark, "RunLoop": s.RunLoop,
            "CronExpression": s.CronExpression, "AssemblyName": s.AssemblyName,
            "ClassName": s.ClassName, "CustomParamsJson": s.CustomParamsJson,
            "Status": int(rec.status),
            "StartDate": R.fmt_nullable_date(_d(s.StartDate)),
            "EndDate": R.fmt_nullable_date(_d(s.EndDate)),
            "CreateTime": R.fmt_date(_d(s.CreateTime) or self.to_local(rec.created)),
            "CreateUserId": s.CreateUserId, "CreateUserName": s.CreateUserName,
            "LastRunTime": R.fmt_nullable_date(last), "NextRunTime": R.fmt_nullable_date(nxt),
            "TotalRunCount": count,
            # extension: what the node will fire next, in the task's zone
            "NextFireTimes": [R.fmt_date(self.to_local(f)) for f in fires],
            # extension: why a Running task fires nothing (no live, enabled node it may run on)
            "Unschedulable": why,
            # extension: misfire, overlap, timeout, retries, what a failure is (deployments/policy.py)
            "Policy": s.Policy.model_dump(),
            "FailoverPolicy": s.FailoverPolicy,
        }

    def list_row(self, rec: TaskRecord, count: int, last: datetime | None) -> dict[str, Any]:
        """A QueryList row: only these fields were populated by the original."""
        s = rec.spec
        last = self.to_local(last)
        return {
            "Id": str(rec.id), "Title": s.Title, "MetaType": 0, "RunLoop": s.RunLoop,
            "CronExpression": None, "Remark": None, "StartDate": R.fmt_nullable_date(_d(s.StartDate)),
            "EndDate": None, "AssemblyName": None, "ClassName": None, "CustomParamsJson": "[]",
            "Status": int(rec.status), "CreateTime": R.fmt_date(_d(s.CreateTime) or self.to_local(rec.created)),
            "CreateUserId": 0, "CreateUserName": None, "LastRunTime": R.fmt_nullable_date(last),
            "NextRunTime": R.fmt_nullable_date(self.next_run_time(rec)), "TotalRunCount": count,
            "Keepers": [], "Nexts": [], "Executors": list(s.Executors), "RunNow": False,
            "Params": [], "HttpRequestUrl": None, "HttpMethod": None, "HttpContentType": None,
            "HttpHeaders": None, "HttpBody": None,
        }

    # ---- spec from a bound ScheduleInfo -------------------------------------------
    async def build_spec(self, m: dict[str, Any], task_id: uuid.UUID, user: SystemUser,
                         existing: TaskSpec | None,
                         records: dict[str, TaskRecord] | None = None) -> TaskSpec:
        """The task spec a bound ScheduleInfo describes, or TaskError saying what is wrong.
        ``records``: every task by id, when the caller has them (an import batch reads them
        once instead of once per task)."""
        for key, value in m.items():
            if isinstance(value, str) and "\x00" in value:
                raise TaskError(f"{key} 不能包含 NUL (\\0) 字符", key)
        for key in ("CustomParamsJson", "HttpHeaders") + (
                ("HttpBody",) if (m.get("HttpContentType") or "").strip().lower() == FORM else ()):
            try:
                targets.check_json_depth(m.get(key), key)
            except targets.TargetError as exc:
                raise TaskError(str(exc)) from None
        meta = m.get("MetaType") or 0
        if meta not in (1, 2):
            raise TaskError(f"MetaType 必须是 1 (程序集任务) 或 2 (HTTP任务)，收到 {meta}", "MetaType")
        run_loop = bool(m.get("RunLoop"))
        cron = (m.get("CronExpression") or "").strip() or None
        if run_loop:
            if not cron:
                raise TaskError("循环执行的任务必须填写 cron 表达式 (CronExpression)", "CronExpression")
            try:
                quartz.parse(cron)
            except quartz.CronError as exc:
                raise TaskError(f"cron表达式验证失败：{exc}", "CronExpression") from None
        start, end = m.get("StartDate"), m.get("EndDate")
        if start and end and end < start:
            raise TaskError("结束时间不能早于开始时间 (EndDate < StartDate)", "EndDate")
        params_json = _params_json(m)
        http = None
        if meta == 2:
            url = (m.get("HttpRequestUrl") or "").strip()
            if not url.lower().startswith(("http://", "https://")):
                raise TaskError("HTTP任务的请求地址 (HttpRequestUrl) 必须是 http:// 或 https:// 开头的绝对地址", "HttpRequestUrl")
            ctype = (m.get("HttpContentType") or "").strip()
            if _CONTROL.search(ctype):
                raise TaskError("HttpContentType 不能包含控制字符 (CR/LF)", "HttpContentType")
            try:
                policy = targets.NetworkPolicy.from_settings(await asyncio.to_thread(self.configs.get))
                url = await targets.acheck_url(url, "HttpRequestUrl", policy)
                method = targets.check_method(m.get("HttpMethod") or "GET")
            except targets.TargetError as exc:
                raise TaskError(str(exc)) from None
            try:
                targets.check_headers(parse_params(m.get("HttpHeaders")))
                if ctype.lower() == FORM:
                    parse_params(m.get("HttpBody"))
            except HttpTaskError as exc:
                raise TaskError(f"HttpHeaders / HttpBody 格式错误：{exc}", "HttpHeaders") from None
            except targets.TargetError as exc:
                raise TaskError(str(exc)) from None
            http = HttpTarget(RequestUrl=url, Method=method, ContentType=ctype,
                              Headers=m.get("HttpHeaders"), Body=m.get("HttpBody"))
        else:
            if not m.get("AssemblyName") or not m.get("ClassName"):
                raise TaskError("程序集任务必须填写 AssemblyName 和 ClassName", "AssemblyName")
        keepers = list(dict.fromkeys(m.get("Keepers") or []))
        nexts = [str(n) for n in dict.fromkeys(m.get("Nexts") or [])]
        await self.check_nexts(task_id, nexts, records)
        executors = [e.strip() for e in dict.fromkeys(m.get("Executors") or []) if e and e.strip()]
        for e in executors:
            if len(e) > 100 or any(c in e for c in "/%"):
                raise TaskError(f"节点名称无效：{e[:100]}", "Executors")
        failover = (m.get("FailoverPolicy") or (existing.FailoverPolicy if existing else DEFAULT_POLICY)).strip().lower()
        if failover not in POLICIES:
            raise TaskError(f"FailoverPolicy '{failover[:20]}' 无效（可选：{' / '.join(POLICIES)}）", "FailoverPolicy")
        blocks = [b.strip() for b in dict.fromkeys(m.get("NotifyBlocks") or []) if b and b.strip()]
        await self.check_blocks(blocks)
        try:
            run_policy = policy_from_form(m, existing.Policy if existing else None, plugin=meta == 1)
        except PolicyError as exc:
            raise TaskError(str(exc), exc.field) from None
        try:
            return TaskSpec(
                Id=str(task_id), Title=m["Title"], MetaType=meta, Remark=m.get("Remark"),
                RunLoop=run_loop, CronExpression=cron,
                AssemblyName=m.get("AssemblyName") if meta == 1 else None,
                ClassName=m.get("ClassName") if meta == 1 else None,
                CustomParamsJson=params_json,
                StartDate=start.isoformat() if start else None,
                EndDate=end.isoformat() if end else None,
                CreateTime=(existing.CreateTime if existing else None)
                or self.now_local().replace(microsecond=0).isoformat(),
                CreateUserId=existing.CreateUserId if existing else user.id,
                CreateUserName=existing.CreateUserName if existing else user.username,
                Keepers=keepers, Nexts=nexts, Executors=executors, Http=http,
                NotifyBlocks=blocks, FailoverPolicy=failover, TimeZone=self.tz, StartedAt=None,
                Policy=run_policy)
        except ValidationError as exc:  # what the checks above let through is a bug, said plainly
            raise TaskError(f"任务数据无效：{str(exc).splitlines()[0]}") from None

    @staticmethod
    def check_fires(m: dict[str, Any], spec: TaskSpec) -> None:
        """A cron that never fires again (``0 0 0 31 2 ?``, a past year, ``31W 2``) or a date
        before 1970 is a mistake. An EndDate that has passed is not refused here: the original
        took it and refused the Start (``任务结束时间不能小于当前时间！``), and so does this API.
        Not on import: an original's expired task comes over Stopped, as history."""
        for key in ("StartDate", "EndDate"):
            if m.get(key) is not None and m[key].year < MIN_YEAR:
                raise TaskError(f"{key} 不能早于 {MIN_YEAR} 年", key)
        if spec.RunLoop and plan.next_fire(spec, datetime.now(timezone.utc), ignore_end=True) is None:
            raise TaskError(f"cron表达式 '{spec.CronExpression}' 今后没有任何触发时间，任务永远不会执行", "CronExpression")

    @staticmethod
    def check_keepers(keepers: list[int]) -> None:
        """An id below 1 is never an account: refused on Create and Edit. An unknown positive id
        is kept, as the original kept it: its own sample client sends ``Keepers=1&Keepers=2`` on
        a fresh install, where account 2 does not exist (such a keeper mails nobody)."""
        bad = [k for k in keepers if k < 1]
        if bad:
            raise TaskError(f"Keepers 中的用户不存在：{', '.join(map(str, bad[:10]))}（用户 ID 从 1 开始）", "Keepers")

    async def check_executors(self, executors: list[str]) -> None:
        """Every executor a Create or Edit names must be a node this master knows (a worker
        of the pool, or a registered node): a typo would leave the task waiting for a node
        that never comes. Not checked on import: an original database names its own nodes."""
        if not executors:
            return

        known = {w.name for w in await self.client.read_workers_for_work_pool(self.work_pool)}
        known |= set(await asyncio.to_thread(claims.nodes, self.store.engine))
        unknown = [e for e in executors if e not in known]
        if unknown:
            raise TaskError(f"节点不存在：{', '.join(u[:100] for u in unknown[:5])}"
                            f"（已知节点：{', '.join(sorted(known)[:20]) or '无'}）", "Executors")

    async def check_blocks(self, blocks: list[str]) -> None:
        """Each NotifyBlocks entry must name an existing block document that can notify."""
        from prefect.exceptions import ObjectNotFound

        for slug in blocks:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,99}/[A-Za-z0-9][A-Za-z0-9_-]{0,99}", slug):
                raise TaskError(f"通知块名称无效：{slug[:100]}（格式：块类型/名称，例如 slack-webhook/ops）", "NotifyBlocks")
            block_type, name = slug.split("/", 1)
            try:
                doc = await self.client.read_block_document_by_name(name=name, block_type_slug=block_type)
            except ObjectNotFound:
                raise TaskError(f"通知块不存在：{slug}", "NotifyBlocks") from None
            if "notify" not in (doc.block_schema.capabilities if doc.block_schema else []):
                raise TaskError(f"块 {slug} 不能发送通知（没有 notify 能力）", "NotifyBlocks")

    async def check_nexts(self, task_id: uuid.UUID, nexts: list[str],
                          records: dict[str, TaskRecord] | None = None) -> None:
        if not nexts:
            return
        if records is not None:
            known = {tid: (r.spec.Title, list(r.spec.Nexts)) for tid, r in records.items()}
        else:
            known = await self.repo.chains([uuid.UUID(str(task_id)), *(uuid.UUID(n) for n in nexts if _is_uuid(n))])
        missing = [n for n in nexts if n not in known]
        if missing:
            raise TaskError(f"子任务不存在：{', '.join(missing)}", "Nexts")
        graph = {tid: children for tid, (_title, children) in known.items()}
        graph[str(task_id)] = nexts
        title = {tid: t for tid, (t, _children) in known.items()}
        title.setdefault(str(task_id), "(本任务)")
        path = chain.find_cycle(graph, str(task_id))
        if path:
            raise TaskError("子任务形成循环：" + " → ".join(title.get(p, p) for p in path), "Nexts")

    # ---- actions ------------------------------------------------------------------
    async def create(self, m: dict[str, Any], user: SystemUser):
        task_id = uuid.uuid4()
        spec = await self.build_spec(m, task_id, user, None)
        self.check_fires(m, spec)
        await self.check_executors(spec.Executors)
        self.check_keepers(spec.Keepers)
        # RunNow of an HTTP task that can start: created Running in one transaction (a plugin
        # task's Start waits for its node to load the plugin, so it goes the long way)
        run_now = bool(m.get("RunNow"))
        at_once = run_now and not spec.is_plugin and self._cannot_start(task_id, spec) is None
        if at_once:
            spec = self._started(spec)
        try:
            await self.repo.create(task_id, spec, self.work_pool, self.parameter_schema,
                                   Status.Running if at_once else Status.Stop)
        except Exception as exc:
            log.exception("create failed")
            return failed_write("数据保存失败!", exc)
        if run_now:
            ok = at_once or json.loads((await self.start(task_id)).body)["Success"]
            return R.ok(f"任务创建成功！启动状态为：{'成功' if ok else '失败'}", str(task_id))
        return R.ok("任务创建成功!", str(task_id))

    async def edit(self, m: dict[str, Any], user: SystemUser):
        task_id = m.get("Id")
        rec = await self.repo.read(task_id) if task_id else None
        if rec is None:
            return R.failed("任务不存在!")
        if rec.status != Status.Stop:
            return R.failed("在停止状态下才能编辑任务信息!")
        spec = await self.build_spec(m, task_id, user, rec.spec)
        self.check_fires(m, spec)
        # only the names this edit adds: an imported task keeps its old nodes' names
        await self.check_executors([e for e in spec.Executors if e not in rec.spec.Executors])
        self.check_keepers(spec.Keepers)
        try:
            await self.repo.write(task_id, spec, Status.Stop, rename=spec.Title != rec.spec.Title, previous=rec.spec)
        except Exception as exc:
            log.exception("edit failed")
            return failed_write("任务编辑失败!", exc)
        return R.ok("任务编辑成功!")

    async def _set(self, rec: TaskRecord, spec: TaskSpec, status: Status) -> Exception | None:
        """Write the task's new status; the error when that failed (logged)."""
        try:
            await self.repo.write(rec.id, spec, status, previous=rec.spec)
            return None
        except Exception as exc:
            log.exception("status update failed")
            return exc

    async def start(self, task_id: uuid.UUID):
        rec = await self.repo.read(task_id)
        if rec is None:
            return R.failed("任务信息不能为空！")
        if rec.status != Status.Stop:
            return R.failed("任务在停止状态下才能启动！")
        refusal = self._cannot_start(task_id, rec.spec)
        if refusal is not None:
            return R.failed(refusal)
        spec = self._started(rec.spec)
        if spec.is_plugin and not await self.start_plugin(task_id, spec):
            return R.failed("任务启动失败!")
        if (error := await self._set(rec, spec, Status.Running)) is not None:
            return failed_write("更新任务状态失败!", error)
        return R.ok("任务启动成功!")

    def _cannot_start(self, task_id: uuid.UUID, spec: TaskSpec) -> str | None:
        """Why a Start is refused (the original's message), or None."""
        end = plan.local_to_utc(spec.EndDate, spec.TimeZone)
        if end is not None and end < datetime.now(timezone.utc):
            return "任务结束时间不能小于当前时间！"
        if spec.RunLoop:
            try:
                quartz.parse(spec.CronExpression or "")
            except quartz.CronError as exc:
                log.error("task %s: cron表达式验证失败 %s", task_id, exc)
                return "任务启动失败!"
        return None

    def _started(self, spec: TaskSpec) -> TaskSpec:
        return spec.model_copy(update={"StartedAt": self.now_local().isoformat(), "ResumedAt": None})

    async def start_plugin(self, task_id: uuid.UUID, spec: TaskSpec) -> bool:
        """Have the node that will fire the task load and initialize its plugin, and wait.

        The original's Start asked the worker to load the assembly and failed when it could
        not. Here the Start is a flow run (tag ``sm:start``) in the owning node's queue: the
        node's worker runs it in the node process, so the instance it initializes is the
        one the node then fires, and the run's log in the UI says why a Start failed.
        """
        from prefect.client.schemas.objects import StateType
        from prefect.states import Cancelled

        node = await chain.owning_node(self.client, self.work_pool, task_id, spec)
        if node is None:
            log.error("task %s: no live node to start its plugin on (executors: %s)", task_id,
                      spec.Executors or "any")
            return False
        run = await self.client.create_flow_run_from_deployment(
            task_id, parameters={"task": spec.wire(), "action": "start"},
            work_queue_name=dep.NODE_QUEUE_PREFIX + node, tags=["sm:start"],
            name=dep.run_name(spec.Title, f"start {self.now_local():%Y-%m-%d %H:%M:%S}"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PLUGIN_START_TIMEOUT
        delay = 0.05  # the node hears of the run at once (master/new_runs.py): look soon, then less often
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            state = (await self.client.read_flow_run(run.id)).state
            if state is not None and state.is_final():
                if state.type == StateType.COMPLETED:
                    return True
                log.error("task %s: plugin start failed on %s: %s (run %s)", task_id, node, state.message, run.id)
                return False
        log.error("task %s: node %s did not start the plugin within %d s", task_id, node, PLUGIN_START_TIMEOUT)
        try:
            await self.client.set_flow_run_state(run.id, Cancelled(message="start timed out"), force=True)
        except Exception:
            pass
        return False

    async def pause(self, task_id: uuid.UUID):
        rec = await self.repo.read(task_id)
        if rec is None or rec.status != Status.Running:
            return R.failed("当前任务状态下不能暂停!")
        if (error := await self._set(rec, rec.spec, Status.Paused)) is not None:
            return failed_write("任务暂停失败!", error)
        return R.ok("任务暂停成功!")

    async def resume(self, task_id: uuid.UUID):
        rec = await self.repo.read(task_id)
        if rec is None or rec.status != Status.Paused:
            return R.failed("当前任务状态下不能恢复运行!")
        if (error := await self._set(rec, rec.spec.resumed(), Status.Running)) is not None:
            return failed_write("任务恢复失败!", error)
        return R.ok("任务恢复成功!")

    async def stop(self, task_id: uuid.UUID):
        rec = await self.repo.read(task_id)
        if rec is None or rec.status not in (Status.Running, Status.Paused):
            return R.failed("当前任务状态下不能停止!")
        spec = rec.spec.model_copy(update={"StartedAt": None, "ResumedAt": None})
        if (error := await self._set(rec, spec, Status.Stop)) is not None:
            return failed_write("任务停止失败!", error)
        return R.ok("任务已停止运行!")

    async def run_once(self, task_id: uuid.UUID):
        rec = await self.repo.read(task_id)
        if rec is None or rec.status != Status.Running:
            return R.failed("任务不在运行状态下!")
        name = dep.run_name(rec.spec.Title, f"run once {self.now_local():%Y-%m-%d %H:%M:%S}")
        try:
            if self.create_run is not None:  # the task's own queue: only its owning node takes it
                await self.create_run(rec.id, name=name, tags=["sm:run-once"], parameters={"task": rec.spec.wire()})
                return R.ok("任务运行成功!")
            # to the node that fires the task: it holds a plugin task's instance
            queue = await chain.queue_for(self.client, self.work_pool, rec.id, rec.spec)
            await self.client.create_flow_run_from_deployment(
                rec.id, parameters={"task": rec.spec.wire()}, work_queue_name=queue,
                tags=["sm:run-once"], name=name)
        except Exception:
            log.exception("run once failed")
            return R.failed("任务运行失败!")
        return R.ok("任务运行成功!")

    async def delete(self, task_id: uuid.UUID):
        rec = await self.repo.read(task_id)
        if rec is None or rec.status != Status.Stop:
            return R.failed("当前任务状态下不能删除!")
        try:
            # The original also dropped references in both directions.
            parents = await self.repo.parents_of(task_id)
            await self.repo.delete(task_id, parents)
        except Exception as exc:
            log.exception("delete failed")
            return failed_write("任务删除失败!", exc)
        return R.ok("任务已删除!")

    async def query_list(self, name: str | None, page: int, size: int):
        page, size = page_bounds(page, size, 10)
        total, records = await self.repo.page(name or None, (page - 1) * size, size)
        stats = await self.repo.run_stats_of([r.id for r in records])
        rows = [self.list_row(r, *stats.get(r.id, (0, None))) for r in records]
        return R.json_response({"total": total, "rows": rows})

    async def query_detail(self, task_id: uuid.UUID | None):
        rec = await self.repo.read(task_id) if task_id else None
        return R.ok("请求数据成功", await self.entity(rec) if rec else None)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _d(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _params_json(m: dict[str, Any]) -> str:
    """CustomParamsJson, or the Params[i] list serialized the way the setter did."""
    params = m.get("Params")
    if params:
        return json.dumps([{"ParamKey": p["ParamKey"], "ParamValue": p["ParamValue"],
                            "ParamRemark": p["ParamRemark"]} for p in params], ensure_ascii=False)
    text = m.get("CustomParamsJson")
    if text is None or not text.strip():
        return "[]"
    try:
        value = json.loads(text)
    except ValueError:
        raise TaskError("CustomParamsJson 必须是 JSON 数组：[{\"ParamKey\":...,\"ParamValue\":...,\"ParamRemark\":...}]") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TaskError("CustomParamsJson 必须是 JSON 数组：[{\"ParamKey\":...,\"ParamValue\":...,\"ParamRemark\":...}]")
    return text
