"""A small client for the legacy HTTP API, for scripts migrating from ScheduleMaster.

    api = LegacyClient("http://127.0.0.1:30000", "admin", "111111")
    task_id = api.create_task(Title="ping", MetaType=2, RunLoop=True, CronExpression="0/5 * * * * ?",
                              HttpRequestUrl="http://127.0.0.1:8000/hook", HttpMethod="GET")
    api.start(task_id)

It computes ``ms_auth_secret`` from the password the way the original's clients did, sends
forms the way ASP.NET model binding reads them (a list is the same key repeated), and
turns the ``{Success, Status, Message, Data}`` envelope into the Data it carries or an
exception whose message is the original's own words. Only httpx and hashlib: importing
it costs nothing a notebook or a CLI command would notice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterator

import httpx

from schedulemaster.ms_compat.secret import legacy_secret

DEFAULT_URL = "http://127.0.0.1:30000"


class LegacyError(Exception):
    """The API answered ``Success: false``: ``message`` is its Message, ``data`` its Data."""

    def __init__(self, message: str, *, status: int | None = None, data: Any = None, http_status: int = 200):
        super().__init__(message)
        self.message = message
        self.status = status
        self.data = data
        self.http_status = http_status


class LegacyNotFound(LegacyError):
    """The task asked for does not exist (any more)."""


class LegacyForbidden(LegacyError):
    """403: the account's role may not do this (ms_compat/roles.py)."""


class LegacyAuthError(LegacyError):
    """401: a wrong user or password, or a disabled user."""


class LegacyValidationError(LegacyError, ValueError):
    """400: the request did not bind (``errors`` maps each field to what was wrong with it)."""

    def __init__(self, errors: dict[str, list[str]]):
        text = "; ".join(f"{k or 'body'}: {' '.join(v)}" for k, v in errors.items()) or "bad request"
        super().__init__(text, http_status=400)
        self.errors = errors


class LegacyUnavailable(LegacyError, ConnectionError):
    """The API could not be reached, or answered something that is not the legacy protocol."""


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is not None:  # the API reads wall times in the system's zone only
            raise ValueError(f"{value!r} has a time zone: convert it to the system's zone and drop tzinfo "
                             "(schedulemaster.connect() knows the zone: current().timezone)")
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def form_fields(fields: dict[str, Any]) -> dict[str, str | list[str]]:
    """Form fields as ASP.NET binds them: None left out, a list sent as the key repeated."""
    out: dict[str, str | list[str]] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set)):
            out[key] = [_form_value(v) for v in value]
        else:
            out[key] = _form_value(value)
    return out


