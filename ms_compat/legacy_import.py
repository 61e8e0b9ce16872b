"""Reading an existing ScheduleMaster database and turning its rows into import items.

This module only *reads* the original's tables (docs/legacy-behaviour.md, Data model: MySQL by default,
PostgreSQL, SQL Server where a driver installs) and judges each row on its own: what cannot
be carried over and why (an invalid cron, an HTTP task without its options, a MetaType that
does not exist...), what changes on the way (dangling keepers and children dropped, a Nexts
cycle broken), and the item the master is sent. What each item does to *this* system
(create, update, keep, conflict) is decided by the master (``ms_compat/import_target.py``),
the one place that sees the target and the ledger of earlier imports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator

from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from schedulemaster.deployments import quartz
from schedulemaster.store.ledger import fingerprint

# The original's tables and the columns this import reads (its EF model). A source missing one
# of them is "a schema of a different version", reported before anything else happens.
TABLES: dict[str, list[str]] = {
    "schedules": ["id", "title", "metatype", "remark", "runloop", "cronexpression", "assemblyname", "classname",
                  "customparamsjson", "status", "startdate", "enddate", "createtime", "createuserid",
                  "createusername", "lastruntime", "nextruntime", "totalruncount"],
    "schedulehttpoptions": ["scheduleid", "requesturl", "method", "contenttype", "headers", "body"],
    "schedulekeepers": ["scheduleid", "userid"],
    "schedulereferences": ["scheduleid", "childid"],
    "scheduleexecutors": ["scheduleid", "workername"],
    "scheduledelayeds": ["id", "sourceapp", "topic", "contentkey", "delaytimespan", "delayabsolutetime",
                         "createtime", "createusername", "executetime", "finishtime", "status", "failedretrys",
                         "remark", "notifyurl", "notifydatatype", "notifybody"],
    "systemusers": ["id", "username", "password", "realname", "phone", "email", "status", "createtime",
                    "lastlogintime"],
    "systemconfigs": ["key", "value"],
}
ORDER = {"schedules": "id", "schedulehttpoptions": "scheduleid", "schedulekeepers": "id", "schedulereferences": "id",
         "scheduleexecutors": "id", "scheduledelayeds": "id", "systemusers": "id", "systemconfigs": "key"}
# what the master accepts (ms_compat/import_api.py); a longer value is reported here, not sent
LIMITS = {
    "task": {"title": 100, "remark": 500, "cronexpression": 50, "assemblyname": 200, "classname": 200,
             "customparamsjson": 20_000, "createusername": 50, "requesturl": 500, "method": 10,
             "contenttype": 50, "headers": 20_000, "body": 1_000_000},
    "delayed": {"sourceapp": 50, "topic": 100, "contentkey": 100, "createusername": 50, "remark": 255,
                "notifyurl": 255, "notifydatatype": 50, "notifybody": 1000},
    "user": {"email": 500},
}
LOG_MAX = 20_000  # characters of a log line (message and stack trace) carried over
HISTORY_TABLES = {"scheduletraces": ["traceid", "scheduleid", "node", "starttime", "endtime", "elapsedtime", "result"],
                  "systemlogs": ["id", "category", "message", "stacktrace", "scheduleid", "node", "traceid",
                                 "createtime"]}
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class SourceError(Exception):
    """The source cannot be read at all (unreachable, not a ScheduleMaster database...)."""


def source_url(url: str) -> str:
    """``mysql://`` means PyMySQL (pure Python, installs anywhere); ``postgresql://`` psycopg;
    ``mssql://`` pymssql (its wheel carries FreeTDS: no ODBC driver to install by hand)."""
    for prefix, driver in (("mysql://", "mysql+pymysql://"), ("mariadb://", "mysql+pymysql://"),
                           ("postgresql://", "postgresql+psycopg://"), ("postgres://", "postgresql+psycopg://"),
                           ("mssql://", "mssql+pymssql://"), ("sqlserver://", "mssql+pymssql://")):
        if url.startswith(prefix):
            return driver + url[len(prefix):]
    return url


