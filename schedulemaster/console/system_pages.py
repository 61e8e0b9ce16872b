"""The console's system pages: nodes, accounts, settings, the system log and one's own
password. Thin pages over the legacy ``/api/Node``, ``/api/Account`` and ``/api/System``
endpoints, called as the signed-in account (its role decides, there, what it may do)."""

from __future__ import annotations

import math
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schedulemaster.console.web import Visit, flash_to, outcome, page_number, parse_uuid, said
from schedulemaster.deployments.tasks import record_of
from schedulemaster.ms_compat import roles

NODE_ACTIONS = ("enable", "disable", "delete")
ACCOUNT_ACTIONS = ("enable", "disable", "delete", "resetpwd")
LOG_PAGE = 50
ACCOUNT_PAGE = 50
_NODE_NAME = re.compile(r"^[^/%\x00-\x1f]{1,100}$")


class SystemPages:
    def __init__(self, console):
        self.c = console

    def routes(self) -> list[Route]:
        return [
            Route("/nodes", self.nodes, methods=["GET"]),
            Route("/nodes/{name}/edit", self.node_edit, methods=["POST"]),
            Route("/nodes/{name}/{action}", self.node_action, methods=["POST"]),
            Route("/accounts", self.accounts, methods=["GET"]),
            Route("/accounts/new", self.account_create, methods=["POST"]),
            Route("/accounts/{id:int}/edit", self.account_edit, methods=["POST"]),
            Route("/accounts/{id:int}/{action}", self.account_action, methods=["POST"]),
            Route("/settings", self.settings, methods=["GET"]),
            Route("/settings", self.settings_save, methods=["POST"]),
            Route("/log", self.system_log, methods=["GET"]),
            Route("/password", self.password, methods=["GET"]),
            Route("/password", self.password_save, methods=["POST"]),
        ]

    async def _read(self, request: Request, visit: Visit, path: str, params: dict | None = None):
        """(data, error message) of a legacy read as this account."""
        ok, message, errors = outcome(answer := await self.c.caller.call(request, visit.user, "GET", path,
                                                                         params=params))
        if not ok:
            return None, said(message, errors)
        return answer.json().get("Data"), ""

    def _page(self, request: Request, visit: Visit, template: str, data, error: str, **values):
        if error == "forbidden":
            return self.c.forbidden(request, visit)
        return self.c.render(template, request, visit.lang, status_code=400 if error else 200, visit=visit,
                             error=error, data=data, **values)

    # ---- nodes ------------------------------------------------------------------
    async def nodes(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        data, error = await self._read(request, visit, "/api/Node/QueryList")
        may = {a: roles.may(visit.user.role, f"/api/node/{a}") for a in (*NODE_ACTIONS, "edit")}
        return self._page(request, visit, "nodes.html", data, error, may=may)

    async def node_action(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, _form = signed
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in NODE_ACTIONS or not _NODE_NAME.match(name):
            return Response(status_code=404)
        return await self.c.relay(request, visit, f"/api/Node/{action}", [("name", name)], "/nodes")

    async def node_edit(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        name = request.path_params["name"]
        if not _NODE_NAME.match(name):
            return Response(status_code=404)
        fields = [("name", name)] + [(k, form[k][0].strip()) for k in ("priority", "maxConcurrency")
                                     if form.get(k) and form[k][0].strip()]
        return await self.c.relay(request, visit, "/api/Node/Edit", fields, "/nodes")

    # ---- accounts ---------------------------------------------------------------
    async def accounts(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        name = request.query_params.get("name", "")[:50]
        page = page_number(request, 10_000)
        data, error = await self._read(request, visit, "/api/Account/QueryList",
                                       {"name": name, "pageNumber": page, "pageSize": ACCOUNT_PAGE})
        total = (data or {}).get("total", 0)
        return self._page(request, visit, "accounts.html", data, error, name=name, page=page,
                          pages=max(1, math.ceil(total / ACCOUNT_PAGE)), roles=roles.ROLES)

    async def account_create(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        fields = [(k, form[k][0]) for k in ("UserName", "RealName", "Password", "Phone", "Email", "Role")
                  if form.get(k) and form[k][0] != ""]
        return await self.c.relay(request, visit, "/api/Account/Create", fields, "/accounts")

    async def account_edit(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        fields = [("Id", str(request.path_params["id"]))] + [
            (k, form[k][0]) for k in ("RealName", "Phone", "Email", "Role") if form.get(k) and form[k][0] != ""]
        return await self.c.relay(request, visit, "/api/Account/Edit", fields, "/accounts")

    async def account_action(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, _form = signed
        action = request.path_params["action"]
        if action not in ACCOUNT_ACTIONS:
            return Response(status_code=404)
        return await self.c.relay(request, visit, f"/api/Account/{action}", [("id", str(request.path_params["id"]))],
                                  "/accounts")

    # ---- settings ---------------------------------------------------------------
    async def settings(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        data, error = await self._read(request, visit, "/api/System/Configs")
        groups: dict[str, list] = {}
        for row in data or []:
            groups.setdefault(row["Group"], []).append(row)
        return self._page(request, visit, "settings.html", data, error, groups=groups)

    async def settings_save(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        fields = [(k, v[0]) for k, v in form.items() if k != "csrf" and v]
        return await self.c.relay(request, visit, "/api/System/SaveConfig", fields, "/settings")

    # ---- the system log ---------------------------------------------------------
    async def system_log(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        f = {k: request.query_params.get(k, "")[:40] for k in ("category", "startDate", "endDate", "taskId")}
        page = page_number(request, 100_000)
        data, error = await self._read(request, visit, "/api/System/QueryLogs", {
            **{k: v for k, v in f.items() if v}, "pageNumber": page, "pageSize": LOG_PAGE})
        total = (data or {}).get("total", 0)
        # a line of the dispatcher's own runs has a deployment that is no task: no task link
        ids = {parse_uuid(row.get("ScheduleId")) for row in (data or {}).get("rows", [])} - {None}
        rows = (await self.c.service().repo.rows(list(ids)))[1] if ids else []
        tasks = {str(r.id) for r in (record_of(row) for row in rows) if r is not None}
        return self._page(request, visit, "log.html", data, error, f=f, page=page,
                          pages=max(1, math.ceil(total / LOG_PAGE)), prefect_ui=self.c.prefect_ui, tasks=tasks)

    # ---- one's own password -----------------------------------------------------
    async def password(self, request: Request) -> Response:
        visit = await self.c.visit(request)
        if visit is None:
            return self.c.to_login(request)
        return self.c.render("password.html", request, visit.lang, visit=visit, error="")

    async def password_save(self, request: Request) -> Response:
        signed = await self.c.signed_post(request)
        if isinstance(signed, Response):
            return signed
        visit, form = signed
        fields = [(k, form[k][0]) for k in ("OldPassword", "NewPassword") if form.get(k)]
        ok, message, errors = outcome(await self.c.caller.call(request, visit.user, "POST", "/api/Account/ChangePwd",
                                                               form=fields))
        if not ok:
            return self.c.render("password.html", request, visit.lang, status_code=400, visit=visit,
                                 error=said(message, errors))
        # the session was signed in with the old password: it has ended (console_sessions)
        return flash_to("/login", message, True)
