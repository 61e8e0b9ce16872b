"""A delayed task's callback, exactly as the original's DelayPlanManager sent it (docs/legacy-behaviour.md, Delayed tasks).

POST NotifyUrl; the body is NotifyBody without CR-LF pairs. For
``application/x-www-form-urlencoded`` the body is a JSON array of ``{"Key", "Value"}``
(Newtonsoft: names case-insensitive) sent form-encoded; any other NotifyDataType is sent as
``application/json; charset=utf-8``. Success means a 2xx answer whose body contains
``success`` (case-sensitive). Every attempt carries ``Idempotency-Key: <task id>``.

Sent with aiohttp, as the node's firings are (flows/http_task.py says why: a tenth of
httpx's client CPU per request).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
import yarl

FORM = "application/x-www-form-urlencoded"
SUCCESS_MARK = b"success"
READ_LIMIT = 1024 * 1024   # how much of an answer is searched for "success"
EXCERPT = 500              # how much of it is kept with the attempt


class CallbackError(ValueError):
    """NotifyUrl or NotifyBody cannot make a request; refused at create, failed at fire."""


def form_pairs(body: str) -> list[tuple[str, str]]:
    """The form fields of a form-type NotifyBody: a JSON array of {"Key": ..., "Value": ...}."""
    try:
        items = json.loads(body)
    except ValueError as exc:
        raise CallbackError(f"NotifyBody 不是 JSON 数组 [{{\"Key\":\"…\",\"Value\":\"…\"}}]: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise CallbackError('表单类型的 NotifyBody 必须是 JSON 数组 [{"Key":"…","Value":"…"}]')
    pairs = []
    for item in items:
        low = {str(k).lower(): v for k, v in item.items()}
        if "key" not in low or low["key"] is None or isinstance(low["key"], (dict, list)):
            raise CallbackError('表单类型的 NotifyBody 每一项都要有 "Key"')
        value = low.get("value")
        pairs.append((str(low["key"]), "" if value is None else
                      value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    return pairs


def check_url(url: str) -> yarl.URL:
    try:
        parsed = yarl.URL(url)
    except Exception as exc:
        raise CallbackError(f"NotifyUrl 无效: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CallbackError("NotifyUrl 必须是 http:// 或 https:// 开头的绝对地址")
    return parsed


@dataclass
class Request:
    url: yarl.URL
    headers: dict[str, str]
    body: bytes


def build(task_id: str, url: str, data_type: str, body: str) -> Request:
    """The request of one attempt; raises CallbackError for what can never be sent."""
    parsed = check_url(url)
    text = body.replace("\r\n", "")
    headers = {"Idempotency-Key": task_id}
    if data_type.strip().lower() == FORM:
        payload = urlencode(form_pairs(text)).encode("utf-8")
        headers["Content-Type"] = FORM
    else:
        payload = text.encode("utf-8")
        headers["Content-Type"] = "application/json; charset=utf-8"
    return Request(parsed, headers, payload)


@dataclass
class Answer:
    success: bool
    status: int | None
    excerpt: str | None
    error: str | None
    elapsed_ms: float


async def send(session: aiohttp.ClientSession, req: Request, timeout: float) -> Answer:
    """One attempt; never raises: the answer says what happened."""
    started = time.perf_counter()

    def done(success: bool, status: int | None, excerpt: str | None, error: str | None) -> Answer:
        return Answer(success, status, excerpt, error, (time.perf_counter() - started) * 1000)

    async def post() -> tuple[int, bytes]:
        async with session.post(req.url, data=req.body, headers=req.headers, allow_redirects=True,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            # read() returns what has arrived so far: keep reading to the end (or the limit),
            # "success" may come in a later chunk
            parts, size = [], 0
            while size < READ_LIMIT:
                part = await resp.content.read(READ_LIMIT - size)
                if not part:
                    break
                parts.append(part)
                size += len(part)
            return resp.status, b"".join(parts)

    # No silent resend on ServerDisconnectedError: the receiver may have processed the
    # request before the connection dropped, and every request that leaves must be a
    # recorded attempt. A failed attempt is retried by the retry policy (same key).
    try:
        status, raw = await post()
    except asyncio.TimeoutError:
        return done(False, None, None, f"timed out after {timeout:g} s")
    except aiohttp.ClientError as exc:
        return done(False, None, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    except Exception as exc:  # an unencodable URL, a bad header value...
        return done(False, None, None, f"{type(exc).__name__}: {exc}")
    excerpt = raw[:EXCERPT * 4].decode("utf-8", "replace")[:EXCERPT]
    ok = 200 <= status < 300 and SUCCESS_MARK in raw
    error = None if ok else (f"HTTP {status}" if not 200 <= status < 300 else f"HTTP {status} without 'success' in the answer")
    return done(ok, status, excerpt, error)