@dataclass
class Snapshot:
    """Every row the import reads, keyed as the original keyed them."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    history_counts: dict[str, int] = field(default_factory=dict)


def _quote(engine: Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def _quote_for(engine: Engine):
    return lambda name: _quote(engine, name)


def _connect_args(url: str, timeout: int) -> dict[str, Any]:
    backend = make_url(source_url(url)).get_backend_name()
    if backend == "mysql":
        return {"connect_timeout": timeout, "charset": "utf8mb4"}
    if backend == "postgresql":
        return {"connect_timeout": timeout}
    if backend == "mssql":
        return {"login_timeout": timeout, "timeout": 600}
    return {}


def read_source(url: str, timeout: int = 10) -> Snapshot:
    """All of the original's rows this import needs, or SourceError saying why not."""
    try:
        u = make_url(source_url(url))
    except Exception as exc:
        raise SourceError(f"not a database URL ({exc}); expected e.g. mysql://user:pw@host/schedule_master") from None
    try:
        engine = create_engine(u, connect_args=_connect_args(url, timeout))
    except Exception as exc:  # no driver for this dialect
        raise SourceError(f"cannot use {u.drivername}: {exc}") from None
    snap = Snapshot()
    try:
        with engine.connect() as conn:
            missing = []
            for table, cols in {**TABLES, **HISTORY_TABLES}.items():
                try:
                    conn.execute(text(f"SELECT {', '.join(_quote(engine, c) for c in cols)} FROM "
                                      f"{_quote(engine, table)} WHERE 1 = 0"))
                except SQLAlchemyError as exc:
                    conn.rollback()
                    if table in TABLES:
                        missing.append(f"{table} ({str(getattr(exc, 'orig', exc)).splitlines()[0][:120]})")
            if missing:
                raise SourceError("not the ScheduleMaster schema this import knows (v2.x): cannot read "
                                  + "; ".join(missing))
            for table, cols in TABLES.items():
                # a fixed order: which edge of a Nexts cycle is dropped, and the order of
                # keepers, children and executors, must not change between two runs
                result = conn.execute(text(f"SELECT {', '.join(_quote(engine, c) for c in cols)} "
                                           f"FROM {_quote(engine, table)} ORDER BY {_quote(engine, ORDER[table])}"))
                snap.rows[table] = [dict(zip(cols, r)) for r in result]
            for table in HISTORY_TABLES:
                try:
                    snap.history_counts[table] = conn.execute(
                        text(f"SELECT count(*) FROM {_quote(engine, table)}")).scalar_one()
                except SQLAlchemyError:
                    conn.rollback()
    except SourceError:
        raise
    except SQLAlchemyError as exc:
        raise SourceError(f"cannot read {u.render_as_string(hide_password=True)}: "
                          f"{str(getattr(exc, 'orig', exc)).splitlines()[0][:300]}") from None
    finally:
        engine.dispose()
    return snap


@dataclass
class Item:
    kind: str     # task | user | setting | delayed
    key: str      # the id / user name / setting key
    title: str
    action: str   # import | skip | cannot; after the master answered: created, updated, kept, conflict, failed
    notes: list[str] = field(default_factory=list)
    payload: dict[str, Any] | None = None  # what the master is sent
    level: int = 0  # tasks: 0 = no children; a parent is sent after every child it names
    target_id: str | None = None  # its id here, once the master answered (users: may differ)
    unknown_nodes: list[str] = field(default_factory=list)  # tasks: Executors no node here has


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    history: dict[str, int] = field(default_factory=dict)
    history_result: dict[str, Any] | None = None  # runs recorded, failed, skipped (--with-history)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, for --report

    def count(self, kind: str, action: str) -> int:
        return sum(1 for i in self.items if i.kind == kind and i.action == action)

    def of(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.kind == kind]


def _guid(value: Any) -> str | None:
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError):
        return None


def _too_long(kind: str, payload: dict[str, Any]) -> str | None:
    for key, limit in LIMITS[kind].items():
        value = payload.get(key)
        if isinstance(value, str) and len(value) > limit:
            return f"{key} is {len(value):,} characters; at most {limit:,} are kept here"
    for key in ("executors",):
        if any(len(v) > 100 for v in payload.get(key) or []):
            return "an executor name is over 100 characters"
    return None


