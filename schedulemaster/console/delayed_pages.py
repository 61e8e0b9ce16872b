"""The console's delayed-task pages: the list with the original's filters, a task with each of
its attempts, void / execute / reset, and the create form. All through the legacy
``/api/DelayTask/*`` endpoints as the signed-in account."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schedulemaster.console.labels import translator
from schedulemaster.console.web import page_number, flash_to, outcome, parse_uuid
from schedulemaster.ms_compat import roles
from schedulemaster.store.delayed_store import ACTIONS_BY_STATUS

PAGE_SIZE = 20
ACTIONS = ("void", "execute", "reset")
ALLOWED = {int(status): actions for status, actions in ACTIONS_BY_STATUS.items()}
FILTERS = ("startDate", "endDate", "status", "topic", "contentKey", "sourceApp")
FORM_FIELDS = ("SourceApp", "Topic", "ContentKey", "DelayTimeSpan", "DelayAbsoluteTime", "NotifyUrl",
               "NotifyDataType", "NotifyBody", "Remark", "DelayPattern")


class DelayedPages:
    def __init__(self, console):
        self.c = console

    def routes(self) -> list[Route]:
        return [
            Route("/delayed", self.listing, methods=["GET"]),
            Route("/delayed/new", self.form, methods=["GET"]),
            Route("/delayed/new", self.save, methods=["POST"]),
            Route("/delayed/{id}", self.detail, methods=["GET"]),
            Route("/delayed/{id}/{action}", self.action, methods=["POST"]),
        ]

    @staticmethod
    def may(role: str) -> dict[str, bool]:
        return {a: roles.may(role, f"/api/delaytask/{a}") for a in (*ACTIONS, "create")}

    async def listing(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        filters = {k: request.query_params.get(k, "")[:100] for k in FILTERS}
        page = page_number(request, 100_000)
        answer = await self.c.caller.call(request, visit.user, "GET", "/api/DelayTask/QueryList", params={
            **{k: v for k, v in filters.items() if v}, "pageNumber": page, "pageSize": PAGE_SIZE})
        ok, message, errors = outcome(answer)
        data = (answer.json().get("Data") or {}) if ok else {}
        total = data.get("total", 0)
        return self.c.render("delayed.html", request, visit.lang, status_code=200 if ok else 400, visit=visit,
                             rows=data.get("rows", []), total=total, page=page,
                             pages=max(1, math.ceil(total / PAGE_SIZE)), f=filters, errors=errors,
                             message="" if ok else message, allowed=ALLOWED, may=self.may(visit.user.role))

    async def detail(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        task_id = parse_uuid(request.path_params["id"])
        answer = await self.c.caller.call(request, visit.user, "GET", "/api/DelayTask/QueryDetail",
                                          params={"id": str(task_id)}) if task_id else None
        ok, _m, _e = outcome(answer) if answer is not None else (False, "", {})
        row = answer.json().get("Data") if ok else None
        if row is None:
            return self.c.render("message.html", request, visit.lang, status_code=404, visit=visit,
                                 message=translator(visit.lang)("not_found"))
        return self.c.render("delayed_task.html", request, visit.lang, visit=visit, d=row,
                             allowed=ALLOWED, may=self.may(visit.user.role))

    async def action(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, _form = signed
        action, task_id = request.path_params["action"], parse_uuid(request.path_params["id"])
        if action not in ACTIONS or task_id is None:
            return Response(status_code=404)
        return await self.c.relay(request, visit, f"/api/DelayTask/{action}", [("id", str(task_id))],
                                  f"/delayed/{task_id}")

    async def form(self, request: Request, values: dict[str, str] | None = None,
                   errors: dict[str, list[str]] | None = None, message: str = "", status_code: int = 200) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        values = values if values is not None else {"DelayTimeSpan": "60", "NotifyDataType": "application/json",
                                                    "NotifyBody": "{}", "DelayPattern": "Relative"}
        return self.c.render("delayed_form.html", request, visit.lang, status_code=status_code, visit=visit,
                             v=values, errors=errors or {}, message=message)

    async def save(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        values = {k: (form.get(k) or [""])[0] for k in FORM_FIELDS}
        answer = await self.c.caller.call(request, visit.user, "POST", "/api/DelayTask/Create",
                                          form=[(k, v) for k, v in values.items() if v != ""])
        ok, message, errors = outcome(answer)
        if message == "forbidden":
            return self.c.forbidden(request, visit)
        if not ok:
            return await self.form(request, values, errors, message, status_code=400)
        return flash_to(f"/delayed/{answer.json().get('Data')}", message, True)

