"""/api/DelayTask/*: the original's DelayTaskController (Create) and, as extensions, what
its console offered (list, detail, 作废 void, 执行 execute, 重置 reset) plus a batch create.

Create answers as the original did (``任务启动成功!``, Data = the task id) once the row is
committed: a 200 means the task is durable. Everything a callback could never survive is
refused before anything is written (a past absolute time, a span out of range, a NotifyUrl
that is not http(s), a form body that is not the JSON list the callback will send).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request

from schedulemaster.dispatcher import callback as cb
from schedulemaster.flows import targets
from schedulemaster.ms_compat import responses as R
from schedulemaster.ms_compat.binding import F, FormValues, bind, id_from_form_or_query, page_bounds
from schedulemaster.store.db import Configs, Store, SystemUser
from schedulemaster.store.delayed_store import LATE_AFTER, STATUS_TEXT, DuplicateIds, host_of, ready_row
from schedulemaster.timeutil import MAX_SPAN_SECONDS, utcnow_naive

MAX_BATCH_ITEMS = 10_000
BATCH_PATH = "/api/delaytask/createbatch"
BATCH_LIMIT = 16 * 1024 * 1024  # bytes of JSON a batch may carry
EMPTY_GUID = uuid.UUID(int=0)

DELAYED_INFO: list[F] = [
    F("Id", "guid"),
    F("SourceApp", required=True, max_length=50),
    F("Topic", required=True, max_length=100),
    F("ContentKey", required=True, max_length=100),
    F("DelayTimeSpan", "int"),
    F("DelayAbsoluteTime", "date"),
    F("NotifyUrl", required=True, max_length=255),
    F("NotifyDataType", required=True, max_length=50),
    F("NotifyBody", required=True, max_length=1000),
    F("Remark", max_length=255),
    F("Executors", "strs", max_length=100),
    F("DelayPattern", max_length=10),  # extension: Relative | Absolute for this request
    # bindable, overwritten or ignored, as in the original
    F("Status", "int"), F("FailedRetrys", "int"), F("ExecuteTime", "date"), F("FinishTime", "date"),
    F("CreateTime", "date"), F("CreateUserName", max_length=50),
]
LIST_QUERY: list[F] = [F("pageNumber", "int"), F("pageSize", "int"), F("startDate", "date"), F("endDate", "date"),
                       F("status", "int"), F("topic", max_length=100), F("contentKey", max_length=100),
                       F("sourceApp", max_length=50)]
ID_FIELD: list[F] = [F("id", "guid")]


class Refused(Exception):
    """A create the callback could never survive: answered Success:false, nothing written.
    ``field``: the form field at fault, when one is (sent as the X-SM-Field header)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def to_utc(local: datetime, tz: str) -> datetime:
    try:
        return local.replace(tzinfo=ZoneInfo(tz)).astimezone(timezone.utc).replace(tzinfo=None)
    except OverflowError:  # year 1 or 9999 shifted out of range: as far as it can go
        return datetime.min if local.year < 5000 else datetime.max


def to_local(value: datetime | None, tz: str) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(tz)).replace(tzinfo=None)


TEXT_FIELDS = ("SourceApp", "Topic", "ContentKey", "NotifyUrl", "NotifyDataType", "NotifyBody", "Remark")


def unsendable(url: str, data_type: str, body: str, executors: list[str],
               texts: dict[str, str | None], policy: targets.NetworkPolicy | None = None) -> str | None:
    """Why a delayed task could never be sent, must not be, or could not be stored, or None.
    Shared by Create and by the import of an original database (ms_compat/import_target.py).
    A host name is not resolved here: Create does it off the event loop (``targets.acheck_resolved``)."""
    try:
        targets.check_url(url, "NotifyUrl", policy or targets.NetworkPolicy.from_settings({}))
        cb.check_url(url.strip())
        if data_type.strip().lower() == cb.FORM:
            targets.check_json_depth(body, "NotifyBody")
            cb.form_pairs(body.replace("\r\n", ""))
    except (cb.CallbackError, targets.TargetError) as exc:
        return str(exc)
    if any(len(e) > 100 or "," in e for e in executors):
        return "Executors 中的节点名最长 100 个字符，且不能含逗号"
    if len(",".join(executors)) > 2000:
        return "Executors 合计最长 2000 个字符"
    for key, value in texts.items():
        if "\x00" in (value or ""):  # PostgreSQL cannot store it; no receiver wants it
            return f"{key} 不能包含 NUL (\\0) 字符"
    return None


