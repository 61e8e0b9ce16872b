"""ASP.NET Core 3.1 form binding and model validation, as the original's [FromForm] models saw it.

Keys are case-insensitive; lists repeat the key (``Keepers=1&Keepers=2``) or are indexed
(``Keepers[0]=1``); an unparseable int, bool, guid or date is a model error; ``[Required]``
rejects a missing or empty string; ``[MaxLength]`` applies. Errors come back keyed by
property name with ASP.NET's own message texts, for the ValidationProblemDetails answer.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable
from zoneinfo import ZoneInfo

_INDEXED = re.compile(r"^([a-z0-9_]+)\[(\d{1,4})\](?:\.([a-z0-9_]+))?$")
_GUID_FORMS = [
    re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
    re.compile(r"^[0-9a-fA-F]{32}$"),
    re.compile(r"^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$"),
    re.compile(r"^\([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\)$"),
]
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y/%m/%d %H:%M:%S",
                 "%Y/%m/%d %H:%M", "%Y/%m/%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M")
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class F:
    """One bindable property of a form model."""

    name: str
    kind: str = "str"  # str | text | int | bool | date | guid | ints | guids | strs | params
    required: bool = False
    max_length: int | None = None


class FormValues:
    """Case-insensitive multi-valued view over a form or query string."""

    def __init__(self, items: Iterable[tuple[str, Any]]):
        self.broken = False  # the body could not be read as a form at all
        self.plain: dict[str, list[str]] = {}
        self.indexed: dict[str, dict[int, dict[str | None, str]]] = {}
        for key, value in items:
            if not isinstance(value, str):  # an uploaded file where text was expected
                value = ""
            k = key.strip().lower()
            m = _INDEXED.match(k)
            if m:
                name, idx, sub = m.group(1), int(m.group(2)), m.group(3)
                self.indexed.setdefault(name, {}).setdefault(idx, {}).setdefault(sub, value)
            else:
                self.plain.setdefault(k, []).append(value)

    def first(self, name: str) -> str | None:
        vals = self.plain.get(name.lower())
        return vals[0] if vals else None

    def has(self, name: str) -> bool:
        return name.lower() in self.plain or name.lower() in self.indexed

    def many(self, name: str) -> list[str] | None:
        n = name.lower()
        if n in self.plain:
            return [v for vals in (self.plain[n],) for v in vals]
        if n in self.indexed:
            # ASP.NET stops at the first gap in the indexes.
            out, i = [], 0
            while i in self.indexed[n] and None in self.indexed[n][i]:
                out.append(self.indexed[n][i][None])
                i += 1
            return out
        return None

    def param_list(self, name: str) -> list[dict[str, str]] | None:
        n = name.lower()
        if n not in self.indexed:
            return None
        out, i = [], 0
        while i in self.indexed[n]:
            sub = self.indexed[n][i]
            out.append({"ParamKey": sub.get("paramkey"), "ParamValue": sub.get("paramvalue"),
                        "ParamRemark": sub.get("paramremark")})
            i += 1
        return out


def id_from_form_or_query(form: FormValues, query_items: Iterable[tuple[str, Any]]) -> FormValues:
    """`id` from the form (v2.2) or the query string (v2.1)."""
    if form.broken or form.has("id"):
        return form
    return FormValues(list(query_items))


def page_bounds(page: int | None, size: int | None, default_size: int) -> tuple[int, int]:
    """Paging as the console grids did it: page < 1 is 1, size < 1 is the default; at most 1,000 rows."""
    return max(page or 1, 1), min(size if size is not None and size >= 1 else default_size, 1000)


def invalid(value: str, name: str) -> str:
    return f"The value '{value}' is not valid for {name}."


def parse_int(text: str) -> int | None:
    t = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,10}", t):
        return None
    v = int(t)
    return v if INT32[0] <= v <= INT32[1] else None


def parse_bool(text: str) -> bool | None:
    t = text.strip().lower()
    return {"true": True, "false": False}.get(t)


def parse_guid(text: str) -> uuid.UUID | None:
    t = text.strip()
    if any(p.match(t) for p in _GUID_FORMS):
        return uuid.UUID(t.strip("{}()"))
    return None


def parse_date(text: str, tz: str) -> datetime | None:
    """A local wall time in ``tz`` (naive); ISO strings with an offset are converted."""
    t = text.strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(t, fmt)
        except ValueError:
            pass
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is not None:
        d = d.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    return d


def bind(fields: list[F], values: FormValues, tz: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Bind ``values`` onto the model ``fields``; returns (model, errors)."""
    model: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}

    def err(key: str, msg: str) -> None:
        errors.setdefault(key, []).append(msg)

    for f in fields:
        if f.kind == "params":
            model[f.name] = values.param_list(f.name)
            continue
        if f.kind in ("ints", "guids", "strs"):
            raw = values.many(f.name)
            if raw is None:
                model[f.name] = None
                continue
            out = []
            for i, v in enumerate(raw):
                if f.kind == "strs":
                    out.append(v)
                    continue
                parsed = parse_int(v) if f.kind == "ints" else parse_guid(v)
                if parsed is None:
                    err(f"{f.name}[{i}]" if len(raw) > 1 else f.name, invalid(v, f.name))
                else:
                    out.append(parsed)
            if f.max_length is not None and len(out) > f.max_length:
                err(f.name, f"The field {f.name} must be a string or array type with a maximum length of '{f.max_length}'.")
            model[f.name] = out
            continue
        raw = values.first(f.name)
        if f.kind == "text":  # an extension field where "" means something (back to the default)
            if raw is not None and f.max_length is not None and len(raw) > f.max_length:
                err(f.name, f"The field {f.name} must be a string or array type with a maximum length of '{f.max_length}'.")
            model[f.name] = raw
            continue
        if f.kind == "str":
            v = raw if raw not in (None, "") else None  # ConvertEmptyStringToNull
            if f.required and (v is None or not v.strip()):
                err(f.name, f"The {f.name} field is required.")
            elif v is not None and f.max_length is not None and len(v) > f.max_length:
                err(f.name, f"The field {f.name} must be a string or array type with a maximum length of '{f.max_length}'.")
            model[f.name] = v
            continue
        if raw is None:
            model[f.name] = None
            continue
        if raw.strip() == "":
            if f.kind in ("int", "bool") or (f.kind in ("guid",) and f.required):
                err(f.name, "The value '' is invalid.")
            model[f.name] = None
            continue
        parsed: Any
        if f.kind == "int":
            parsed = parse_int(raw)
        elif f.kind == "bool":
            parsed = parse_bool(raw)
        elif f.kind == "guid":
            parsed = parse_guid(raw)
        elif f.kind == "date":
            parsed = parse_date(raw, tz)
        else:  # pragma: no cover - a programming error in a field table
            raise ValueError(f.kind)
        if parsed is None:
            err(f.name, invalid(raw, f.name))
        model[f.name] = parsed
    return model, errors