def source_fingerprint(payload: dict[str, Any]) -> str:
    """The task as the original has it (status aside: starting or pausing it there is not an
    edit), taken before the keepers are mapped and children dropped for this target."""
    return fingerprint({k: v for k, v in payload.items() if k not in ("status", "sourcefp")})


def plan_import(snap: Snapshot, *, known_configs: set[str], start: bool = False) -> Plan:
    """Judge every row of ``snap`` on its own, without looking at the target."""
    plan = Plan(history=dict(snap.history_counts))
    _plan_users(snap, plan)
    for c in snap.rows["systemconfigs"]:
        key, value = str(c["key"]), ("" if c["value"] is None else str(c["value"]))
        if key in known_configs:
            plan.items.append(Item("setting", key, value, "import", payload={"key": key, "value": value}))
        else:
            plan.items.append(Item("setting", key, value, "cannot", ["unknown setting"]))
    _plan_tasks(snap, plan, start)
    _plan_delayed(snap, plan)
    return plan


def _plan_users(snap: Snapshot, plan: Plan) -> None:
    seen: set[str] = set()
    for u in snap.rows["systemusers"]:
        name, pw = str(u["username"] or ""), str(u["password"] or "").lower()
        item = Item("user", name, u["realname"] or "", "import")
        plan.items.append(item)
        if u["status"] == -1:
            item.action, item.notes = "skip", ["deleted in the original"]
            continue
        if not name or len(name) > 50:
            item.action, item.notes = "cannot", ["empty or over-long user name"]
        elif name.lower() in seen:
            item.action, item.notes = "cannot", ["the same name (ignoring case) as another user: names are unique here"]
        elif not _MD5.match(pw):
            item.action, item.notes = "cannot", ["password is not an md5 hex hash"]
        if item.action == "cannot":
            continue
        seen.add(name.lower())
        if u["status"] == 0:
            item.notes.append("disabled")
        if (u["email"] or "") and len(u["email"]) > 500:
            item.action, item.notes = "cannot", ["email is over 500 characters"]
            continue
        item.payload = {"id": u["id"], "username": name, "password": pw, "realname": (u["realname"] or "")[:50],
                        "phone": (u["phone"] or None) and str(u["phone"])[:15], "email": u["email"] or None,
                        "status": 0 if u["status"] == 0 else 1, "createtime": u["createtime"] or datetime(2000, 1, 1),
                        "lastlogintime": u["lastlogintime"]}


def _executors(snap: Snapshot) -> dict[str | None, list[str]]:
    """scheduleexecutors by schedule id; the original keyed tasks and delayed tasks alike there."""
    out: dict[str | None, list[str]] = {}
    for e in snap.rows["scheduleexecutors"]:
        out.setdefault(_guid(e["scheduleid"]), []).append(str(e["workername"] or "").strip())
    return out


