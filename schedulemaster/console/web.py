"""What every console page shares: who is asking, the call into the legacy API as that
account, how its answers read, the response headers, and the one-time message after an action."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse

from schedulemaster.ms_compat.responses import FIELD_HEADER
from schedulemaster.ms_compat.secret import md5_hex
from schedulemaster.store import console_sessions as sessions
from schedulemaster.store.db import SystemUser

FLASH_COOKIE = "sm_flash"  # what the last action said, shown once on the next page
MAX_FLASH = 300
SECURITY_HEADERS = {
    # the one script is a file of this origin; nothing is framed, nothing inline runs
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


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


def flash_to(url: str, message: str, ok: bool) -> RedirectResponse:
    """A redirect after an action, carrying what the action said to the next page only."""
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(FLASH_COOKIE, ("1" if ok else "0") + quote(message[:MAX_FLASH]), httponly=True,
                        samesite="strict", path="/", max_age=60)
    return response


def page_number(request: Request, most: int) -> int:
    """The ``page`` query parameter, 1..most; anything else is page 1."""
    try:
        return max(1, min(int(request.query_params.get("page", "1")), most))
    except ValueError:
        return 1


def said(message: str, errors: dict[str, list[str]]) -> str:
    """A legacy answer's message with its field errors, as one line."""
    return message + "".join(f" · {k}: {' '.join(v)}" for k, v in errors.items())


def parse_uuid(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        return None
