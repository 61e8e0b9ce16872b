"""HTTP tasks (MetaType 2): the request exactly as ScheduleMaster's HttpSchedule sent it.

`perform_http` is shared by the two ways a firing runs: the node's fast path (scheduled
firings, recorded in bulk) and the `schedulemaster-task` flow that a Prefect worker runs
for RunOnce and for runs started from the Prefect UI.

The firing itself is sent with aiohttp, not httpx (which the rest of the project uses):
httpx costs about ten times the client CPU per request (`bench/http_clients.py` measures
both), and a node must fire a thousand tasks due in the same second within that second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote_plus

import aiohttp
import yarl

from schedulemaster.deployments.policy import DEFAULT as DEFAULT_POLICY
from schedulemaster.deployments.policy import RunPolicy
from schedulemaster.deployments.spec import HttpTarget

DEFAULT_TIMEOUT_SECONDS = 10.0
BODY_EXCERPT = 2000
#: the request header that numbers an attempt, sent when the task retries (deployments/policy.py)
ATTEMPT_HEADER = "SM-Attempt"

LogFn = Callable[[int, str], None]


class HttpTaskError(Exception):
    """The request could not be built or sent; the firing fails with this message."""


@dataclass
class HttpOutcome:
    ok: bool
    message: str
    status_code: int | None = None
    elapsed_ms: float = 0.0
    logs: list[tuple[int, str, datetime]] = field(default_factory=list)


def parse_params(text: str | None) -> list[tuple[str, str]]:
    """A ScheduleParam JSON array ``[{"ParamKey","ParamValue","ParamRemark"}]`` as pairs."""
    if text is None or not str(text).strip():
        return []
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise HttpTaskError(f"not a JSON ScheduleParam array: {exc}") from None
    if not isinstance(items, list):
        raise HttpTaskError("not a JSON ScheduleParam array")
    pairs = []
    for it in items:
        if not isinstance(it, dict):
            raise HttpTaskError("not a JSON ScheduleParam array")
        # Newtonsoft binds property names case-insensitively.
        low = {str(k).lower(): v for k, v in it.items()}
        key = low.get("paramkey")
        if key is None or str(key) == "":
            continue
        val = low.get("paramvalue")
        pairs.append((str(key), "" if val is None else str(val)))
    return pairs


@dataclass
class PreparedRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes
    timeout: float


def prepare(http: HttpTarget, settings: dict[str, Any], idempotency_key: str,
            policy: RunPolicy = DEFAULT_POLICY, attempt: int = 1) -> PreparedRequest:
    """Build the request of one firing (docs/legacy-behaviour.md, HTTP tasks). The timeout:
    the task's TimeoutSeconds, else its ``sm-timeout`` header, else the settings', else 10 s."""
    url = http.RequestUrl
    method = (http.Method or "GET").upper()
    ctype = http.ContentType or ""
    headers: dict[str, str] = {}
    timeout = 0.0
    for key, value in parse_params(http.Headers):
        if key.lower().startswith("content-"):
            # HttpClient refuses Content-* on the request headers; the original run failed.
            raise HttpTaskError(f"header '{key}' cannot be set as a request header")
        headers[key] = value
        if key.lower() == "sm-timeout":
            try:
                t = float(value)
            except ValueError:
                t = 0
            if t > 0:
                timeout = t
    if policy.TimeoutSeconds > 0:
        timeout = float(policy.TimeoutSeconds)
    if timeout <= 0:
        try:
            timeout = float(settings.get("Http_RequestTimeout") or 0)
        except (TypeError, ValueError):
            timeout = 0
    if timeout <= 0:
        timeout = DEFAULT_TIMEOUT_SECONDS
    body = ""
    if ctype.lower() == "application/json":
        body = (http.Body or "").replace("\r\n", "")
    elif ctype.lower() == "application/x-www-form-urlencoded":
        body = "&".join(f"{k}={quote_plus(v)}" for k, v in parse_params(http.Body))
        if method == "GET" and body:
            url = f"{url}{'&' if '?' in url else '?'}{body}"
    headers["Content-Type"] = f"{ctype}; charset=utf-8" if ctype else "text/plain; charset=utf-8"
    headers["Idempotency-Key"] = idempotency_key
    if policy.Retries:
        headers[ATTEMPT_HEADER] = str(attempt)
    try:
        parsed = yarl.URL(url)
    except Exception as exc:  # malformed ports, bad IPv6 literals...
        raise HttpTaskError(f"invalid url '{url}': {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise HttpTaskError(f"invalid url '{url}': only absolute http and https URLs are supported")
    return PreparedRequest(method, url, headers, body.encode("utf-8"), timeout)


# Idle pooled connections are dropped before common servers drop them (uvicorn closes
# after 5 s), so a task firing every 5 s does not race the server's close.
KEEPALIVE_SECONDS = 4.0


def new_session(max_connections: int = 100) -> aiohttp.ClientSession:
    """The connection pool firings share (call inside the running event loop)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_SECONDS),
        auto_decompress=True, raise_for_status=False)


