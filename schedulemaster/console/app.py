"""The console on the legacy port (``/`` on :30000), for what Prefect's UI has no page for.

Server-rendered (Jinja2, Prefect's own dependency) with one small script; no build step.
Every change goes through the legacy API in this process (``LegacyCaller``), signed as the
session's account: the same binding, validation, roles and audit trail as a legacy client,
no second copy of the rules. Pages read through the same task service the API uses.

Doors: a page needs a live session (``store/console_sessions.py``; cookie HttpOnly,
SameSite=Lax); every POST also needs the session's CSRF token, and the sign-in form a
double-submit token of its own. Templates escape everything they print.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote, urlencode
from zoneinfo import ZoneInfo

import httpx
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from schedulemaster.body_limit import BodyAborted
from schedulemaster.console.labels import DEFAULT_LANG, LANGS, STATUS_WORDS, translator
from schedulemaster.deployments import quartz
from schedulemaster.deployments.tasks import Status
from schedulemaster.ms_compat import roles
from schedulemaster.ms_compat.app import FIELD_HEADER
from schedulemaster.ms_compat.auth import Authenticator
from schedulemaster.ms_compat.secret import md5_hex
from schedulemaster.store import console_sessions as sessions
from schedulemaster.store.db import Store, SystemUser

log = logging.getLogger("schedulemaster.console")

SESSION_COOKIE = "sm_console"
LOGIN_COOKIE = "sm_console_login"  # the sign-in form's double-submit token
LANG_COOKIE = "sm_lang"
FLASH_COOKIE = "sm_flash"  # what the last action said, shown once on the next page
PAGE_SIZE = 20
MAX_FLASH = 300
MAX_FORM_FIELDS = 200
MAX_FORM_BYTES = 256 * 1024  # a task's form is a few KiB; its longest fields are 20,000 characters
TASK_ACTIONS = ("start", "pause", "resume", "stop", "runonce", "delete")
#: the form's fields, as the legacy Create and Edit bind them
TASK_FIELDS = ("Title", "MetaType", "RunLoop", "CronExpression", "StartDate", "EndDate", "Remark",
               "AssemblyName", "ClassName", "CustomParamsJson", "HttpRequestUrl", "HttpMethod",
               "HttpContentType", "HttpHeaders", "HttpBody", "Executors", "Keepers", "Nexts", "RunNow")
LIST_FIELDS = ("Executors", "Keepers", "Nexts")  # one value per line in the form
SECURITY_HEADERS = {
    # the one script is a file of this origin; nothing is framed, nothing inline runs
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
HERE = Path(__file__).parent


@dataclass
class Visit:
    """Who is asking: the account, its session, and the page's words."""
    user: SystemUser
    session: sessions.ConsoleSession
    lang: str


class LegacyCaller:
    """Calls into the legacy API of this process, signed as an account (its ms_auth headers are
    computed from the stored password hash, as a legacy client computes them from the password)."""

    def __init__(self, legacy_app):
        self.legacy_app = legacy_app

    async def call(self, request: Request, user: SystemUser, method: str, path: str,
                   form: list[tuple[str, str]] | None = None, params: dict[str, Any] | None = None) -> httpx.Response:
        secret = md5_hex(user.username + user.password + user.username)
        address = request.client.host if request.client else "127.0.0.1"
        transport = httpx.ASGITransport(app=self.legacy_app, client=(address, 0))
        headers = {"ms_auth_user": user.username, "ms_auth_secret": secret}
        if form is not None:
            headers["content-type"] = "application/x-www-form-urlencoded"
        async with httpx.AsyncClient(transport=transport, base_url="http://console.local", timeout=60) as client:
            return await client.request(method, path, params=params, headers=headers,
                                        content=urlencode(form) if form is not None else None)