SCHEDULE_INFO: list[F] = [
    F("Id", "guid"),
    F("Title", "str", required=True, max_length=100),
    F("MetaType", "int"),
    F("RunLoop", "bool"),
    F("CronExpression", "str", max_length=50),
    F("StartDate", "date"),
    F("EndDate", "date"),
    F("Remark", "str", max_length=500),
    F("AssemblyName", "str", max_length=200),
    F("ClassName", "str", max_length=200),
    F("CustomParamsJson", "str", max_length=20000),
    F("Params", "params"),
    F("Keepers", "ints", max_length=1000),
    F("Nexts", "guids", max_length=1000),
    F("Executors", "strs", max_length=1000),
    F("RunNow", "bool"),
    F("HttpRequestUrl", "str", max_length=500),
    F("HttpMethod", "str", max_length=10),
    F("HttpContentType", "str", max_length=50),
    F("HttpHeaders", "str", max_length=2000),
    F("HttpBody", "str", max_length=2000),
    # extension: Prefect notification blocks ("slack-webhook/ops") told of every failure
    F("NotifyBlocks", "strs", max_length=20),
    # extension: what happens to a firing whose node died while running it (schedulemaster/master/failover.py)
    F("FailoverPolicy", "str", max_length=20),
    # extension: per-task execution policies (deployments/policy.py); absent keeps the task's value
    F("MisfirePolicy", "str", max_length=20),
    F("MisfireThresholdSeconds", "int"),
    F("OverlapPolicy", "str", max_length=20),
    F("MaxParallel", "int"),
    F("TimeoutSeconds", "int"),
    F("Retries", "int"),
    F("RetryIntervalSeconds", "int"),
    F("RetryBackoff", "str", max_length=20),
    F("FailOnNon2xx", "text", max_length=20),
    F("ExpectedText", "text", max_length=1000),
    F("AlarmAfterFailures", "int"),
    F("AlarmLateSeconds", "int"),
    F("AlarmOnMissed", "bool"),
    # bindable but ignored by Create, as in the original
    F("Status", "int"),
    F("CreateTime", "date"),
    F("CreateUserId", "int"),
    F("CreateUserName", "str", max_length=50),
    F("LastRunTime", "date"),
    F("NextRunTime", "date"),
    F("TotalRunCount", "int"),
]
ID_ONLY: list[F] = [F("id", "guid")]
QUERY_LIST: list[F] = [F("name", "str"), F("pageNumber", "int"), F("pageSize", "int")]
