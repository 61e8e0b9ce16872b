"""The legacy HTTP API on :30000 (FastAPI), answering existing ScheduleMaster clients.

Request order follows ASP.NET Core 3.1's: routing (case-insensitive paths; 404/405), then
model binding and validation (400 ValidationProblemDetails), then the auth filter (401),
then the action (200 with the envelope, whatever the business outcome).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from schedulemaster.body_limit import BodyAborted, BodyStalled, BodyTooLarge, bounded, declared_too_large
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.deployments.variables import mirror_settings
from schedulemaster.ms_compat import responses as R
from schedulemaster.ms_compat import roles
from schedulemaster.ms_compat.admin_api import add_admin_routes, add_audit_route
from schedulemaster.ms_compat.audit import AUDITED, AuditTrail
from schedulemaster.ms_compat.auth import Authenticator
from schedulemaster.ms_compat.binding import (ID_ONLY, QUERY_LIST, SCHEDULE_INFO, FormValues, bind,
                                              id_from_form_or_query)
from schedulemaster.ms_compat.delayed_api import BATCH_LIMIT, BATCH_PATH, add_delayed_routes
from schedulemaster.ms_compat.history_api import add_history_routes
from schedulemaster.ms_compat.node_api import add_node_routes
from schedulemaster.ms_compat.task_api import SERVICE_ERROR, TaskError, TaskService
from schedulemaster.packages import MAX_PACKAGE_BYTES, PackageError
from schedulemaster.store.db import Store

log = logging.getLogger("schedulemaster.api")

MAX_BODY_BYTES = 1024 * 1024
UPLOAD_PATH = "/api/task/uploadplugin"
UPLOAD_LIMIT = MAX_PACKAGE_BYTES + MAX_BODY_BYTES  # the package plus the multipart around it
BODY_LIMITS = {UPLOAD_PATH: UPLOAD_LIMIT, BATCH_PATH: BATCH_LIMIT}
BODY_TOTAL_SECONDS = 60.0  # ... or that is not complete after this long (1 MiB bodies)
LARGE_BODY_TOTAL_SECONDS = 600.0  # ... an upload or a batch


async def _form(request: Request) -> FormValues:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        try:
            form = await request.form(max_files=10, max_fields=5000)
        except BodyAborted:
            raise
        except Exception:  # malformed multipart, too many parts, bad encoding
            values = FormValues([])
            values.broken = True
            return values
        return FormValues(form.multi_items())
    return FormValues([])  # a JSON (or any other) body binds nothing, as in ASP.NET


class LegacyPipeline:
    """Case-insensitive paths, body limits, and never a 500 (the legacy failure envelope instead).

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` wraps every request in
    an extra task and stream, which halved the DelayTask/Create rate (bench/delayed.py)."""

    def __init__(self, app, auth: Authenticator | None = None):
        self.app = app
        self.auth = auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # ASP.NET routes are case-insensitive: /api/task/create == /api/Task/Create.
        scope["path"] = scope["path"].lower().rstrip("/") or "/"
        limit = BODY_LIMITS.get(scope["path"], MAX_BODY_BYTES)
        if declared_too_large(scope, limit):
            return await R.client_error(413)(scope, receive, send)
        if scope["path"] in BODY_LIMITS and self.auth is not None:
            # The endpoints that take large bodies check the caller before reading one: a
            # stranger must not make the server read (and parse) 16-60 MiB to get a 401.
            headers = {k: v for k, v in scope["headers"] if k in (b"ms_auth_user", b"ms_auth_secret")}
            client = scope.get("client")
            user = await self.auth.check(_header(headers.get(b"ms_auth_user")), _header(headers.get(b"ms_auth_secret")),
                                         client[0] if client else "")
            if user is None:
                return await R.client_error(401)(scope, receive, send)
        started = False
        counted_receive = bounded(receive, limit,
                                  BODY_TOTAL_SECONDS if limit <= MAX_BODY_BYTES else LARGE_BODY_TOTAL_SECONDS)

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await R.client_error(413)(scope, receive, send)
        except BodyStalled:
            log.info("%s: the request body stopped arriving; cut off", scope["path"])
            if not started:
                await R.client_error(408)(scope, receive, send)
        except Exception:
            log.exception("unhandled error in %s", scope["path"])
            if not started:
                await R.failed(SERVICE_ERROR)(scope, receive, send)


def _header(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def flat_spec(spec: TaskSpec) -> dict[str, Any]:
    """A task spec as the form's fields (the Http options flattened), for the audit's diff."""
    wire = spec.wire()
    http = wire.get("Http") or {}
    out = {k: v for k, v in wire.items() if k not in ("Http", "StartedAt", "CreateTime")}
    out.update({f"Http{k}": v for k, v in http.items()})
    return out


def create_app(store: Store, service_factory: Callable[[], Awaitable[TaskService]],
               on_shutdown: Callable[[], Awaitable[None]] | None = None, packages=None,
               info: dict[str, Any] | None = None) -> FastAPI:
    auth = Authenticator(store)
    trail = AuditTrail(store.engine)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["service"] = await service_factory()
        yield
        if on_shutdown:
            await on_shutdown()

    app = FastAPI(title="ScheduleMaster legacy API", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)

    app.add_middleware(LegacyPipeline, auth=auth)
    # the console (schedulemaster/console/app.py) signs in through the same check, so a
    # (user, address) has one budget of failures whichever door it knocks on
    app.state.authenticator = auth

    @app.exception_handler(StarletteHTTPException)
    async def http_errors(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:
            return Response(status_code=405, headers=exc.headers)
        if exc.status_code == 404:
            return Response(status_code=404)
        return R.client_error(exc.status_code) if exc.status_code in (401, 413, 415) else Response(status_code=exc.status_code)

    async def guarded(request: Request, fields, values: FormValues,
                      action: Callable[[dict[str, Any], Any], Awaitable[Response]]) -> Response:
        """Binding and validation (400), the account (401), its role (403), the action; and
        the audit trail of every change and every refused role."""
        if values.broken:
            return R.validation_problem({"": ["The request body is not a valid form."]})
        model, errors = bind(fields, values, state["service"].tz)
        if errors:
            return R.validation_problem(errors)
        address = request.client.host if request.client else ""
        user = await auth.check(request.headers.get("ms_auth_user"), request.headers.get("ms_auth_secret"), address)
        if user is None:
            return R.client_error(401)
        path = request.scope["path"]
        audited = path in AUDITED
        submitted = (model or {k: v[0] for k, v in values.plain.items()}) if audited else {}
        if not roles.may(user.role, path):
            if audited:
                await trail.record(actor=user.username, role=user.role, address=address, path=path,
                                   fields=submitted, outcome="forbidden", message=f"needs role {roles.required(path)}")
            return R.client_error(403)
        before = await snapshot(path, model) if audited else None
        try:
            response = await action(model, user)
        except TaskError as exc:
            response = R.failed_at(str(exc), exc.field)
        if audited:
            await audit_response(user, address, path, submitted, model, before, response)
        return response

    async def snapshot(path: str, model: dict[str, Any]) -> dict[str, Any] | None:
        """What an edit changes, read before it (the trail keeps old -> new)."""
        if path == "/api/task/edit" and model.get("Id"):
            rec = await state["service"].repo.read(model["Id"])
            return flat_spec(rec.spec) if rec else None
        if path == "/api/account/edit" and model.get("Id"):
            u = await asyncio.to_thread(store.get_user, model["Id"])
            return {"RealName": u.realname, "Phone": u.phone, "Email": u.email, "Role": u.role} if u else None
        return None

    async def audit_response(user, address, path, submitted, model, before, response) -> None:
        try:
            body = json.loads(response.body)
        except (ValueError, AttributeError):
            body = {}
        ok = isinstance(body, dict) and body.get("Success") is True
        data = body.get("Data") if isinstance(body, dict) else None
        resource = None
        if path in ("/api/task/create", "/api/account/create") and ok:
            resource = str(data)
        elif path == "/api/task/uploadplugin" and ok and isinstance(data, dict):
            resource = str(data.get("Name"))
        fields = submitted
        if before is not None and ok:
            after = await snapshot(path, model)
            fields = {k: [before.get(k), (after or {}).get(k)] for k in sorted({*before, *(after or {})})
                      if before.get(k) != (after or {}).get(k)}
        await trail.record(actor=user.username, role=user.role, address=address, path=path, fields=fields,
                           outcome="ok" if ok else "refused",
                           message=str(body.get("Message", ""))[:500] if isinstance(body, dict) else "",
                           resource=resource)

    @app.get("/api/task/querylist")
    async def query_list(request: Request):
        values = FormValues(request.query_params.multi_items())

        async def act(m, _user):
            if m["pageNumber"] is None or m["pageSize"] is None:
                return R.failed("pageNumber 和 pageSize 必须在查询字符串中给出")
            return await state["service"].query_list(m["name"], m["pageNumber"], m["pageSize"])

        return await guarded(request, QUERY_LIST, values, act)

    @app.get("/api/task/querytaskdetail")
    async def query_detail(request: Request):
        values = FormValues(request.query_params.multi_items())
        return await guarded(request, ID_ONLY, values,
                             lambda m, _u: state["service"].query_detail(m["id"]))

    @app.post("/api/task/create")
    async def create(request: Request):
        return await guarded(request, SCHEDULE_INFO, await _form(request),
                             lambda m, u: state["service"].create(m, u))

    @app.post("/api/task/edit")
    async def edit(request: Request):
        return await guarded(request, SCHEDULE_INFO, await _form(request),
                             lambda m, u: state["service"].edit(m, u))

    def id_action(name: str):
        async def endpoint(request: Request):
            values = id_from_form_or_query(await _form(request), request.query_params.multi_items())

            async def act(m, _user):
                task_id: uuid.UUID | None = m["id"]
                return await getattr(state["service"], name)(task_id or uuid.UUID(int=0))

            return await guarded(request, ID_ONLY, values, act)

        endpoint.__name__ = name
        return endpoint

    for action in ("start", "pause", "resume", "stop", "delete"):
        app.post(f"/api/task/{action}")(id_action(action))
    app.post("/api/task/runonce")(id_action("run_once"))

    async def settings_saved() -> None:
        """Nodes read the settings from a Prefect Variable: refresh it on every save."""
        delayed_configs.invalidate()
        state["service"].configs.invalidate()
        await mirror_settings(state["service"].client, store)

    delayed_configs = add_delayed_routes(app, store, guarded, _form, lambda: state["service"].tz)

    add_admin_routes(app, store, guarded, _form, R.fmt_nullable_date, settings_saved)
    add_audit_route(app, guarded, trail, lambda: state["service"].tz)
    add_history_routes(app, guarded, lambda: state["service"].tz)
    add_node_routes(app, guarded, _form, lambda: state["service"])

    @app.post(UPLOAD_PATH)
    async def upload_plugin(request: Request):
        """Extension: the console's zip upload (POST /Schedule/Upload, field ``file``)."""
        files: list[Any] = []
        values = FormValues([])
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=1, max_fields=10, max_part_size=UPLOAD_LIMIT)
                files = [v for k, v in form.multi_items() if k.lower() == "file" and not isinstance(v, str)]
            except BodyAborted:
                raise
            except Exception:
                values.broken = True

        async def act(_m, _user):
            if not files:
                return R.failed("请选择要上传的插件包 (multipart 表单字段 file)")
            data = await files[0].read(MAX_PACKAGE_BYTES + 1)
            try:
                info = packages.save(files[0].filename or "", data)
            except PackageError as exc:
                return R.failed(f"插件包无效：{exc}")
            return R.ok("上传成功!", {"Name": info.name, "FileName": info.filename, "Sha256": info.sha256,
                                   "Size": info.size})

        return await guarded(request, [], values, act)

    @app.get("/api/system/info")
    async def system_info(request: Request):
        """Extension: where the Prefect API is and which zone cron runs in, so a client given
        only this API's URL (``schedulemaster.connect``) finds the rest."""
        async def act(_m, _user):
            return R.ok("请求数据成功", {**(info or {}), "TimeZone": state["service"].tz,
                                     "WorkPool": state["service"].work_pool})

        return await guarded(request, [], FormValues([]), act)

    @app.get("/api/health")
    async def health():
        return R.json_response({"status": "Healthy"})

    return app
