"""The master's side of ``schedulemaster import``: each item of an original ScheduleMaster
database checked against this system and written in its own transaction.

Why here and not in the CLI: tasks must keep their GUIDs, and only code inside the Prefect
server process can create a deployment with an id it did not mint (``deployments/tasks.py``).
Users, settings and delayed tasks go through the same door so that one process decides
every item with the same rules, and a dry run asks the same questions without writing.

Re-running an import is a three-way comparison per item, between the source now, the
target now, and what the last import wrote (the ``importledger`` table):

=====================  ===================  ==========================================
source since last      target since last    outcome
=====================  ===================  ==========================================
unchanged              any                  kept (a change made here stays)
changed                unchanged            updated
changed                changed              conflict: reported, nothing written
                                            (``--overwrite``: the source wins)
=====================  ===================  ==========================================

An item the target has without a ledger row (the seeded ``admin``, or a write whose ledger
row was lost) is kept when it already equals the source and updated otherwise: on a first
import the original is the authority. An item the last import wrote and someone deleted
here is a conflict, not silently re-created.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from schedulemaster.deployments import run_counts
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.deployments.tasks import Status, TaskRecord
from schedulemaster.master import bulk_runs
from schedulemaster.ms_compat.admin_api import CONFIG_RULES
from schedulemaster.ms_compat.delayed_api import TEXT_FIELDS, to_utc, unsendable
from schedulemaster.ms_compat.legacy_import import source_fingerprint
from schedulemaster.ms_compat.task_api import TaskError
from schedulemaster.store import claims
from schedulemaster.store.db import Store, SystemConfig, SystemUser
from schedulemaster.store.delayed_store import T, host_of, ready_row
from schedulemaster.store.ledger import ImportLedger, fingerprint
from schedulemaster.timeutil import MAX_SPAN_SECONDS, utcnow_naive

log = logging.getLogger("schedulemaster.import")

#: the task fields an import sets; a task's fingerprint here is taken over these
TASK_CONTENT = ("Title", "MetaType", "Remark", "RunLoop", "CronExpression", "AssemblyName", "ClassName",
                "CustomParamsJson", "StartDate", "EndDate", "Keepers", "Nexts", "Executors", "Http", "TimeZone")
USER_CONTENT = ("username", "password", "realname", "phone", "email", "status")
HISTORY_TRANSACTION = 100  # runs (with their logs) per transaction


@dataclass
class Outcome:
    kind: str
    key: str
    action: str            # created | updated | kept | conflict | failed
    message: str = ""
    target_id: str | None = None
    #: a task's Executors that no node of this system has registered under (it would never fire
    #: on them; the CLI names them and exits 3, --map-node renames them)
    unknown_nodes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "action": self.action, "message": self.message,
                "target_id": self.target_id, "unknown_nodes": self.unknown_nodes}


@dataclass
class Options:
    dry_run: bool = False
    overwrite: bool = False
    start: bool = False
    timezone: str | None = None  # the original's wall-clock zone; None: the master's
    user_role: str = "admin"  # what imported accounts may do here (ms_compat/roles.py)


def decide(exists: bool, ledger: ImportLedger | None, source_fp: str, would_fp: str, target_fp: str | None,
           overwrite: bool) -> tuple[str, str]:
    """(action, why) for one item; see the module docstring. ``would_fp`` is the target's
    fingerprint as the import would write it, ``target_fp`` the target's as it is now."""
    if not exists:
        if ledger is not None and not overwrite:
            return "conflict", "deleted here after the last import: not re-created (--overwrite re-creates it)"
        return "create", "re-created (--overwrite)" if ledger is not None else ""
    if ledger is None:
        if would_fp == target_fp:
            return "keep", ""
        return "update", "existed here before the import: the original's values replace it"
    source_changed = source_fp != ledger.sourcefp
    target_changed = target_fp != ledger.targetfp
    if not source_changed:
        return "keep", "changed here since the last import: kept" if target_changed else ""
    if not target_changed or would_fp == target_fp:
        return "update", ""
    if overwrite:
        return "update", "changed on both sides: the original's values replace it (--overwrite)"
    return "conflict", "changed in the original and here since the last import: nothing written (--overwrite)"