def row_for_create(m: dict[str, Any], user: SystemUser, tz: str, default_pattern: str,
                   now: datetime, policy: targets.NetworkPolicy | None = None) -> dict[str, Any]:
    """The row a bound ScheduleDelayedInfo becomes; raises Refused for what cannot run."""
    pattern = (m.get("DelayPattern") or default_pattern or "Relative").strip().capitalize()
    if pattern not in ("Relative", "Absolute"):
        raise Refused(f"DelayPattern 只能是 Relative 或 Absolute，收到 {pattern[:10]}", "DelayPattern")
    span = m.get("DelayTimeSpan")
    if pattern == "Relative":
        if span is None or not 1 <= span <= MAX_SPAN_SECONDS:
            raise Refused(f"DelayTimeSpan 必须是 1 到 {MAX_SPAN_SECONDS} 之间的秒数（相对模式），收到 {span}", "DelayTimeSpan")
        due = now + timedelta(seconds=span)
    else:
        absolute = m.get("DelayAbsoluteTime")
        if absolute is None:
            raise Refused("绝对模式必须给出 DelayAbsoluteTime", "DelayAbsoluteTime")
        due = to_utc(absolute.replace(microsecond=0), tz)
        if due <= now:
            raise Refused("任务启动失败！DelayAbsoluteTime 早于当前时间", "DelayAbsoluteTime")
        if due > now + timedelta(seconds=MAX_SPAN_SECONDS):
            raise Refused("DelayAbsoluteTime 不能晚于十年之后", "DelayAbsoluteTime")
    executors = [e.strip() for e in m.get("Executors") or [] if e and e.strip()]
    problem = unsendable(m["NotifyUrl"], m["NotifyDataType"], m["NotifyBody"], executors,
                         {k: m.get(k) for k in TEXT_FIELDS}, policy)
    if problem:
        raise Refused(problem)
    given = m.get("Id")
    task_id = str(given) if given is not None and given != EMPTY_GUID else str(uuid.uuid4())
    return ready_row(
        id=task_id, sourceapp=m["SourceApp"], topic=m["Topic"], contentkey=m["ContentKey"],
        delaytimespan=span or 0, delayabsolutetime=due, createtime=now, createusername=user.username,
        remark=m.get("Remark"), notifyurl=m["NotifyUrl"].strip(), notifydatatype=m["NotifyDataType"].strip(),
        notifybody=m["NotifyBody"], executors=",".join(executors) or None, pattern=pattern,
        notifyhost=host_of(m["NotifyUrl"].strip()))


def view(row: dict[str, Any], tz: str) -> dict[str, Any]:
    """A scheduledelayeds row as the console's grid had it, plus the extension fields."""
    loc = lambda v: to_local(v, tz)  # noqa: E731
    return {
        "Id": row["id"], "SourceApp": row["sourceapp"], "Topic": row["topic"], "ContentKey": row["contentkey"],
        "DelayTimeSpan": row["delaytimespan"], "DelayAbsoluteTime": R.fmt_date(loc(row["delayabsolutetime"])),
        "CreateTime": R.fmt_date(loc(row["createtime"])), "CreateUserName": row["createusername"],
        "ExecuteTime": R.fmt_nullable_date(loc(row["executetime"])),
        "FinishTime": R.fmt_nullable_date(loc(row["finishtime"])),
        "Status": row["status"], "FailedRetrys": row["failedretrys"], "Remark": row["remark"],
        "NotifyUrl": row["notifyurl"], "NotifyDataType": row["notifydatatype"], "NotifyBody": row["notifybody"],
        "Executors": [e for e in (row["executors"] or "").split(",") if e],
        # extensions
        "StatusText": STATUS_TEXT.get(row["status"], str(row["status"])),
        "DelayPattern": row["pattern"], "NextAttemptTime": R.fmt_nullable_date(loc(row["dueat"])),
        "Attempts": row["attempts"],
    }


