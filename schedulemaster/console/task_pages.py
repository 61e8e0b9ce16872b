"""The console's task pages: the list, a task with its runs, the create and edit form, the
actions, and the cron preview the form asks for as a cron is typed."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schedulemaster.console.web import page_number, Visit, flash_to, outcome, parse_uuid
from schedulemaster.console.labels import STATUS_WORDS, translator
from schedulemaster.deployments import quartz
from schedulemaster.deployments.policy import DEFAULT as DEFAULT_POLICY
from schedulemaster.deployments.policy import FIELDS as POLICY_FIELDS
from schedulemaster.deployments.tasks import Status
from schedulemaster.ms_compat import roles

PAGE_SIZE = 20
TASK_ACTIONS = ("start", "pause", "resume", "stop", "runonce", "delete")
#: the form's fields, as the legacy Create and Edit bind them
TASK_FIELDS = ("Title", "MetaType", "RunLoop", "CronExpression", "StartDate", "EndDate", "Remark",
               "AssemblyName", "ClassName", "CustomParamsJson", "HttpRequestUrl", "HttpMethod",
               "HttpContentType", "HttpHeaders", "HttpBody", "Executors", "Keepers", "Nexts", "RunNow",
               *POLICY_FIELDS)
#: sent even when empty: "" puts them back to their defaults (deployments/policy.py)
CLEARABLE_FIELDS = ("FailOnNon2xx", "ExpectedText")
LIST_FIELDS = ("Executors",)  # one value per line in the form
CHOSEN_FIELDS = ("Keepers", "Nexts")  # chosen by name: accounts' check boxes, a list of task titles
NEXT_CHOICES = 500  # the newest tasks offered as children (plus those already chosen)


class TaskPages:
    def __init__(self, console):
        self.c = console

    def routes(self) -> list[Route]:
        return [
            Route("/tasks", self.task_list, methods=["GET"]),
            Route("/tasks/new", self.task_form, methods=["GET"]),
            Route("/tasks/new", self.task_save, methods=["POST"]),
            Route("/tasks/{id}", self.task_detail, methods=["GET"]),
            Route("/tasks/{id}/edit", self.task_form, methods=["GET"]),
            Route("/tasks/{id}/edit", self.task_save, methods=["POST"]),
            Route("/tasks/{id}/runs/{trace}", self.run_logs, methods=["GET"]),
            Route("/tasks/{id}/{action}", self.task_action, methods=["POST"]),
            Route("/cron/preview", self.cron_preview, methods=["GET"]),
        ]

    async def task_list(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        service = self.c.service()
        title = request.query_params.get("title", "")[:100].strip()
        status_word = request.query_params.get("status", "")
        status = {w: Status(n) for n, w in STATUS_WORDS.items()}.get(status_word)
        page = page_number(request, 100_000)
        total, records = await service.repo.page(title or None, (page - 1) * PAGE_SIZE, PAGE_SIZE, status)
        stats = await service.repo.run_stats_of([r.id for r in records])
        rows = []
        for rec in records:
            count, last = stats.get(rec.id, (0, None))
            rows.append({"id": str(rec.id), "title": rec.spec.Title, "status": STATUS_WORDS.get(int(rec.status), "?"),
                         "cron": rec.spec.CronExpression if rec.spec.RunLoop else "",
                         "next": _fmt(service.next_run_time(rec)), "last": _fmt(service.to_local(last)),
                         "runs": count, "executors": ", ".join(rec.spec.Executors)})
        return self.c.render("tasks.html", request, visit.lang, visit=visit, rows=rows, total=total, page=page,
                             pages=max(1, math.ceil(total / PAGE_SIZE)), title=title, status=status_word,
                             may=self.may(visit))

    @staticmethod
    def may(visit: Visit) -> dict[str, bool]:
        return {a: roles.may(visit.user.role, f"/api/task/{a}") for a in (*TASK_ACTIONS, "create", "edit")}

    async def task_action(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, _form = signed
        action, task_id = request.path_params["action"], parse_uuid(request.path_params["id"])
        if action not in TASK_ACTIONS or task_id is None:
            return Response(status_code=404)
        # a deleted task has no page to go back to
        back = "/tasks" if action == "delete" else f"/tasks/{task_id}"
        return await self.c.relay(request, visit, f"/api/Task/{action}", [("id", str(task_id))], back)

    async def task_detail(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        service = self.c.service()
        task_id = parse_uuid(request.path_params["id"])
        rec = await service.repo.read(task_id) if task_id else None
        if rec is None:
            return self.c.render("message.html", request, visit.lang, status_code=404, visit=visit,
                                 message=translator(visit.lang)("not_found"))
        entity = await service.entity(rec)
        traces = await self.c.caller.call(request, visit.user, "GET", "/api/Task/QueryTraces",
                                          params={"id": str(task_id), "pageNumber": 1, "pageSize": 20})
        ok, _m, _e = outcome(traces)
        runs = (traces.json().get("Data") or {}).get("rows", []) if ok else []
        return self.c.render("task.html", request, visit.lang, visit=visit, task=entity, spec=rec.spec, runs=runs,
                             status=STATUS_WORDS.get(int(rec.status), "?"), may=self.may(visit),
                             prefect_ui=self.c.prefect_ui)

    async def run_logs(self, request: Request) -> Response:
        """One run's log lines, oldest first (the original's 运行记录 → 日志)."""
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        task_id, trace_id = parse_uuid(request.path_params["id"]), parse_uuid(request.path_params["trace"])
        if task_id is None or trace_id is None:
            return Response(status_code=404)
        answer = await self.c.caller.call(request, visit.user, "GET", "/api/Task/QueryTraceLogs",
                                          params={"id": str(task_id), "traceId": str(trace_id)})
        ok, message, _e = outcome(answer)
        if message == "forbidden":
            return self.c.forbidden(request, visit)
        lines = (answer.json().get("Data") or []) if ok else []
        return self.c.render("run_logs.html", request, visit.lang, visit=visit, task_id=str(task_id),
                             trace_id=str(trace_id), lines=lines, prefect_ui=self.c.prefect_ui)

    async def task_form(self, request: Request, values: dict[str, str] | None = None,
                        errors: dict[str, list[str]] | None = None, message: str = "",
                        status_code: int = 200) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        task_id = request.path_params.get("id")
        if values is None:
            values = {"MetaType": "2", "RunLoop": "true", "HttpMethod": "GET", "HttpContentType": "application/json",
                      **DEFAULT_POLICY.form_values()}
            if task_id:
                rec = await self.c.service().repo.read(parse_uuid(task_id)) if parse_uuid(task_id) else None
                if rec is None:
                    return self.c.render("message.html", request, visit.lang, status_code=404, visit=visit,
                                         message=translator(visit.lang)("not_found"))
                values = _form_values(rec.spec)
        accounts, nexts = await self.choices(task_id, values.get("Nexts") or [])
        return self.c.render("task_form.html", request, visit.lang, status_code=status_code, visit=visit,
                             task_id=task_id, v=values, errors=errors or {}, message=message,
                             accounts=accounts, next_choices=nexts)

    async def choices(self, task_id: str | None, chosen: list[str]) -> tuple[list, list[tuple[str, str]]]:
        """The accounts that may keep a task, and the tasks offered as its children: the newest
        NEXT_CHOICES, plus the chosen ones further back (by title; a chosen id that is no task
        stays offered as itself, so the form's refusal can name it)."""
        accounts = [u for u in await asyncio.to_thread(self.c.store.list_users) if u.status == 1]
        repo = self.c.service().repo
        _total, newest = await repo.page(None, 0, NEXT_CHOICES)
        offered = {str(r.id): r.spec.Title for r in newest if str(r.id) != task_id}
        for missing in [c for c in chosen if c not in offered]:
            rec = await repo.read(parse_uuid(missing)) if parse_uuid(missing) else None
            offered[missing] = rec.spec.Title if rec else missing
        return accounts, sorted(offered.items(), key=lambda item: item[1])

    async def task_save(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        task_id = request.path_params.get("id")
        if task_id is not None and parse_uuid(task_id) is None:
            return Response(status_code=404)
        values: dict = {k: (form.get(k) or [""])[0] for k in TASK_FIELDS if k not in CHOSEN_FIELDS}
        values["RunLoop"] = "true" if values["RunLoop"] else "false"
        values["RunNow"] = "true" if values["RunNow"] else "false"
        fields = [(k, v) for k, v in values.items() if k not in LIST_FIELDS and (v != "" or k in CLEARABLE_FIELDS)]
        for k in LIST_FIELDS:
            fields += [(k, line.strip()) for line in values[k].splitlines() if line.strip()]
        for k in CHOSEN_FIELDS:
            values[k] = [v for v in form.get(k, []) if v][:1000]
            fields += [(k, v) for v in values[k]]
        if task_id:
            fields.append(("Id", task_id))
        answer = await self.c.caller.call(request, visit.user, "POST", "/api/Task/Edit" if task_id else "/api/Task/Create",
                                          form=fields)
        ok, message, errors = outcome(answer)
        if message == "forbidden":
            return self.c.forbidden(request, visit)
        if not ok:
            return await self.task_form(request, values, errors, message, status_code=400)
        return flash_to(f"/tasks/{task_id or answer.json().get('Data')}", message, True)

    async def cron_preview(self, request: Request) -> Response:
        """The next five fire times of a cron as it is typed, in the system's zone."""
        if await self.c.visit(request) is None:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        text = request.query_params.get("cron", "")[:100]
        tz = self.c.service().tz
        try:
            fires = quartz.parse(text).next_fires(5, datetime.now(timezone.utc), tz)
        except quartz.CronError as exc:
            return JSONResponse({"error": str(exc)})
        zone = ZoneInfo(tz)
        return JSONResponse({"fires": [f.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") for f in fires]})


def _fmt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _form_values(spec) -> dict[str, str]:
    """A task's spec as the form shows it."""
    http = spec.Http
    return {
        "Title": spec.Title, "MetaType": str(spec.MetaType), "RunLoop": "true" if spec.RunLoop else "false",
        "CronExpression": spec.CronExpression or "", "StartDate": (spec.StartDate or "").replace("T", " "),
        "EndDate": (spec.EndDate or "").replace("T", " "), "Remark": spec.Remark or "",
        "AssemblyName": spec.AssemblyName or "", "ClassName": spec.ClassName or "",
        "CustomParamsJson": spec.CustomParamsJson or "",
        "HttpRequestUrl": http.RequestUrl if http else "", "HttpMethod": http.Method if http else "GET",
        "HttpContentType": http.ContentType if http else "", "HttpHeaders": (http.Headers or "") if http else "",
        "HttpBody": (http.Body or "") if http else "",
        "Executors": "\n".join(spec.Executors), "Keepers": [str(k) for k in spec.Keepers],
        "Nexts": list(spec.Nexts), "RunNow": "false", **spec.Policy.form_values(),
    }
