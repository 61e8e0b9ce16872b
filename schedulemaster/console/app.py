"""The console on the legacy port (``/`` on :30000), for what Prefect's UI has no page for
(and the door to ``/metrics``).

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
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from schedulemaster.body_limit import BodyAborted, BodyStalled, BodyTooLarge, bounded, declared_too_large
from schedulemaster.console.delayed_pages import DelayedPages
from schedulemaster.console.labels import DEFAULT_LANG, LANGS, translator
from schedulemaster.console.system_pages import SystemPages
from schedulemaster.console.task_pages import TaskPages
from schedulemaster.console.web import (FLASH_COOKIE, MAX_FLASH, SECURITY_HEADERS, LegacyCaller, Visit, flash_to,
                                        outcome)
from schedulemaster.ms_compat.auth import Authenticator
from schedulemaster.ms_compat.secret import md5_hex
from schedulemaster.store import console_sessions as sessions
from schedulemaster.store.db import Store

log = logging.getLogger("schedulemaster.console")

SESSION_COOKIE = "sm_console"
LOGIN_COOKIE = "sm_console_login"  # the sign-in form's double-submit token
LANG_COOKIE = "sm_lang"
MAX_FORM_FIELDS = 200
MAX_FORM_BYTES = 256 * 1024  # a task's form is a few KiB; its longest fields are 20,000 characters
FORM_SECONDS = 60.0  # ... and arrives within this long
HERE = Path(__file__).parent


class Console:
    """The ASGI app on the legacy port: ``/api/...`` to the legacy API, the rest to the console."""

    def __init__(self, legacy_app, store: Store, service_of: Callable[[], Any], prefect_ui: str | None,
                 metrics=None):
        self.legacy_app = legacy_app
        self.metrics = metrics  # the ASGI app of ``/metrics`` (schedulemaster/master/metrics.py)
        self.store = store
        self.service_of = service_of
        self.prefect_ui = (prefect_ui or "").rstrip("/")
        self.auth: Authenticator = legacy_app.state.authenticator
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
            Route("/static/{name}", self.static, methods=["GET"]),
            *TaskPages(self).routes(),
            *DelayedPages(self).routes(),
            *SystemPages(self).routes(),
        ])
        self.pages.add_exception_handler(BodyTooLarge, lambda _r, _e: Response("form too large", status_code=413))
        self.pages.add_exception_handler(BodyStalled, lambda _r, _e: Response("form too slow", status_code=408))
        self.pages.add_exception_handler(Exception, self.failure)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan" or scope["path"].lower() == "/api" or scope["path"].lower().startswith("/api/"):
            return await self.legacy_app(scope, receive, send)
        if self.metrics is not None and scope["type"] == "http" and scope["path"] == "/metrics":
            return await self.metrics(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "POST":
            if declared_too_large(scope, MAX_FORM_BYTES):
                return await Response("form too large", status_code=413)(scope, receive, send)
            receive = bounded(receive, MAX_FORM_BYTES, FORM_SECONDS)  # a body that lies about its size
        return await self.pages(scope, receive, send)

    # ---- plumbing ---------------------------------------------------------------
    def render(self, template: str, request: Request, lang: str, status_code: int = 200, **values) -> HTMLResponse:
        flash = request.cookies.get(FLASH_COOKIE, "")
        html = self.templates.get_template(template).render(
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

    async def signed_post(self, request: Request) -> tuple[Visit, dict[str, list[str]]] | Response:
        """(who, the form) of a POST from a live session carrying its CSRF token, or the refusal."""
        visit = await self.visit(request)
        if visit is None:
            return self.to_login(request)
        form = await self.form_of(request)
        if not self.csrf_ok(visit, form):
            return Response("bad CSRF token", status_code=403, headers=SECURITY_HEADERS)
        return visit, form

    async def relay(self, request: Request, visit: Visit, path: str, fields: list[tuple[str, str]],
                    back: str) -> Response:
        """An action through the legacy API, then back to ``back`` with what it said."""
        ok, message, _errors = outcome(await self.caller.call(request, visit.user, "POST", path, form=fields))
        if message == "forbidden":
            return self.forbidden(request, visit)
        return flash_to(back, message, ok)

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
        if len(password) > 200 or len(name) > 50 or any(ord(c) < 32 for c in name + password):
            name = password = ""  # no account has such a name (PostgreSQL would refuse a NUL in the query)
        address = request.client.host if request.client else ""
        # the API's own check: the same rate limit on repeated failures for a name and address
        user = await self.auth.check(name, md5_hex(name + md5_hex(password) + name), address) if name else None
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
        signed = await self.signed_post(request)
        if isinstance(signed, Response):
            return signed
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