def attempt_view(a: dict[str, Any], tz: str) -> dict[str, Any]:
    return {"Attempt": a["attempt"], "Kind": a["kind"],
            "DueTime": R.fmt_nullable_date(to_local(a["duetime"], tz)),
            "FireTime": R.fmt_nullable_date(to_local(a["firetime"], tz)),
            "LatenessSeconds": round((a["firetime"] - a["duetime"]).total_seconds(), 3),
            "Late": (a["firetime"] - a["duetime"]).total_seconds() > LATE_AFTER,
            "ElapsedMs": a["elapsedms"], "StatusCode": a["statuscode"], "Success": bool(a["success"]),
            "Excerpt": a["excerpt"], "Error": a["error"], "Dispatcher": a["dispatcher"]}


def form_of_json(item: Any) -> FormValues | None:
    """One batch item (a JSON object) as the form values the legacy binder reads."""
    if not isinstance(item, dict):
        return None
    pairs: list[tuple[str, str]] = []
    for key, value in item.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, (dict, list)):
                v = json.dumps(v, ensure_ascii=False)
            pairs.append((str(key), str(v)))
    return FormValues(pairs)


def add_delayed_routes(app: FastAPI, store: Store, guarded, form_of, tz_of: Callable[[], str]) -> Configs:
    """Register /api/DelayTask/* on the legacy app (its paths are lowercased by then)."""
    configs = Configs(store)
    delayed = store.delayed

    async def insert(rows: list[dict[str, Any]]) -> list[str]:
        return await asyncio.wrap_future(delayed.create(rows))

    @app.post("/api/delaytask/create")
    async def create(request: Request):
        async def act(m, user: SystemUser):
            settings = configs.get()
            policy = targets.NetworkPolicy.from_settings(settings)
            try:
                row = row_for_create(m, user, tz_of(), settings.get("DelayTask_DelayPattern", "Relative"),
                                     utcnow_naive(), policy)
                await targets.acheck_resolved(row["notifyurl"], "NotifyUrl", policy)
            except (Refused, targets.TargetError) as exc:
                return R.failed_at(str(exc), exc.field if isinstance(exc, Refused) else "NotifyUrl")
            try:
                await insert([row])
            except DuplicateIds:
                return R.failed("任务ID已存在!", row["id"])
            except Exception:
                return R.failed("数据保存失败!")
            return R.ok("任务启动成功!", row["id"])

        return await guarded(request, DELAYED_INFO, await form_of(request), act)

    @app.post(BATCH_PATH)
    async def create_batch(request: Request):
        """Extension: a JSON array of ScheduleDelayedInfo objects, all created or none."""
        try:
            items = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError):
            items = None
        if not isinstance(items, list) or not items:
            return R.validation_problem({"": ["The body must be a non-empty JSON array of delayed tasks."]})
        if len(items) > MAX_BATCH_ITEMS:
            return R.validation_problem({"": [f"At most {MAX_BATCH_ITEMS} delayed tasks per batch."]})
        models, errors = [], {}
        tz = tz_of()
        for i, item in enumerate(items):
            values = form_of_json(item)
            if values is None:
                errors[f"[{i}]"] = ["Each item must be a JSON object."]
                continue
            m, errs = bind(DELAYED_INFO, values, tz)
            errors.update({f"[{i}].{k}": v for k, v in errs.items()})
            models.append(m)
            if len(errors) > 100:
                break
        if errors:
            return R.validation_problem(errors)

        async def act(_m, user: SystemUser):
            settings = configs.get()
            now, pattern = utcnow_naive(), settings.get("DelayTask_DelayPattern", "Relative")
            policy = targets.NetworkPolicy.from_settings(settings)
            rows = []
            for i, m in enumerate(models):
                try:
                    rows.append(row_for_create(m, user, tz, pattern, now, policy))
                    await targets.acheck_resolved(rows[-1]["notifyurl"], "NotifyUrl", policy)
                except (Refused, targets.TargetError) as exc:
                    return R.failed(f"第 {i} 项：{exc}", {"Index": i})
            try:
                ids = await insert(rows)
            except DuplicateIds as exc:
                return R.failed("任务ID已存在!", {"Ids": exc.ids[:100]})
            except Exception:
                return R.failed("数据保存失败!")
            return R.ok(f"已创建 {len(ids)} 个延时任务", ids)

        return await guarded(request, [], FormValues([]), act)

    @app.get("/api/delaytask/querylist")
    async def query_list(request: Request):
        async def act(m, _user):
            page, size = page_bounds(m["pageNumber"], m["pageSize"], 20)
            tz = tz_of()
            end = m["endDate"]
            if end is not None and end.time() == datetime.min.time() and end.date() < datetime.max.date():
                end += timedelta(days=1)  # a bare date means through the end of that day, as the console's picker
            total, rows = await asyncio.to_thread(
                delayed.query, start=m["startDate"] and to_utc(m["startDate"], tz),
                end=end and to_utc(end, tz), status=m["status"], topic=m["topic"],
                content_key=m["contentKey"], source_app=m["sourceApp"], offset=(page - 1) * size, limit=size)
            return R.ok("请求数据成功", {"total": total, "rows": [view(r, tz) for r in rows]})

        return await guarded(request, LIST_QUERY, FormValues(request.query_params.multi_items()), act)

    @app.get("/api/delaytask/querydetail")
    async def query_detail(request: Request):
        async def act(m, _user):
            if m["id"] is None:
                return R.ok("请求数据成功", None)
            row = await asyncio.to_thread(delayed.get, str(m["id"]))
            if row is None:
                return R.ok("请求数据成功", None)
            tz = tz_of()
            attempts = await asyncio.to_thread(delayed.attempts_of, row["id"])
            return R.ok("请求数据成功", {**view(row, tz), "AttemptLog": [attempt_view(a, tz) for a in attempts]})

        return await guarded(request, ID_FIELD, FormValues(request.query_params.multi_items()), act)

    messages = {
        "void": ("任务已作废!", "当前状态下不能作废!"),
        "execute": ("任务已提交执行!", "当前状态下不能执行!"),
        "reset": ("任务已重置!", "任务已就绪，无需重置!"),
    }

    def console_action(action: str):
        async def endpoint(request: Request):
            async def act(m, _user):
                if m["id"] is None:
                    return R.failed("任务不存在!")
                result, _before = await asyncio.to_thread(delayed.transition, str(m["id"]), action, utcnow_naive())
                if result == "missing":
                    return R.failed("任务不存在!")
                if result == "state":
                    return R.failed(messages[action][1], str(m["id"]))
                return R.ok(messages[action][0], str(m["id"]))

            return await guarded(request, ID_FIELD, id_from_form_or_query(
                await form_of(request), request.query_params.multi_items()), act)

        endpoint.__name__ = f"delayed_{action}"
        return endpoint

    # the console's action names (Stop = 作废, Start = 重置) answer too
    for path, action in (("void", "void"), ("stop", "void"), ("execute", "execute"), ("reset", "reset"),
                         ("start", "reset")):
        app.post(f"/api/delaytask/{path}")(console_action(action))
    return configs