#: A dry run compares secrets (password hashes, ``*Pwd`` settings) as if they had changed:
#: answering "kept" for the stored value and "updated" for any other made the dry run an
#: oracle for guessing them, 500 guesses a request.
DRY_RUN_SECRET = "\x00not compared in a dry run"
DRY_RUN_NOTE = "a dry run never compares secrets: shown as if the password changed"

_PAST = {"create": "created", "update": "updated", "keep": "kept", "conflict": "conflict"}


class ImportTarget:
    """Every write of an import, item by item. ``service`` gives the master's TaskService
    (the legacy API's own validation and Start), or None while the master is starting."""

    def __init__(self, store: Store, service: Callable[[], Any], timezone_name: str, on_settings_saved=None):
        self.store = store
        self.service = service
        self.tz = timezone_name  # the system's zone: the original's times are read in it by default
        self.on_settings_saved = on_settings_saved
        self._lock = asyncio.Lock()  # one import at a time: the ledger is read, then written

    # ---- ledger -----------------------------------------------------------------------
    def _ledger(self, kind: str, keys: list[str]) -> dict[str, ImportLedger]:
        if not keys:
            return {}
        with Session(self.store.engine) as s:
            rows = s.exec(select(ImportLedger).where(ImportLedger.kind == kind, ImportLedger.key.in_(keys))).all()
            return {r.key: r for r in rows}

    @staticmethod
    def _remember(session: Session, kind: str, key: str, source_fp: str, target_fp: str,
                  target_id: str | None = None) -> None:
        row = session.get(ImportLedger, (kind, key)) or ImportLedger(kind=kind, key=key, sourcefp="", targetfp="")
        row.sourcefp, row.targetfp, row.targetid = source_fp, target_fp, target_id
        row.importedat = utcnow_naive()
        session.add(row)

    def _remember_alone(self, kind: str, key: str, source_fp: str, target_fp: str, target_id: str | None = None):
        self._remember_many([(kind, key, source_fp, target_fp, target_id)])

    def _remember_many(self, rows: list[tuple[str, str, str, str, str | None]]) -> None:
        with Session(self.store.engine) as s:
            for row in rows:
                self._remember(s, *row)
            s.commit()

    # ---- settings ---------------------------------------------------------------------
    async def settings(self, items: list[dict[str, Any]], opts: Options) -> list[Outcome]:
        async with self._lock:
            current = await asyncio.to_thread(self.store.configs)
            ledger = await asyncio.to_thread(self._ledger, "setting", [i["key"] for i in items])
            out: list[Outcome] = []
            changed = False
            for item in items:
                key, value = item["key"], (item.get("value") or "").strip()
                if key not in current:
                    out.append(Outcome("setting", key, "failed", "unknown setting"))
                    continue
                rule = CONFIG_RULES.get(key)
                if rule is not None and not rule[0](value):
                    out.append(Outcome("setting", key, "failed", f"invalid value {value[:50]!r} (expected {rule[1]})"))
                    continue
                secret = key.endswith("Pwd")
                fp = fingerprint(DRY_RUN_SECRET if secret and opts.dry_run else value)
                action, why = decide(True, ledger.get(key), fp, fp, fingerprint(current[key]), opts.overwrite)
                if secret and opts.dry_run:
                    why = "; ".join(filter(None, [why, DRY_RUN_NOTE]))
                if action == "update" and not opts.dry_run:
                    def write(key=key, value=value, fp=fp):
                        with Session(self.store.engine) as s:
                            row = s.get(SystemConfig, key)
                            row.value, row.updateusername = value, "import"
                            row.updatetime = datetime.now(timezone.utc)
                            s.add(row)
                            self._remember(s, "setting", key, fp, fp)
                            s.commit()
                    try:
                        await asyncio.to_thread(write)
                    except Exception as exc:  # the store refused it: this setting alone fails
                        log.exception("importing setting %s failed", key)
                        out.append(Outcome("setting", key, "failed", _short(exc)))
                        continue
                    changed = True
                elif action == "keep" and not opts.dry_run and key not in ledger:
                    await asyncio.to_thread(self._remember_alone, "setting", key, fp, fp)
                out.append(Outcome("setting", key, _PAST[action], why))
            if changed and self.on_settings_saved is not None:
                try:
                    await self.on_settings_saved()
                except Exception as exc:  # saved here all the same; nodes see them at the next save
                    log.exception("mirroring the imported settings to the nodes failed")
                    for o in out:
                        if o.action == "updated":
                            o.message = "; ".join(filter(None, [o.message, f"saved, but not yet mirrored to "
                                                                f"the nodes ({_short(exc)})"]))
            return out

    # ---- users ------------------------------------------------------------------------
    async def users(self, items: list[dict[str, Any]], opts: Options) -> list[Outcome]:
        zone = ZoneInfo(opts.timezone or self.tz)
        async with self._lock:
            return await asyncio.to_thread(self._users, items, opts, zone)

    def _users(self, items: list[dict[str, Any]], opts: Options, zone: ZoneInfo) -> list[Outcome]:
        from sqlalchemy import text

        ledger = self._ledger("user", [i["username"].lower() for i in items])
        with Session(self.store.engine) as s:
            # names compared in Python: SQLite's lower() folds ASCII only, so "Иван" would
            # not find "иван" and a re-run would create the account a second time
            ids_by_name = {u.username.lower(): u.id for u in s.exec(select(SystemUser)).all()}
        out: list[Outcome] = []
        for item in items:
            key = item["username"].lower()
            if _has_nul(item):
                out.append(Outcome("user", item["username"], "failed", "a field contains a NUL character"))
                continue
            content = {k: item.get(k) for k in USER_CONTENT}
            if opts.dry_run:  # never answer whether a guessed password hash matches (see DRY_RUN_SECRET)
                content["password"] = DRY_RUN_SECRET
            fp = fingerprint(content)
            try:
                with Session(self.store.engine) as s:
                    known = ledger.get(key)
                    target = s.get(SystemUser, int(known.targetid)) if known and known.targetid else None
                    if target is None or target.username.lower() != key:
                        target_id = ids_by_name.get(key)
                        target = s.get(SystemUser, target_id) if target_id is not None else None
                    target_fp = fingerprint({k: getattr(target, k) for k in USER_CONTENT}) if target else None
                    action, why = decide(target is not None, ledger.get(key), fp, fp, target_fp, opts.overwrite)
                    if target is not None:
                        content["username"] = target.username  # the name as it is spelled here
                    notes = [why] if why else []
                    if action == "create":
                        wanted = item.get("id")
                        taken = s.get(SystemUser, wanted) if wanted else None
                        if taken is not None:
                            notes.append(f"id {wanted} is '{taken.username}' here: imported under a new id "
                                         f"(clients sending Keepers={wanted} must change)")
                        last = item.get("lastlogintime")
                        target = SystemUser(id=None if taken is not None else wanted, role=opts.user_role,
                                            createtime=_aware(item["createtime"], zone),
                                            lastlogintime=_aware(last, zone) if last else None, **content)
                    elif action == "update":
                        for k, v in content.items():
                            setattr(target, k, v)
                    remember = action in ("create", "update") or (action == "keep" and key not in ledger)
                    if remember and not opts.dry_run:
                        if action != "keep":
                            s.add(target)
                            s.flush()
                        if action == "create" and not self.store.url.startswith("sqlite"):
                            # an explicit id does not move PostgreSQL's sequence: the next account
                            # created through the API would collide with it. Never moved back
                            # (GREATEST with nextval), and in the same transaction as the insert.
                            s.exec(text("SELECT setval(pg_get_serial_sequence('systemusers', 'id'), GREATEST("
                                        "(SELECT max(id) FROM systemusers), "
                                        "nextval(pg_get_serial_sequence('systemusers', 'id'))))"))
                        # a keep is remembered only the first time: a ledger row moved on
                        # a keep would hide a change made here from the next comparison
                        self._remember(s, "user", key, fp, fingerprint(content) if action != "keep" else target_fp,
                                       str(target.id))
                        s.commit()
                        ids_by_name[key] = target.id
                    if opts.dry_run and target is not None:
                        notes.append(DRY_RUN_NOTE)
                    out.append(Outcome("user", item["username"], _PAST[action], "; ".join(notes),
                                       str(target.id) if target is not None and target.id is not None else None))
            except Exception as exc:  # one bad row must not abort the others
                log.exception("importing user %s failed", item["username"])
                out.append(Outcome("user", item["username"], "failed", _short(exc)))
        if not opts.dry_run:
            self.store.user_version += 1  # the legacy API's auth cache re-reads the accounts
        return out

    # ---- tasks ------------------------------------------------------------------------
    async def tasks(self, items: list[dict[str, Any]], opts: Options) -> list[Outcome]:
        """Items in the order given (children before their parents, so Nexts exist)."""
        service = self.service()
        if service is None:
            raise RuntimeError("the legacy API is still starting")
        async with self._lock:
            ledger = await asyncio.to_thread(self._ledger, "task", [str(i["id"]) for i in items])
            # every task read once per batch (Nexts are checked against it, as Create does)
            # and kept current as the batch writes: a read per task made imports O(n²)
            records = {str(r.id): r for r in await service.repo.list()}
            known = set(await asyncio.to_thread(claims.nodes, self.store.engine))  # nodes that registered here
            out: list[Outcome] = []
            remember: list[tuple[str, str, str, str, str]] = []
            try:
                for item in items:
                    try:
                        out.append(await self._task(service, item, ledger.get(str(item["id"])), opts, records,
                                                    remember, known))
                    except Exception as exc:
                        log.exception("importing task %s failed", item.get("id"))
                        out.append(Outcome("task", str(item.get("id")), "failed", _short(exc)))
            finally:
                # one ledger transaction per batch; a row lost to a crash in between heals
                # itself: the next run finds the task equal to the original and keeps it
                if remember:
                    await asyncio.to_thread(self._remember_many, remember)
            return out

    async def _task(self, service, item: dict[str, Any], ledger: ImportLedger | None, opts: Options,
                    records: dict[str, Any], remember: list[tuple[str, str, str, str, str]],
                    known: set[str] = frozenset()) -> Outcome:
        task_id = uuid.UUID(str(item["id"]))
        key = str(task_id)
        if _has_nul(item):
            return Outcome("task", key, "failed", "a field contains a NUL character")
        rec = records.get(key)
        model = {
            "Title": item["title"], "MetaType": item["metatype"], "Remark": item.get("remark"),
            "RunLoop": bool(item.get("runloop")), "CronExpression": item.get("cronexpression"),
            "AssemblyName": item.get("assemblyname"), "ClassName": item.get("classname"),
            "CustomParamsJson": item.get("customparamsjson"),
            "StartDate": item.get("startdate"), "EndDate": item.get("enddate"),
            "Keepers": item.get("keepers") or [], "Nexts": item.get("nexts") or [],
            "Executors": item.get("executors") or [], "NotifyBlocks": [],
            "HttpRequestUrl": item.get("requesturl"), "HttpMethod": item.get("method"),
            "HttpContentType": item.get("contenttype"), "HttpHeaders": item.get("headers"),
            "HttpBody": item.get("body"),
        }
        creator = SystemUser(id=item.get("createuserid") or 0, username=item.get("createusername") or "",
                             password="", realname="")
        if opts.dry_run:
            # children this dry run would create do not exist yet: validate against the ones
            # that do (the CLI sends only children that are, or would be, here)
            model["Nexts"] = [n for n in model["Nexts"] if str(n) in records]
        try:
            spec = await service.build_spec(model, task_id, creator, rec.spec if rec else None, records)
        except TaskError as exc:
            return Outcome("task", key, "failed", str(exc))
        spec = spec.model_copy(update={
            "Nexts": [str(n) for n in dict.fromkeys(item.get("nexts") or [])],
            "CreateTime": item["createtime"].replace(microsecond=0).isoformat(),
            "CreateUserId": creator.id, "CreateUserName": item.get("createusername"),
            **({"TimeZone": opts.timezone} if opts.timezone else {})})
        # what the original has, before this target's mapping (the CLI sends it)
        source_fp = item.get("sourcefp") or source_fingerprint(item)
        would_fp = _task_fp(spec)
        target_fp = _task_fp(rec.spec) if rec else None
        action, why = decide(rec is not None, ledger, source_fp, would_fp, target_fp, opts.overwrite)
        notes = [why] if why else []
        pinned = (rec.spec if action in ("keep", "conflict") and rec is not None else spec).Executors
        unknown = [n for n in pinned if n not in known]
        if unknown:
            notes.append(f"pinned to node(s) this system does not know: {', '.join(unknown)} "
                         f"(--map-node OLD=NEW renames them)")
        if opts.dry_run or action == "conflict":
            # target_id says whether the task is (or would be) here afterwards: parents
            # sent later name only children that are
            return Outcome("task", key, _PAST[action], "; ".join(notes),
                           key if rec is not None or action != "conflict" else None, unknown)
        if action == "create":
            await service.repo.create(task_id, spec, service.work_pool, service.parameter_schema)
            now = datetime.now(timezone.utc)
            records[key] = TaskRecord(task_id, spec.Title, spec, Status.Stop, now, now)
        elif action == "update":
            rec = await service.repo.read(task_id) or rec  # a Start or Edit made meanwhile stays
            spec = spec.model_copy(update={"StartedAt": rec.spec.StartedAt})
            await service.repo.write(task_id, spec, rec.status, rename=spec.Title != rec.spec.Title,
                                     previous=rec.spec)
            records[key] = TaskRecord(task_id, spec.Title, spec, rec.status, rec.created, rec.updated)
        if action != "keep" or ledger is None:  # see _users: a keep moves no ledger row
            written = spec if action != "keep" else rec.spec
            remember.append(("task", key, source_fp, _task_fp(written), key))
        status = Status.Stop if action == "create" else rec.status
        if opts.start and item.get("status") in (1, 2) and status == Status.Stop:
            if pinned and len(unknown) == len(pinned):  # Running here would fire nothing, silently
                notes.append("not started: none of its nodes is here, it would never fire")
            else:
                try:
                    notes.append(await self._start(service, task_id, item["status"]))
                except Exception as exc:  # the task is here all the same
                    log.exception("starting imported task %s failed", key)
                    notes.append(f"not started: {_short(exc)}")
        return Outcome("task", key, _PAST[action], "; ".join(n for n in notes if n), key, unknown)

    @staticmethod
    async def _start(service, task_id: uuid.UUID, source_status: int) -> str:
        started = json.loads((await service.start(task_id)).body)
        if not started["Success"]:
            return f"not started: {started['Message']}"
        if source_status == 2:
            await service.pause(task_id)
            return "started and paused, as in the original"
        return "started"

    # ---- delayed tasks ----------------------------------------------------------------
    async def delayed(self, items: list[dict[str, Any]], opts: Options) -> list[Outcome]:
        """Pending callbacks keep their ids and due times. One already here is kept as it
        is: it may have fired or been retried since, and this system's row is the truth."""
        tz = opts.timezone or self.tz
        async with self._lock:
            existing = await asyncio.to_thread(self._existing_delayed, [str(i["id"]) for i in items])
            out: list[Outcome] = []
            rows: list[dict[str, Any]] = []
            for item in items:
                key = str(item["id"])
                if key in existing:
                    out.append(Outcome("delayed", key, "kept", "already here", key))
                    continue
                try:
                    row = delayed_row(item, tz)
                except (ValueError, OverflowError) as exc:  # a date at the ends of the calendar
                    out.append(Outcome("delayed", key, "failed", str(exc) or type(exc).__name__))
                    continue
                rows.append(row)
                note = "overdue: fires at once, marked late" if row["dueat"] < utcnow_naive() else ""
                if item["status"] == 1:
                    note = "; ".join(filter(None, ["Created (not yet queued) in the original: Ready here", note]))
                out.append(Outcome("delayed", key, "created", note, key))
            if rows and not opts.dry_run:
                try:
                    await asyncio.wrap_future(self.store.delayed.create(rows))
                except Exception as exc:  # e.g. a Create with one of these ids in between
                    failed = {r["id"] for r in rows}
                    for o in out:
                        if o.key in failed:
                            o.action, o.message = "failed", _short(exc)
            return out

    def _existing_delayed(self, ids: list[str]) -> set[str]:
        with self.store.engine.connect() as conn:
            return set(conn.execute(select(T.c.id).where(T.c.id.in_(ids))).scalars())

    # ---- history ----------------------------------------------------------------------
    async def history(self, items: list[dict[str, Any]], opts: Options) -> list[Outcome]:
        """Traces become finished flow runs of their tasks, with their log lines; the trace id
        is the run's idempotency key, so a re-run adds nothing."""
        tz = ZoneInfo(opts.timezone or self.tz)
        runs: list[HistoricalRun] = []
        out: list[Outcome] = []
        for item in items:
            key = str(item["traceid"])
            try:  # a time at the ends of the calendar cannot be stored as UTC: this trace alone fails
                start = _aware(item["starttime"], tz)
                start.astimezone(timezone.utc)
                unfinished = item["endtime"] is None or item["endtime"].year < 1000
                end = start if unfinished else max(_aware(item["endtime"], tz), start)
                end.astimezone(timezone.utc)
                for entry in item.get("logs") or []:
                    _aware(entry["createtime"], tz).astimezone(timezone.utc)
            except (OverflowError, ValueError) as exc:
                out.append(Outcome("history", key, "failed", f"a time out of range: {exc}"))
                continue
            result = item.get("result")
            message = {1: "imported: succeeded in the original", 2: "imported: failed in the original",
                       3: "imported: cancelled as a conflict (互斥取消) in the original"}.get(
                result, "imported: never finished in the original")
            logs = [(entry.get("category"), (entry["message"] + ("\n" + entry["stacktrace"] if entry.get("stacktrace")
                                                                 else ""))[:20_000], _aware(entry["createtime"], tz))
                    for entry in (item.get("logs") or [])[:50]]
            runs.append(HistoricalRun(
                task_id=uuid.UUID(str(item["scheduleid"])), firing_id=f"import:{key}",
                name=f"imported-{item['starttime']:%Y%m%d-%H%M%S}", start=start, end=end, ok=result == 1,
                message=message, logs=logs,
                fire={"imported": True, "node": item.get("node"), "traceid": key, "elapsed_s": item.get("elapsedtime")}))
            out.append(Outcome("history", key, "created", "", key))
        if opts.dry_run:
            return out
        kept: set[str] = set()
        unknown: set[uuid.UUID] = set()
        async with self._lock:
            # transactions of HISTORY_TRANSACTION runs: on SQLite a write transaction holds
            # the one write lock, and node firings are recorded in between
            broken: dict[str, str] = {}
            for n in range(0, len(runs), HISTORY_TRANSACTION):
                part = runs[n:n + HISTORY_TRANSACTION]
                try:
                    part_kept, part_unknown = await write_history(part)
                except Exception as exc:  # the database refused the transaction: its runs fail, not the batch
                    log.exception("importing %d traces failed", len(part))
                    broken.update({r.firing_id: _short(exc) for r in part})
                    continue
                kept |= part_kept
                unknown |= part_unknown
        by_key = {r.firing_id: r for r in runs}
        for o in out:
            run = by_key.get(f"import:{o.key}")
            if run is None:
                continue  # failed above
            if run.firing_id in broken:
                o.action, o.message = "failed", broken[run.firing_id]
            elif run.firing_id in kept:
                o.action = "kept"
            elif run.task_id in unknown:
                o.action, o.message = "failed", "its task is not here"
        return out