def _plan_tasks(snap: Snapshot, plan: Plan, start: bool) -> None:
    users = {u["id"] for u in snap.rows["systemusers"] if u["status"] != -1}
    http = {_guid(h["scheduleid"]): h for h in snap.rows["schedulehttpoptions"]}
    keepers: dict[str | None, list[int]] = {}
    for k in snap.rows["schedulekeepers"]:
        keepers.setdefault(_guid(k["scheduleid"]), []).append(k["userid"])
    nexts: dict[str | None, list[str | None]] = {}
    for r in snap.rows["schedulereferences"]:
        nexts.setdefault(_guid(r["scheduleid"]), []).append(_guid(r["childid"]))
    executors = _executors(snap)
    items: dict[str, Item] = {}
    for s in snap.rows["schedules"]:
        tid = _guid(s["id"])
        if s["status"] == -1:
            continue  # soft-deleted in the original: nothing to carry over
        item = Item("task", tid or str(s["id"]), s["title"] or "", "import")
        plan.items.append(item)
        if tid is None:
            item.action, item.notes = "cannot", ["id is not a GUID"]
            continue
        if not (s["title"] or "").strip():
            item.action, item.notes = "cannot", ["empty title"]
        if s["runloop"]:
            try:
                quartz.parse(s["cronexpression"] or "")
            except quartz.CronError as exc:
                item.action = "cannot"
                item.notes.append(f"invalid cron '{s['cronexpression']}': {exc}")
        if s["metatype"] == 2 and tid not in http:
            item.action = "cannot"
            item.notes.append("HTTP task without its schedulehttpoptions row")
        elif s["metatype"] == 1:
            item.notes.append(f"plugin {s['assemblyname']}/{s['classname']}: starts only once a Python port of "
                              "this AssemblyName/ClassName is on the nodes (schedulemaster plugin upload)")
        elif s["metatype"] not in (1, 2):
            item.action = "cannot"
            item.notes.append(f"unknown MetaType {s['metatype']}")
        params = s["customparamsjson"]
        if params:
            try:
                value = json.loads(params)
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    raise ValueError("not a list")
            except ValueError:
                item.notes.append("CustomParamsJson is not a JSON ScheduleParam list: dropped")
                params = "[]"
        dangling_k = [k for k in keepers.get(tid, []) if k not in users]
        if dangling_k:
            item.notes.append(f"keepers {dangling_k} are not users: dropped")
        if s["status"] in (1, 2) and item.action != "cannot":
            item.notes.append(("Running" if s["status"] == 1 else "Paused") + " in the original: "
                              + ("started after the import (--start)" if start else "comes in Stopped (use --start)"))
        h = http.get(tid) or {}
        too_long = _too_long("task", {**s, **h})
        if too_long:
            item.action = "cannot"
            item.notes.append(too_long)
        if item.action == "cannot":
            continue
        item.payload = {
            "id": tid, "title": s["title"], "metatype": s["metatype"], "remark": s["remark"],
            "runloop": bool(s["runloop"]), "cronexpression": s["cronexpression"],
            "assemblyname": s["assemblyname"], "classname": s["classname"], "customparamsjson": params,
            "status": s["status"], "startdate": s["startdate"], "enddate": s["enddate"],
            "createtime": s["createtime"], "createuserid": s["createuserid"] or 0,
            "createusername": s["createusername"],
            "keepers": list(dict.fromkeys(k for k in keepers.get(tid, []) if k in users)),
            "nexts": [], "executors": list(dict.fromkeys(e for e in executors.get(tid, []) if e)),
            "requesturl": h.get("requesturl"), "method": h.get("method"), "contenttype": h.get("contenttype"),
            "headers": h.get("headers"), "body": h.get("body"),
        }
        items[tid] = item
    # Nexts: children that come over too, without the edges that close a cycle (the original
    # accepted A -> B -> A and looped forever; this system refuses cycles).
    graph: dict[str, list[str]] = {}
    for tid, item in items.items():
        kids = [c for c in dict.fromkeys(nexts.get(tid, [])) if c is not None and c != tid]
        missing = [c for c in kids if c not in items]
        if missing:
            item.notes.append(f"{len(missing)} child task(s) missing, deleted or not carried over: dropped")
        if tid in nexts.get(tid, []):
            item.notes.append("names itself as a child: dropped")
        graph[tid] = [c for c in kids if c in items]
    for parent, child in _cycle_edges(graph):
        graph[parent].remove(child)
        items[parent].notes.append(f"child {child} dropped: it closes a cycle of Nexts")
    for tid, item in items.items():
        item.payload["nexts"] = graph[tid]
        item.payload["sourcefp"] = source_fingerprint(item.payload)
    levels = _levels(graph)
    for tid, item in items.items():
        item.level = levels[tid]


def _cycle_edges(graph: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The back edges of a depth-first walk: removing them leaves no cycle."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    edges: list[tuple[str, str]] = []
    for root in graph:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(list(graph[root])))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                edges.append((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(list(graph[child]))))
    return edges


def _levels(graph: dict[str, list[str]]) -> dict[str, int]:
    """0 for a task with no children, else 1 + its deepest child (the graph has no cycle).
    Iterative post-order: a long chain must not hit the recursion limit."""
    memo: dict[str, int] = {}
    for root in graph:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in memo:
                continue
            if expanded:
                memo[node] = 1 + max((memo[c] for c in graph[node]), default=-1)
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in graph[node] if c not in memo)
    return memo