class LegacyClient:
    """One user's session with the legacy API (``/api/Task/*``, ``/api/DelayTask/*``, ...)."""

    def __init__(self, url: str = DEFAULT_URL, user: str = "admin", password: str = "111111", *,
                 timeout: float = 120.0, transport: httpx.BaseTransport | None = None):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"the legacy API URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.user = user
        self.timeout = timeout  # seconds a call may take (also the notebook's other clients')
        self.secret = legacy_secret(user, password)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"ms_auth_user": user, "ms_auth_secret": self.secret})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LegacyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LegacyClient({self.url!r}, user={self.user!r})"

    # ---- the protocol ------------------------------------------------------------------
    def envelope(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 data: dict[str, Any] | None = None, files: Any = None, content: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        """The raw JSON answer of ``/api/<path>``, or an exception for 400, 401 and transport
        failures. ``Success: false`` is returned as is; ``call`` raises it."""
        try:
            resp = self._http.request(method, f"/api/{path.lstrip('/')}",
                                      params=form_fields(params) if params else None,
                                      data=form_fields(data) if data else None,
                                      files=files, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise LegacyUnavailable(f"cannot reach the legacy API at {self.url}: {exc}") from None
        if resp.status_code == 401:
            raise LegacyAuthError(f"401 Unauthorized: wrong user or password for {self.user!r}, "
                                  "or the user is disabled", http_status=401)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 400 and isinstance(body, dict):
            raise LegacyValidationError(body.get("errors") or {})
        if resp.status_code == 403:
            raise LegacyForbidden(f"403 Forbidden: {self.user!r}'s role may not call {path} "
                                  "(viewer: read only; operator: tasks, delayed tasks, node enable/disable; "
                                  "admin: everything)", http_status=403)
        if resp.status_code == 413:
            raise LegacyError("413 Payload Too Large: the API takes 1 MiB per request", http_status=413)
        if resp.status_code != 200 or body is None:
            raise LegacyUnavailable(f"{method} /api/{path} answered HTTP {resp.status_code}: {resp.text[:300]}",
                                    http_status=resp.status_code)
        return body

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """The envelope's Data, or LegacyError with its Message when Success is false."""
        body = self.envelope(method, path, **kw)
        if isinstance(body, dict) and "Success" in body:
            if not body.get("Success"):
                raise LegacyError(body.get("Message") or "请求失败", status=body.get("Status"),
                                  data=body.get("Data"))
            return body.get("Data")
        return body  # QueryList answers a bare {total, rows}, as the original did

    # ---- tasks -------------------------------------------------------------------------
    def create_task(self, **fields: Any) -> str:
        """``/api/Task/Create`` with ScheduleInfo fields; the new task's id."""
        return self.call("POST", "Task/Create", data=fields)

    def edit_task(self, **fields: Any) -> None:
        """``/api/Task/Edit`` (the task must be stopped, as in the original)."""
        self.call("POST", "Task/Edit", data=fields)

    def task(self, task_id: str) -> dict[str, Any] | None:
        """``QueryTaskDetail``: the task's row plus its next fire times, or None."""
        return self.call("GET", "Task/QueryTaskDetail", params={"id": task_id})

    def iter_tasks(self, name: str | None = None, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Every QueryList row (page by page), optionally those whose title contains ``name``."""
        return self._rows("Task/QueryList", {"name": name}, page_size)

    def _rows(self, path: str, query: dict[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
        """The rows of a paged ``{total, rows}`` list, page after page."""
        page = 1
        while True:
            body = self.call("GET", path, params={**query, "pageNumber": page, "pageSize": page_size})
            rows = body.get("rows") or []
            yield from rows
            # the server caps a page (1000): a short page is the last, whatever was asked
            if len(rows) < min(page_size, 1000) or page * len(rows) >= int(body.get("total") or 0):
                return
            page += 1

    def _act(self, action: str, key: str, field: str = "id") -> str:
        """A console action (``Task/Start``...): its Message, or LegacyError with it."""
        return self._post_action(action, {field: key})

    def _post_action(self, action: str, data: dict[str, Any]) -> str:
        body = self.envelope("POST", action, data=data)
        if not isinstance(body, dict) or not body.get("Success"):
            body = body if isinstance(body, dict) else {}
            raise LegacyError(body.get("Message") or "请求失败", status=body.get("Status"), data=body.get("Data"))
        return body.get("Message") or ""

    def start(self, task_id: str) -> str:
        return self._act("Task/Start", task_id)

    def pause(self, task_id: str) -> str:
        return self._act("Task/Pause", task_id)

    def resume(self, task_id: str) -> str:
        return self._act("Task/Resume", task_id)

    def stop(self, task_id: str) -> str:
        return self._act("Task/Stop", task_id)

    def run_once(self, task_id: str) -> str:
        return self._act("Task/RunOnce", task_id)

    def delete(self, task_id: str) -> str:
        return self._act("Task/Delete", task_id)

    def upload_plugin(self, filename: str, data: bytes) -> dict[str, Any]:
        """The extension ``/api/Task/UploadPlugin``: name, file name, sha256 and size stored."""
        return self.call("POST", "Task/UploadPlugin", files={"file": (filename, data, "application/zip")})

    # ---- delayed tasks -----------------------------------------------------------------
    def create_delayed(self, **fields: Any) -> str:
        """``/api/DelayTask/Create`` with ScheduleDelayedInfo fields; the new id."""
        return self.call("POST", "DelayTask/Create", data=fields)

    def delayed_task(self, task_id: str) -> dict[str, Any] | None:
        return self.call("GET", "DelayTask/QueryDetail", params={"id": task_id})

    def iter_delayed(self, page_size: int = 500, **query: Any) -> Iterator[dict[str, Any]]:
        """Every ``DelayTask/QueryList`` row for the filters (status, topic, contentKey,
        sourceApp, startDate, endDate), page by page."""
        return self._rows("DelayTask/QueryList", query, page_size)

    def void_delayed(self, task_id: str) -> str:
        return self._act("DelayTask/Void", task_id)

    def execute_delayed(self, task_id: str) -> str:
        return self._act("DelayTask/Execute", task_id)

    def reset_delayed(self, task_id: str) -> str:
        return self._act("DelayTask/Reset", task_id)

    # ---- the system --------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The extension ``/api/System/Info``: the Prefect API URL, the cron time zone, the pool."""
        return self.call("GET", "System/Info")

    def nodes(self) -> list[dict[str, Any]]:
        """The extension ``/api/Node/QueryList``: name, Status (0 下线, 1 空闲, 2 运行), Enabled..."""
        return list((self.call("GET", "Node/QueryList") or {}).get("rows") or [])

    def enable_node(self, name: str) -> str:
        return self._act("Node/Enable", name, "name")

    def disable_node(self, name: str) -> str:
        """休息: the node stays connected and fires nothing; its tasks move to other nodes."""
        return self._act("Node/Disable", name, "name")

    def delete_node(self, name: str) -> str:
        return self._act("Node/Delete", name, "name")

    def edit_node(self, name: str, priority: int | None = None, max_concurrency: int | None = None) -> str:
        """``/api/Node/Edit``: a node's Priority (its weight in routing, 0 = only when no other
        node is allowed) and MaxConcurrency; the node applies them within seconds."""
        data: dict[str, Any] = {"name": name}
        if priority is not None:
            data["priority"] = priority
        if max_concurrency is not None:
            data["maxConcurrency"] = max_concurrency
        return self._post_action("Node/Edit", data)

    def users(self, name: str | None = None) -> list[dict[str, Any]]:
        body = self.call("GET", "Account/QueryList", params={"name": name, "pageNumber": 1, "pageSize": 1000})
        return list((body or {}).get("rows") or [])

    def create_user(self, username: str, password: str, real_name: str, role: str = "operator",
                    email: str | None = None, phone: str | None = None) -> int:
        """``/api/Account/Create`` (admin only); ``role``: admin | operator | viewer. The new id."""
        data = {"UserName": username, "Password": password, "RealName": real_name, "Role": role,
                **({"Email": email} if email else {}), **({"Phone": phone} if phone else {})}
        return int(self.call("POST", "Account/Create", data=data))

    def set_role(self, user_id: int, role: str) -> str:
        """Change an account's role, keeping its other fields (admin only)."""
        row = next((u for u in self.users() if u["Id"] == user_id), None)
        if row is None:
            raise LegacyError("账号不存在!")
        data = {"Id": user_id, "RealName": row["RealName"], "Role": role,
                **({"Email": row["Email"]} if row.get("Email") else {}),
                **({"Phone": row["Phone"]} if row.get("Phone") else {})}
        return self._post_action("Account/Edit", data)

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """``/api/System/QueryAudit`` (admin only): who changed what, newest first. Filters:
        actor, resource, action, kind, startDate, endDate; up to 1,000 rows."""
        body = self.call("GET", "System/QueryAudit", params={**filters, "pageNumber": 1, "pageSize": 1000})
        return list((body or {}).get("rows") or [])