def outcome(response: httpx.Response) -> tuple[bool, str, dict[str, list[str]]]:
    """(succeeded, message, errors by field) of a legacy answer: its envelope, or its 400."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 400 and isinstance(body, dict):
        errors = {k: [str(m) for m in v] for k, v in (body.get("errors") or {}).items()}
        return False, str(body.get("title") or "输入有误"), errors
    if response.status_code == 403:
        return False, "forbidden", {}
    if response.status_code != 200 or not isinstance(body, dict):
        return False, f"HTTP {response.status_code}", {}
    message = str(body.get("Message") or "")
    ok = body.get("Success") is True
    field = response.headers.get(FIELD_HEADER)
    return ok, message, ({field: [message]} if field and not ok else {})


class Console:
    """The ASGI app on the legacy port: ``/api/...`` to the legacy API, the rest to the console."""

    def __init__(self, legacy_app, store: Store, service_of: Callable[[], Any], prefect_ui: str | None):
        self.legacy_app = legacy_app
        self.store = store
        self.service_of = service_of
        self.prefect_ui = (prefect_ui or "").rstrip("/")
        self.auth = Authenticator(store)
        self.caller = LegacyCaller(legacy_app)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined)
        self.templates.filters["when"] = lambda value: (value or "")[:19].replace("T", " ")
        self.pages = Starlette(routes=[
            Route("/", self.home),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/lang/{lang}", self.switch_lang, methods=["GET"]),
            Route("/tasks", self.task_list, methods=["GET"]),
            Route("/tasks/new", self.task_form, methods=["GET"]),
            Route("/tasks/new", self.task_save, methods=["POST"]),
            Route("/tasks/{id}", self.task_detail, methods=["GET"]),
            Route("/tasks/{id}/edit", self.task_form, methods=["GET"]),
            Route("/tasks/{id}/edit", self.task_save, methods=["POST"]),
            Route("/tasks/{id}/{action}", self.task_action, methods=["POST"]),
            Route("/cron/preview", self.cron_preview, methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
        ])
        self.pages.add_exception_handler(Exception, self.failure)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan" or scope["path"].lower() == "/api" or scope["path"].lower().startswith("/api/"):
            return await self.legacy_app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
                return await Response("form too large", status_code=413)(scope, receive, send)
        return await self.pages(scope, receive, send)

    # ---- plumbing ---------------------------------------------------------------
    def render(self, name: str, request: Request, lang: str, status_code: int = 200, **values) -> HTMLResponse:
        flash = request.cookies.get(FLASH_COOKIE, "")
        html = self.templates.get_template(name).render(
            t=translator(lang), lang=lang, other_lang=LANGS[1 - LANGS.index(lang)], path=request.url.path,
            flash=unquote(flash[1:])[:MAX_FLASH], flash_ok=flash[:1] == "1", **values)
        response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    @staticmethod
    def lang_of(request: Request) -> str:
        lang = request.cookies.get(LANG_COOKIE, DEFAULT_LANG)
        return lang if lang in LANGS else DEFAULT_LANG

    async def visit(self, request: Request) -> Visit | None:
        token = request.cookies.get(SESSION_COOKIE) or ""
        session = await asyncio.to_thread(sessions.find_session, self.store.engine, token) if token else None
        if session is None:
            return None
        user = await asyncio.to_thread(self.store.get_user, session.user_id)
        if user is None or user.status != 1 or sessions.password_mark(user.password) != session.password_mark:
            return None
        return Visit(user, session, self.lang_of(request))

    @staticmethod
    def to_login(request: Request) -> Response:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return Response("sign in first", status_code=401, headers=SECURITY_HEADERS)

    async def form_of(self, request: Request) -> dict[str, list[str]] | None:
        """The posted form as lists of values, or None when it is not a sane form."""
        ctype = request.headers.get("content-type", "").lower()
        if not ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            return None
        try:
            form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_BYTES)
        except BodyAborted:
            raise
        except Exception:
            return None
        out: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                out.setdefault(key, []).append(value)
        return out

    @staticmethod
    def csrf_ok(visit: Visit, form: dict[str, list[str]] | None) -> bool:
        sent = (form or {}).get("csrf", [""])[0]
        return bool(sent) and hmac.compare_digest(sent.encode(), visit.session.csrf.encode())

    def forbidden(self, request: Request, visit: Visit) -> HTMLResponse:
        return self.render("message.html", request, visit.lang, status_code=403, visit=visit,
                           message=translator(visit.lang)("forbidden"))

    async def failure(self, request: Request, exc: Exception) -> Response:
        log.exception("console page %s failed", request.url.path)
        return HTMLResponse("<h1>出错了 / Something went wrong</h1><p><a href='/tasks'>/tasks</a></p>",
                            status_code=503, headers=SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        kinds = {"console.js": "text/javascript", "console.css": "text/css"}
        if name not in kinds:
            return Response(status_code=404)
        return Response((HERE / "static" / name).read_bytes(), media_type=kinds[name],
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})

    def service(self):
        service = self.service_of()
        if service is None:
            raise RuntimeError("the task service is not ready")
        return service

    # ---- sign in and out --------------------------------------------------------
    async def home(self, request: Request) -> Response:
        return RedirectResponse("/tasks" if await self.visit(request) else "/login", status_code=303)

    async def login_page(self, request: Request, error: str | None = None, status_code: int = 200) -> Response:
        if error is None and await self.visit(request):
            return RedirectResponse("/tasks", status_code=303)
        token = secrets.token_urlsafe(24)
        response = self.render("login.html", request, self.lang_of(request), status_code=status_code,
                               visit=None, csrf=token, error=error)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login",
                            secure=request.url.scheme == "https")
        return response

    async def login(self, request: Request) -> Response:
        t = translator(self.lang_of(request))
        form = await self.form_of(request) or {}
        sent, expected = form.get("csrf", [""])[0], request.cookies.get(LOGIN_COOKIE, "")
        if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return await self.login_page(request, t("expired_form"), 400)
        name = form.get("username", [""])[0].strip()
        password = form.get("password", [""])[0]
        if len(password) > 200:
            password = ""
        address = request.client.host if request.client else ""
        # the API's own check: the same rate limit on repeated failures for a name and address
        user = await self.auth.check(name, md5_hex(name + md5_hex(password) + name), address)
        if user is None or not password:
            return await self.login_page(request, t("bad_login"), 401)
        token, _csrf = await asyncio.to_thread(sessions.open_session, self.store.engine, user.id, user.password)
        await asyncio.to_thread(self.store.update_user, user.id, lastlogintime=datetime.now(timezone.utc))
        response = RedirectResponse("/tasks", status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", path="/",
                            max_age=int(sessions.LIFETIME.total_seconds()), secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        if not self.csrf_ok(visit, await self.form_of(request)):
            return Response("bad CSRF token", status_code=403, headers=SECURITY_HEADERS)
        await asyncio.to_thread(sessions.close_session, self.store.engine, request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def switch_lang(self, request: Request) -> Response:
        lang = request.path_params["lang"]
        response = RedirectResponse("/tasks", status_code=303)
        if lang in LANGS:
            response.set_cookie(LANG_COOKIE, lang, samesite="lax", path="/", max_age=365 * 86400)
        return response

    # ---- tasks ------------------------------------------------------------------
    async def task_list(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        service = self.service()
        title = request.query_params.get("title", "")[:100].strip()
        status_word = request.query_params.get("status", "")
        status = {w: Status(n) for n, w in STATUS_WORDS.items()}.get(status_word)
        try:
            page = max(1, min(int(request.query_params.get("page", "1")), 100_000))
        except ValueError:
            page = 1
        total, records = await service.repo.page(title or None, (page - 1) * PAGE_SIZE, PAGE_SIZE, status)
        stats = await service.repo.run_stats_of([r.id for r in records])
        rows = []
        for rec in records:
            count, last = stats.get(rec.id, (0, None))
            rows.append({"id": str(rec.id), "title": rec.spec.Title, "status": STATUS_WORDS.get(int(rec.status), "?"),
                         "cron": rec.spec.CronExpression if rec.spec.RunLoop else "",
                         "next": _fmt(service.next_run_time(rec)), "last": _fmt(service.to_local(last)),
                         "runs": count, "executors": ", ".join(rec.spec.Executors)})
        return self.render("tasks.html", request, visit.lang, visit=visit, rows=rows, total=total, page=page,
                           pages=max(1, math.ceil(total / PAGE_SIZE)), title=title, status=status_word,
                           may=self.may(visit))

    @staticmethod
    def may(visit: Visit) -> dict[str, bool]:
        return {a: roles.may(visit.user.role, f"/api/task/{a}") for a in (*TASK_ACTIONS, "create", "edit")}

    async def task_action(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        action = request.path_params["action"]
        task_id = _uuid(request.path_params["id"])
        form = await self.form_of(request)
        if not self.csrf_ok(visit, form):
            return Response("bad CSRF token", status_code=403, headers=SECURITY_HEADERS)
        if action not in TASK_ACTIONS or task_id is None:
            return Response(status_code=404)
        answer = await self.caller.call(request, visit.user, "POST", f"/api/Task/{action}", form=[("id", str(task_id))])
        ok, message, _errors = outcome(answer)
        if message == "forbidden":
            return self.forbidden(request, visit)
        return flash_to("/tasks" if action == "delete" and ok else f"/tasks/{task_id}", message, ok)

    async def task_detail(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        service = self.service()
        task_id = _uuid(request.path_params["id"])
        rec = await service.repo.read(task_id) if task_id else None
        if rec is None:
            return self.render("message.html", request, visit.lang, status_code=404, visit=visit,
                               message=translator(visit.lang)("not_found"))
        entity = await service.entity(rec)
        traces = await self.caller.call(request, visit.user, "GET", "/api/Task/QueryTraces",
                                        params={"id": str(task_id), "pageNumber": 1, "pageSize": 20})
        ok, _m, _e = outcome(traces)
        runs = (traces.json().get("Data") or {}).get("rows", []) if ok else []
        return self.render("task.html", request, visit.lang, visit=visit, task=entity, spec=rec.spec, runs=runs,
                           status=STATUS_WORDS.get(int(rec.status), "?"), may=self.may(visit),
                           prefect_ui=self.prefect_ui)

    async def task_form(self, request: Request, values: dict[str, str] | None = None,
                        errors: dict[str, list[str]] | None = None, message: str = "",
                        status_code: int = 200) -> Response:
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        task_id = request.path_params.get("id")
        if values is None:
            values = {"MetaType": "2", "RunLoop": "true", "HttpMethod": "GET", "HttpContentType": "application/json"}
            if task_id:
                rec = await self.service().repo.read(_uuid(task_id)) if _uuid(task_id) else None
                if rec is None:
                    return self.render("message.html", request, visit.lang, status_code=404, visit=visit,
                                       message=translator(visit.lang)("not_found"))
                values = _form_values(rec.spec)
        return self.render("task_form.html", request, visit.lang, status_code=status_code, visit=visit,
                           task_id=task_id, v=values, errors=errors or {}, message=message)

    async def task_save(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        form = await self.form_of(request)
        if not self.csrf_ok(visit, form):
            return Response("bad CSRF token", status_code=403, headers=SECURITY_HEADERS)
        task_id = request.path_params.get("id")
        if task_id is not None and _uuid(task_id) is None:
            return Response(status_code=404)
        values = {k: (form.get(k) or [""])[0] for k in TASK_FIELDS}
        values["RunLoop"] = "true" if values["RunLoop"] else "false"
        values["RunNow"] = "true" if values["RunNow"] else "false"
        fields = [(k, v) for k, v in values.items() if k not in LIST_FIELDS and v != ""]
        for k in LIST_FIELDS:
            fields += [(k, line.strip()) for line in values[k].splitlines() if line.strip()]
        if task_id:
            fields.append(("Id", task_id))
        answer = await self.caller.call(request, visit.user, "POST", "/api/Task/Edit" if task_id else "/api/Task/Create",
                                        form=fields)
        ok, message, errors = outcome(answer)
        if message == "forbidden":
            return self.forbidden(request, visit)
        if not ok:
            return await self.task_form(request, values, errors, message, status_code=400)
        return flash_to(f"/tasks/{task_id or answer.json().get('Data')}", message, True)

    async def cron_preview(self, request: Request) -> Response:
        """The next five fire times of a cron as it is typed, in the system's zone."""
        if await self.visit(request) is None:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        text = request.query_params.get("cron", "")[:100]
        tz = self.service().tz
        try:
            fires = quartz.parse(text).next_fires(5, datetime.now(timezone.utc), tz)
        except quartz.CronError as exc:
            return JSONResponse({"error": str(exc)})
        zone = ZoneInfo(tz)
        return JSONResponse({"fires": [f.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") for f in fires]})


def flash_to(url: str, message: str, ok: bool) -> RedirectResponse:
    """A redirect after an action, carrying what the action said to the next page only."""
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(FLASH_COOKIE, ("1" if ok else "0") + quote(message[:MAX_FLASH]), httponly=True,
                        samesite="strict", path="/", max_age=60)
    return response


def _uuid(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        return None


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
        "Executors": "\n".join(spec.Executors), "Keepers": "\n".join(map(str, spec.Keepers)),
        "Nexts": "\n".join(spec.Nexts), "RunNow": "false",
    }