def _plan_delayed(snap: Snapshot, plan: Plan) -> None:
    pattern = next((str(c["value"]) for c in snap.rows["systemconfigs"] if c["key"] == "DelayTask_DelayPattern"),
                   "Relative")
    pattern = "Absolute" if pattern == "Absolute" else "Relative"
    executors = _executors(snap)
    for d in snap.rows["scheduledelayeds"]:
        if d["status"] not in (1, 2):
            continue  # voided, succeeded or failed: history, not work
        did = _guid(d["id"])
        item = Item("delayed", did or str(d["id"]), f"{d['topic']}/{d['contentkey']}", "import")
        plan.items.append(item)
        if did is None:
            item.action, item.notes = "cannot", ["id is not a GUID"]
            continue
        if not str(d["notifyurl"] or "").strip().lower().startswith(("http://", "https://")):
            item.action, item.notes = "cannot", [f"NotifyUrl '{d['notifyurl']}' is not http(s)"]
            continue
        if pattern == "Relative" and d["createtime"] is None:
            item.action, item.notes = "cannot", ["no createtime to count its DelayTimeSpan from"]
            continue
        # the original kept one global pattern; its times are the workers' local wall times,
        # which the master turns into a due time (and says when it is already past)
        too_long = _too_long("delayed", d)
        if too_long:
            item.action, item.notes = "cannot", [too_long]
            continue
        item.payload = {
            "id": did, "sourceapp": d["sourceapp"] or "", "topic": d["topic"] or "", "contentkey": d["contentkey"] or "",
            "delaytimespan": max(0, d["delaytimespan"] or 0), "delayabsolutetime": d["delayabsolutetime"],
            "createtime": d["createtime"], "createusername": d["createusername"], "executetime": d["executetime"],
            "status": d["status"], "failedretrys": max(0, d["failedretrys"] or 0), "remark": d["remark"],
            "notifyurl": d["notifyurl"], "notifydatatype": d["notifydatatype"] or "", "notifybody": d["notifybody"] or "",
            "pattern": pattern, "executors": list(dict.fromkeys(e for e in executors.get(did, []) if e)),
        }


def iter_history(url: str, task_ids: set[str], batch: int = 200, timeout: int = 10) -> Iterator[list[dict[str, Any]]]:
    """The original's traces of ``task_ids``, oldest first, ``batch`` at a time, each with its
    log lines (systemlogs by traceid). Streamed: a history of millions of rows is never
    held in memory."""
    engine = create_engine(source_url(url), connect_args=_connect_args(url, timeout))
    q = _quote_for(engine)
    cols = HISTORY_TABLES["scheduletraces"]
    log_cols = ["traceid", "category", "message", "stacktrace", "createtime"]
    try:
        with engine.connect() as stream, engine.connect() as lookup:
            result = stream.execution_options(stream_results=True, yield_per=batch).execute(text(
                f"SELECT {', '.join(q(c) for c in cols)} FROM {q('scheduletraces')} ORDER BY {q('starttime')}"))
            for rows in result.partitions(batch):
                traces = [dict(zip(cols, r)) for r in rows]
                traces = [t for t in traces if _guid(t["scheduleid"]) in task_ids and _guid(t["traceid"])]
                if not traces:
                    continue
                by_trace: dict[str, list[dict[str, Any]]] = {}
                ids = [str(t["traceid"]) for t in traces]
                logs = lookup.execute(text(
                    f"SELECT {', '.join(q(c) for c in log_cols)} FROM {q('systemlogs')} "
                    f"WHERE {q('traceid')} IN :ids ORDER BY {q('id')}").bindparams(
                        bindparam("ids", expanding=True)), {"ids": ids})
                for r in logs:
                    entry = dict(zip(log_cols, r))
                    by_trace.setdefault(_guid(entry.pop("traceid")), []).append(entry)
                yield [{"traceid": _guid(t["traceid"]), "scheduleid": _guid(t["scheduleid"]),
                         "node": str(t["node"])[:100] if t["node"] else None,
                        "starttime": t["starttime"], "endtime": t["endtime"], "elapsedtime": t["elapsedtime"],
                        "result": t["result"], "logs": [
                            {"category": e["category"], "message": str(e["message"] or "")[:LOG_MAX],
                             "stacktrace": str(e["stacktrace"])[:LOG_MAX] if e["stacktrace"] else None,
                             "createtime": e["createtime"] or t["starttime"]}
                            for e in by_trace.get(_guid(t["traceid"]), [])[:50]]}
                       for t in traces]
    finally:
        engine.dispose()
