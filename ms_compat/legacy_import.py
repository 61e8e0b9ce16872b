"""Reading an existing ScheduleMaster database and planning its import (issue 8, first slice).

This module only *reads* the original's tables (behaviour notes §3: MySQL by default,
PostgreSQL, SQL Server where a driver installs) and decides, row by row, what an import would
do: create, update, keep, or cannot carry over, and why. ``schedulemaster import --dry-run``
prints that plan. Writing it (tasks with the same ids through the master, users with their
stored hashes, settings, delayed tasks) is the next slice; see the issue's notes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

# The original's tables and the columns this import reads (EF model, §3). A source missing one
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
HISTORY_TABLES = {"scheduletraces": ["traceid", "scheduleid", "node", "starttime", "endtime", "elapsedtime", "result"],
                  "systemlogs": ["id", "category", "message", "stacktrace", "scheduleid", "node", "traceid",
                                 "createtime"]}
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class SourceError(Exception):
    """The source cannot be read at all (unreachable, not a ScheduleMaster database...)."""


def source_url(url: str) -> str:
    """``mysql://`` means PyMySQL (pure Python, installs anywhere); ``postgresql://`` psycopg."""
    for prefix, driver in (("mysql://", "mysql+pymysql://"), ("mariadb://", "mysql+pymysql://"),
                           ("postgresql://", "postgresql+psycopg://"), ("postgres://", "postgresql+psycopg://"),
                           ("mssql://", "mssql+pyodbc://")):
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


def read_source(url: str, timeout: int = 10) -> Snapshot:
    """All of the original's rows this import needs, or SourceError saying why not."""
    try:
        u = make_url(source_url(url))
    except Exception as exc:
        raise SourceError(f"not a database URL ({exc}); expected e.g. mysql://user:pw@host/schedule_master") from None
    args: dict[str, Any] = {}
    if u.get_backend_name() == "mysql":
        args = {"connect_timeout": timeout, "charset": "utf8mb4"}
    elif u.get_backend_name() == "postgresql":
        args = {"connect_timeout": timeout}
    try:
        engine = create_engine(u, connect_args=args)
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
                result = conn.execute(text(f"SELECT {', '.join(_quote(engine, c) for c in cols)} "
                                           f"FROM {_quote(engine, table)}"))
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
    action: str   # create | update | keep | skip | cannot
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    history: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, action: str) -> int:
        return sum(1 for i in self.items if i.kind == kind and i.action == action)


def _guid(value: Any) -> str | None:
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError):
        return None


def plan_import(snap: Snapshot, *, known_configs: set[str], existing_users: dict[str, str],
                existing_tasks: set[str], existing_delayed: set[str], start: bool = False) -> Plan:
    """Decide what importing ``snap`` does, item by item, without changing anything.

    ``existing_*`` describe the target: user name -> stored hash, task ids, delayed ids."""
    from schedulemaster.deployments import quartz

    plan = Plan(history=dict(snap.history_counts))
    users = {u["id"]: u for u in snap.rows["systemusers"]}
    for u in snap.rows["systemusers"]:
        name, pw = str(u["username"] or ""), str(u["password"] or "")
        item = Item("user", name, u["realname"] or "", "create")
        if not name:
            item.action, item.notes = "cannot", ["empty user name"]
        elif not _MD5.match(pw):
            item.action, item.notes = "cannot", ["password is not an md5 hex hash"]
        elif name in existing_users:
            item.action = "keep" if existing_users[name] == pw else "update"
            if item.action == "update":
                item.notes.append("password hash differs: the original's will be kept")
        if u["status"] == 0:
            item.notes.append("disabled")
        elif u["status"] == -1:
            item.notes.append("deleted")
        plan.items.append(item)
    for c in snap.rows["systemconfigs"]:
        key = str(c["key"])
        if key in known_configs:
            plan.items.append(Item("setting", key, str(c["value"] or ""), "update"))
        else:
            plan.items.append(Item("setting", key, str(c["value"] or ""), "cannot", ["unknown setting"]))

    task_ids = {_guid(s["id"]) for s in snap.rows["schedules"] if s["status"] != -1}
    http = {_guid(h["scheduleid"]): h for h in snap.rows["schedulehttpoptions"]}
    keepers: dict[str, list[int]] = {}
    for k in snap.rows["schedulekeepers"]:
        keepers.setdefault(_guid(k["scheduleid"]), []).append(k["userid"])
    nexts: dict[str, list[str]] = {}
    for r in snap.rows["schedulereferences"]:
        nexts.setdefault(_guid(r["scheduleid"]), []).append(_guid(r["childid"]))
    for s in snap.rows["schedules"]:
        tid = _guid(s["id"])
        if s["status"] == -1:
            continue  # soft-deleted in the original: nothing to carry over
        item = Item("task", tid or str(s["id"]), s["title"] or "", "update" if tid in existing_tasks else "create")
        plan.items.append(item)
        if tid is None:
            item.action, item.notes = "cannot", ["id is not a GUID"]
            continue
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
            item.notes.append(f".NET plugin {s['assemblyname']}/{s['classname']}: comes in Stopped until a Python "
                              "port of the same AssemblyName/ClassName is uploaded")
        elif s["metatype"] not in (1, 2):
            item.action = "cannot"
            item.notes.append(f"unknown MetaType {s['metatype']}")
        if s["customparamsjson"]:
            try:
                if not isinstance(json.loads(s["customparamsjson"]), list):
                    raise ValueError("not a list")
            except ValueError:
                item.notes.append("CustomParamsJson is not a JSON list: dropped")
        dangling_k = [k for k in keepers.get(tid, []) if k not in users]
        if dangling_k:
            item.notes.append(f"keepers {dangling_k} are not users: dropped")
        dangling_n = [n for n in nexts.get(tid, []) if n not in task_ids]
        if dangling_n:
            item.notes.append(f"{len(dangling_n)} child task(s) missing or deleted: dropped")
        if s["status"] in (1, 2) and item.action != "cannot":
            item.notes.append("Running in the original" + ("" if start and s["metatype"] == 2 else
                                                           ": comes in Stopped (use --start)"))
    now = datetime.now()
    from datetime import timedelta

    pattern = next((str(c["value"]) for c in snap.rows["systemconfigs"] if c["key"] == "DelayTask_DelayPattern"),
                   "Relative")
    for d in snap.rows["scheduledelayeds"]:
        did = _guid(d["id"])
        title = f"{d['topic']}/{d['contentkey']}"
        if d["status"] not in (1, 2):
            continue  # voided, succeeded or failed: history, not work
        item = Item("delayed", did or str(d["id"]), title, "keep" if did in existing_delayed else "create")
        if did is None:
            item.action, item.notes = "cannot", ["id is not a GUID"]
        elif not str(d["notifyurl"] or "").startswith(("http://", "https://")):
            item.action, item.notes = "cannot", [f"NotifyUrl '{d['notifyurl']}' is not http(s)"]
        else:
            # the original kept one global pattern; its times are the workers' local wall times
            due = (d["delayabsolutetime"] if pattern == "Absolute" or not d["createtime"]
                   else d["createtime"] + timedelta(seconds=d["delaytimespan"] or 0))
            if isinstance(due, datetime) and due < now:
                item.notes.append("overdue: fires at once after the import, marked late")
        plan.items.append(item)
    return plan
