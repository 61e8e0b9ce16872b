"""The legacy answer shapes: the {Success, Status, Message, Data} envelope, ProblemDetails,
and dates written the way ASP.NET Core 3.1's System.Text.Json wrote them."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from starlette.responses import Response

JSON_TYPE = "application/json; charset=utf-8"
PROBLEM_TYPE = "application/problem+json; charset=utf-8"


class ResultStatus:
    ServiceError = -2
    Illegal = -1
    Failed = 0
    Success = 1
    UnAuthorize = 2
    ParamError = 3
    DataException = 4
    ValidateError = 5


def dumps(obj: Any) -> str:
    """System.Text.Json's default encoder: non-ASCII and HTML-sensitive characters escaped."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    for ch, esc in (("<", "\\u003C"), (">", "\\u003E"), ("&", "\\u0026"), ("'", "\\u0027"), ("+", "\\u002B")):
        text = text.replace(ch, esc)
    return text


def json_response(obj: Any, status_code: int = 200, media_type: str = JSON_TYPE) -> Response:
    return Response(dumps(obj), status_code=status_code, media_type=media_type)


def envelope(status: int, message: str, data: Any = None) -> Response:
    return json_response({"Success": status == ResultStatus.Success, "Status": status,
                          "Message": message, "Data": data})


def ok(message: str, data: Any = None) -> Response:
    return envelope(ResultStatus.Success, message, data)


def failed(message: str, data: Any = None) -> Response:
    return envelope(ResultStatus.Failed, message, data)


#: extension: the form field a refusal is about (the console puts the message beside it;
#: legacy clients ignore an unknown header)
FIELD_HEADER = "X-SM-Field"


def failed_at(message: str, field: str | None) -> Response:
    """``failed``, naming the field at fault when there is one."""
    response = failed(message)
    if field:
        response.headers[FIELD_HEADER] = field
    return response


def trace_id() -> str:
    return f"|{secrets.token_hex(4)}-{secrets.token_hex(6)}."


def validation_problem(errors: dict[str, list[str]]) -> Response:
    return json_response({
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "traceId": trace_id(),
        "errors": errors,
    }, status_code=400, media_type=PROBLEM_TYPE)


_CLIENT_ERRORS = {
    401: ("https://tools.ietf.org/html/rfc7235#section-3.1", "Unauthorized"),
    403: ("https://tools.ietf.org/html/rfc7231#section-6.5.3", "Forbidden"),
    404: ("https://tools.ietf.org/html/rfc7231#section-6.5.4", "Not Found"),
    405: ("https://tools.ietf.org/html/rfc7231#section-6.5.5", "Method Not Allowed"),
    408: ("https://tools.ietf.org/html/rfc7231#section-6.5.7", "Request Timeout"),
    413: ("https://tools.ietf.org/html/rfc7231#section-6.5.11", "Payload Too Large"),
    415: ("https://tools.ietf.org/html/rfc7231#section-6.5.13", "Unsupported Media Type"),
}


def client_error(status_code: int) -> Response:
    type_, title = _CLIENT_ERRORS[status_code]
    return json_response({"type": type_, "title": title, "status": status_code, "traceId": trace_id()},
                         status_code=status_code, media_type=PROBLEM_TYPE)


def fmt_date(value: datetime) -> str:
    """A non-nullable DateTime: the project's converter wrote ``yyyy-MM-dd HH:mm:ss``."""
    return value.strftime("%Y-%m-%d %H:%M:%S")


def fmt_nullable_date(value: datetime | None) -> str | None:
    """A DateTime?: .NET Core 3.1 skipped the converter and wrote ISO 8601 without offset,
    with the fraction only when present (trailing zeros trimmed)."""
    if value is None:
        return None
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += ("." + f"{value.microsecond:06d}").rstrip("0")
    return text