@dataclass
class HistoricalRun:
    """A finished run of the original, as it is written here."""

    task_id: uuid.UUID
    firing_id: str
    name: str
    start: datetime
    end: datetime
    ok: bool
    message: str
    fire: dict[str, Any]
    logs: list[tuple[int | None, str, datetime]] = field(default_factory=list)  # (category, text, when)


async def write_history(runs: list[HistoricalRun]) -> tuple[set[str], set[uuid.UUID]]:
    """Insert finished runs, their final states and their logs in one transaction, straight into
    Prefect's tables; returns (firing ids already there, task ids that are not here).

    The same writer as the nodes' firings (master/bulk_runs.py), minus the state-change events:
    an automation on failures must not page someone now for a run that failed two years ago in
    the old system, so nothing is published for an imported run."""
    import sqlalchemy as sa
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    await run_counts.ensure()  # before the transaction: the runs written Completed are counted
    async with db.session_context(begin_transaction=True, with_for_update=True) as session:
        # the columns a run copies from its deployment, for the whole batch in one query
        D = db.Deployment
        found = await session.execute(sa.select(D.id, D.flow_id, D.version, D.tags, D.labels, D.work_queue_name,
                                                D.work_queue_id).where(D.id.in_({r.task_id for r in runs})))
        deployments = {row.id: row for row in found}
        unknown = {r.task_id for r in runs} - set(deployments)
        candidates: list[tuple[Any, HistoricalRun]] = []
        seen: set[str] = set()
        for r in runs:
            dep = deployments.get(r.task_id)
            if dep is None or r.firing_id in seen:
                continue
            seen.add(r.firing_id)
            final = (schemas.states.Completed if r.ok else schemas.states.Failed)(message=r.message, timestamp=r.end)
            candidates.append((schemas.core.FlowRun(
                name=r.name, flow_id=dep.flow_id, deployment_id=dep.id, deployment_version=dep.version,
                parameters={"fire": r.fire}, tags=list(dep.tags or []) + ["sm:imported"],
                idempotency_key=r.firing_id, work_queue_name=dep.work_queue_name, work_queue_id=dep.work_queue_id,
                expected_start_time=r.start, next_scheduled_start_time=r.start, start_time=r.start,
                total_run_time=r.end - r.start, run_count=1, state=final), r))
        inserted = {run.id for run in await bulk_runs.insert_runs(
            session, [run for run, _ in candidates], {d.id: d.labels for d in deployments.values()})}
        kept = {r.firing_id for run, r in candidates if run.id not in inserted}
        logs = [schemas.actions.LogCreate(
            name="schedulemaster.import", level={1: 20, 2: 30, 3: 40}.get(category, 20), message=text,
            timestamp=when, flow_run_id=run.id)
            for run, r in candidates if run.id in inserted for category, text, when in r.logs]
        if logs:
            await models.logs.create_logs(session, logs)
    return kept, unknown