async def _send(client: aiohttp.ClientSession, req: PreparedRequest) -> tuple[int, bytes, str]:
    async with client.request(req.method, yarl.URL(req.url), headers=req.headers, data=req.content,
                              timeout=aiohttp.ClientTimeout(total=req.timeout),
                              allow_redirects=True) as resp:
        raw = await resp.content.read(BODY_EXCERPT * 4)
        return resp.status, raw, resp.headers.get("content-type", "")


async def perform_http(
    client: aiohttp.ClientSession,
    http: HttpTarget,
    *,
    settings: dict[str, Any],
    idempotency_key: str,
    policy: RunPolicy = DEFAULT_POLICY,
    attempt: int = 1,
) -> HttpOutcome:
    """Send one firing's request; never raises, the outcome says what happened. A failure is
    what the task's policy says one is: no answer in time, a non-2xx answer when it (or the
    global setting) says so, an answer without its ExpectedText."""
    out = HttpOutcome(ok=False, message="")

    def log(level: int, msg: str) -> None:
        out.logs.append((level, msg, datetime.now(timezone.utc)))

    started = time.perf_counter()
    try:
        req = prepare(http, settings, idempotency_key, policy, attempt)
        log(logging.INFO, f"即将请求：{req.url}")
        try:
            status, raw, ctype = await _send(client, req)
        except aiohttp.ServerDisconnectedError:
            # The server closed a pooled keep-alive connection as we reused it, before
            # answering: send once more on a new connection (same Idempotency-Key), as
            # HTTP clients do for a stale pooled connection.
            log(logging.WARNING, "连接已被服务器关闭，重新连接后重试一次 (server closed a pooled connection)")
            status, raw, ctype = await _send(client, req)
        out.status_code = status
        out.elapsed_ms = (time.perf_counter() - started) * 1000
        text = "html文档" if "html" in ctype.lower() else raw.decode("utf-8", "replace")[:BODY_EXCERPT]
        log(logging.INFO, f"请求结束，响应码：{status}，响应内容：{text}")
        expected = policy.ExpectedText
        if not 200 <= status < 300 and policy.fail_on_non_2xx(settings):
            out.message = f"HTTP {status} is not a 2xx answer (FailOnNon2xx)"
        elif expected and expected not in raw.decode("utf-8", "replace"):
            out.message = f"HTTP {status}: the answer does not contain the expected text {expected!r}"
        else:
            out.ok = True
            out.message = f"HTTP {status} in {out.elapsed_ms:.0f} ms"
    except HttpTaskError as exc:
        out.message = str(exc)
    except asyncio.TimeoutError:
        out.message = f"timeout: no answer within {req.timeout:g} s"
    except aiohttp.ClientError as exc:
        out.message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except Exception as exc:  # a bad header value, an unencodable URL...
        out.message = f"{type(exc).__name__}: {exc}"
    out.elapsed_ms = (time.perf_counter() - started) * 1000
    return out


def outcome_lines(title: str, out: HttpOutcome) -> tuple[int, str]:
    """The run-level log line the original wrote after each run."""
    if out.ok:
        return logging.INFO, f"任务[{title}]运行成功！用时{out.elapsed_ms:.0f}ms"
    return logging.ERROR, f"任务\"{title}\"运行失败！，ERROR：{out.message}"