def delayed_row(item: dict[str, Any], tz: str) -> dict[str, Any]:
    """The store row of a pending delayed task of the original (times given in ``tz``)."""
    url = (item.get("notifyurl") or "").strip()
    problem = unsendable(url, item.get("notifydatatype") or "", item.get("notifybody") or "",
                         list(item.get("executors") or []), {k: item.get(k.lower()) for k in TEXT_FIELDS})
    if problem:
        raise ValueError(problem)
    if item.get("pattern") == "Absolute":
        due_local = item.get("delayabsolutetime")
        if due_local is None:
            raise ValueError("Absolute pattern without a DelayAbsoluteTime")
    else:
        due_local = item["createtime"] + timedelta(seconds=min(item.get("delaytimespan") or 0, MAX_SPAN_SECONDS))
    due = to_utc(due_local, tz)
    return ready_row(
        id=str(item["id"]), sourceapp=item["sourceapp"], topic=item["topic"], contentkey=item["contentkey"],
        delaytimespan=item.get("delaytimespan") or 0, delayabsolutetime=due,
        createtime=to_utc(item["createtime"], tz), createusername=item.get("createusername"),
        failedretrys=item.get("failedretrys") or 0, remark=item.get("remark"), notifyurl=url,
        notifydatatype=item["notifydatatype"].strip(), notifybody=item.get("notifybody") or "",
        executors=",".join(item.get("executors") or []) or None, pattern=item.get("pattern") or "Relative",
        notifyhost=host_of(url),
        executetime=to_utc(item["executetime"], tz) if item.get("executetime") else None)


def _has_nul(item: dict[str, Any]) -> bool:
    """PostgreSQL cannot store NUL in text, and no legacy field needs one."""
    values = [v for value in item.values() for v in (value if isinstance(value, list) else [value])]
    return any(isinstance(v, str) and "\x00" in v for v in values)


def _task_fp(spec: TaskSpec) -> str:
    wire = spec.wire()
    return fingerprint({k: wire.get(k) for k in TASK_CONTENT})


def _aware(value: datetime, tz: ZoneInfo) -> datetime:
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
