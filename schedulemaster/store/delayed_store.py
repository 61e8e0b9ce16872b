"""Delayed tasks (延时任务): the ``scheduledelayeds`` table, its attempts, and every SQL on them.

Pending callbacks live here, never as one Prefect run each (Prefect creates ~12 runs/s on
SQLite and falls over near 4,000: docs/prefect-facts.md). The (status, dueat) index lets the
dispatcher read only what falls due in the next moment, so its memory does not grow with
the number pending.

Columns keep the original's names and meanings (docs/legacy-behaviour.md, Data model); the extension columns
(dueat, claimedby, claimseq, leaseuntil, manual, attempts, pattern, executors) are how a
durable dispatcher works: a row is *claimed* (claimedby + a lease) before its callback is
sent and released when the outcome is written, in one transaction with the attempt's row.
A dispatcher that dies leaves leases that expire, and the rows fire again (same
Idempotency-Key: the task id).

All times are naive UTC (``NaiveDatetime``: sqlmodel would otherwise insist on aware values);
the API shows them in the system's zone as the original did.
"""

from __future__ import annotations

import contextlib
import queue as queue_mod
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any, Optional

from pydantic import NaiveDatetime
from sqlalchemy import Index, and_, bindparam, event, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, create_engine

from schedulemaster.timeutil import utcnow_naive

# psycopg prepares a statement on the server after 5 runs, and PostgreSQL may then keep a
# generic plan made while the table was small (a full scan), which the bench saw slow creates
# 25x by 60,000 rows on a server without autovacuum. Planning each query afresh costs ~0.1 ms.
POSTGRES_CONNECT_ARGS = {"prepare_threshold": None}
REMARK_MAX = 255
LATE_AFTER = 2.0  # seconds past due after which an attempt counts as late (API and dispatcher log)
EXCERPT_MAX = 500


class DelayStatus(IntEnum):
    Deleted = 0    # 已作废 (voided)
    Created = 1    # 已创建
    Ready = 2      # 已就绪: waiting for its callback (or a retry)
    Successed = 3  # 执行成功 (sic, the original's name)
    Failed = 4     # 异常: retries used up


#: the console's actions (void 作废, execute 执行, reset 重置) each status allows
ACTIONS_BY_STATUS = {
    DelayStatus.Deleted: ("reset",),
    DelayStatus.Created: ("void", "execute", "reset"),
    DelayStatus.Ready: ("void", "execute"),
    DelayStatus.Successed: ("reset",),
    DelayStatus.Failed: ("execute", "reset"),
}


STATUS_TEXT = {0: "已作废", 1: "已创建", 2: "已就绪", 3: "执行成功", 4: "异常"}
STATUS_NAMES = {0: "voided", 1: "created", 2: "ready", 3: "succeeded", 4: "failed"}


class ScheduleDelayed(SQLModel, table=True):
    __tablename__ = "scheduledelayeds"
    __table_args__ = (
        Index("ix_scheduledelayeds_due", "status", "dueat"),       # the dispatcher's claim
        Index("ix_scheduledelayeds_createtime", "createtime"),     # the original's indexes
        Index("ix_scheduledelayeds_contentkey", "contentkey"),
        Index("ix_scheduledelayeds_topic", "topic"),               # the console's list filters
        Index("ix_scheduledelayeds_sourceapp", "sourceapp"),
        Index("ix_scheduledelayeds_claimedby", "claimedby"),       # lease renewal
    )
    id: str = Field(primary_key=True, max_length=36)
    sourceapp: str = Field(max_length=50)
    topic: str = Field(max_length=100)
    contentkey: str = Field(max_length=100)
    delaytimespan: int = 0
    delayabsolutetime: NaiveDatetime
    createtime: NaiveDatetime
    createusername: Optional[str] = Field(default=None, max_length=50)
    executetime: Optional[NaiveDatetime] = None  # last attempt
    finishtime: Optional[NaiveDatetime] = None   # success
    status: int = DelayStatus.Ready
    failedretrys: int = 0
    remark: Optional[str] = Field(default=None, max_length=REMARK_MAX)
    notifyurl: str = Field(max_length=255)
    notifydatatype: str = Field(max_length=50)
    notifybody: str = Field(max_length=1000)
    # ---- extensions ----
    notifyhost: str = Field(default="", max_length=300)  # host:port of NotifyUrl: per-receiver limits
    executors: Optional[str] = Field(default=None, max_length=2000)  # node names, comma-separated
    pattern: str = Field(default="Relative", max_length=10)           # how the due time was given
    dueat: Optional[NaiveDatetime] = None      # when the next attempt is due; null when none is pending
    claimedby: Optional[str] = Field(default=None, max_length=64)
    claimseq: int = 0                     # which claim of claimedby holds it (a token per claim)
    leaseuntil: Optional[NaiveDatetime] = None
    manual: bool = False                  # the pending attempt is a console 执行: one try, no retries
    attempts: int = 0


class DelayedAttempt(SQLModel, table=True):
    """One callback attempt: when, how late, what came back (the original wrote a trace row)."""

    __tablename__ = "scheduledelayedattempts"
    id: Optional[int] = Field(default=None, primary_key=True)
    delayedid: str = Field(max_length=36, index=True)
    attempt: int
    kind: str = Field(max_length=10)  # first | retry | manual | recovered
    duetime: NaiveDatetime
    firetime: NaiveDatetime
    elapsedms: float = 0.0
    statuscode: Optional[int] = None
    excerpt: Optional[str] = Field(default=None, max_length=EXCERPT_MAX)
    success: bool = False
    error: Optional[str] = Field(default=None, max_length=EXCERPT_MAX)
    dispatcher: Optional[str] = Field(default=None, max_length=64)


#: each column's default, from the model (read once: instantiating a table model per row cost
#: more than inserting it)
_DEFAULTS = {name: (int(f.default) if isinstance(f.default, IntEnum) else f.default)
             for name, f in ScheduleDelayed.model_fields.items() if not f.is_required()}
_REQUIRED = frozenset(name for name, f in ScheduleDelayed.model_fields.items() if f.is_required())
_COLUMNS = frozenset(ScheduleDelayed.model_fields)


def ready_row(**fields: Any) -> dict[str, Any]:
    """A new delayed task waiting for its callback, as the row to insert: the model's defaults
    (Ready, unclaimed, no attempts yet) for every column ``fields`` leaves out, and ``dueat``
    its first due time. The legacy API's Create and the import both build rows here."""
    unknown, missing = fields.keys() - _COLUMNS, _REQUIRED - fields.keys()
    if unknown or missing:
        raise TypeError(f"a delayed task row: unknown columns {sorted(unknown)}, missing {sorted(missing)}")
    row = {**_DEFAULTS, **fields}
    if row["dueat"] is None:
        row["dueat"] = row["delayabsolutetime"]
    return row


T = ScheduleDelayed.__table__
A = DelayedAttempt.__table__


class DuplicateIds(Exception):
    """Some ids already exist (or repeat within the request): nothing of that request was written."""

    def __init__(self, ids: list[str]):
        super().__init__(", ".join(ids))
        self.ids = ids


#: the channel a trigger notifies at every commit that wrote the delayed tasks (PostgreSQL)
CHANGED = "sm_delayed_changed"


def notify_changes(conn) -> None:
    """PostgreSQL: make the trigger that tells listening dispatchers the table changed
    (_QuietWatch). One notice per statement; PostgreSQL delivers it at commit and folds a
    transaction's repeats into one."""
    from sqlalchemy import text

    conn.execute(text(f"""CREATE OR REPLACE FUNCTION {CHANGED}() RETURNS trigger LANGUAGE plpgsql AS
                          $$ BEGIN PERFORM pg_notify('{CHANGED}', ''); RETURN NULL; END $$"""))
    # made once: creating a trigger locks the table against readers too, and every master and
    # dispatcher start comes here
    if conn.execute(text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = CAST(:table AS regclass)"),
                    {"name": CHANGED, "table": T.name}).first() is None:
        conn.execute(text(f"CREATE TRIGGER {CHANGED} AFTER INSERT OR UPDATE OR DELETE ON {T.name} "
                          f"FOR EACH STATEMENT EXECUTE FUNCTION {CHANGED}()"))


def write_engine(url: str) -> Engine:
    """An engine whose transactions take SQLite's write lock up front (BEGIN IMMEDIATE).

    A DEFERRED transaction that reads and then writes is refused outright (SQLITE_BUSY,
    no waiting) when another process committed in between; IMMEDIATE waits its turn."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                             connect_args=POSTGRES_CONNECT_ARGS)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass
class Claimed:
    """A row the dispatcher holds until its outcome is written."""

    id: str
    dueat: datetime
    notifyurl: str
    notifydatatype: str
    notifybody: str
    failedretrys: int
    attempts: int
    manual: bool
    remark: str | None
    createusername: str | None
    sourceapp: str
    topic: str
    contentkey: str
    seq: int
    recovered: bool  # its previous claim was never released: a dispatcher died holding it
    host: str = ""
    previous_owner: str | None = None  # claimedby before this claim (restored if handed straight back)


@dataclass
class Outcome:
    claim: Claimed
    firetime: datetime
    success: bool
    statuscode: int | None = None
    excerpt: str | None = None
    error: str | None = None
    elapsedms: float = 0.0


@dataclass
class Settled:
    """What writing an outcome did to its task (the dispatcher mails on final failures)."""

    claim: Claimed
    status: int
    stale: bool = False  # the row was voided, reset or re-claimed meanwhile: only the attempt counts


@dataclass
class _CreateRequest:
    rows: list[dict[str, Any]]
    future: Future = field(default_factory=Future)


class _QuietWatch:
    """Whether the dispatcher's claim can skip its query because nothing could be due yet:
    no commit to the database since the last look found nothing due before ``wake``.

    SQLite: ``PRAGMA data_version`` on a connection held for the purpose changes when any
    other connection (any process) commits. PostgreSQL: a trigger notifies ``CHANGED`` at
    every commit that wrote the table (``notify_changes``), and a connection held for the
    purpose LISTENs; the version is how many notices it has had. Either way a claim ten times
    a second costs a pragma or a look at a socket while nothing changes, instead of a
    checkout, a compiled query and a read (on PostgreSQL a write transaction). Written by
    hand: SQLAlchemy has no notion of "has anything been committed since".
    """

    #: look again at least this often (a lease of a dead dispatcher expiring needs no commit)
    RECHECK = timedelta(seconds=5)

    def __init__(self, engine: Engine | None, postgres_url: str | None = None):
        self._engine = engine
        self._postgres_url = postgres_url
        self._conn = None
        self._notices = 0
        self._seen: tuple[int, datetime] | None = None  # (data_version, wake)

    def version(self) -> int | None:
        if self._engine is None and self._postgres_url is None:
            return None
        try:
            if self._postgres_url is not None:
                return self._listen()
            if self._conn is None:
                self._conn = self._engine.raw_connection()  # autocommit (write_engine's connect hook)
            return self._conn.driver_connection.execute("PRAGMA data_version").fetchone()[0]
        except Exception:  # a broken connection: no shortcut, and a new connection next time
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    (self._conn.close if self._postgres_url else self._conn.invalidate)()  # not kept by a pool
            self._conn, self._seen = None, None
            return None

    def _listen(self) -> int:
        import psycopg

        if self._conn is None:
            self._conn = psycopg.connect(self._postgres_url, autocommit=True, **POSTGRES_CONNECT_ARGS)
            self._conn.execute(f"LISTEN {CHANGED}")
            self._notices += 1  # commits before the LISTEN were not heard: not the last look's version
        self._notices += sum(1 for _ in self._conn.notifies(timeout=0))
        return self._notices

    def note(self, version: int | None, horizon: datetime, first_due: datetime | None) -> None:
        """The last look (taken after ``version`` was read) found nothing due by ``horizon``."""
        wake = horizon + self.RECHECK
        self._seen = None if version is None else (version, wake if first_due is None else min(first_due, wake))

    def holds(self, horizon: datetime) -> bool:
        if self._seen is None:
            return False
        version, wake = self._seen
        if horizon >= wake or self.version() != version:
            self._seen = None
            return False
        return True


class DelayedStore:
    """Every read and write of delayed tasks. Blocking calls: use them from a thread."""

    def __init__(self, read_engine: Engine, url: str):
        self.engine = read_engine
        self.wengine = write_engine(url)
        self.postgres = not url.startswith("sqlite")
        self._creates: queue_mod.Queue[_CreateRequest] = queue_mod.Queue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._quiet = (_QuietWatch(None, postgres_url=self.wengine.url.set(drivername="postgresql")
                                   .render_as_string(hide_password=False)) if self.postgres
                       else _QuietWatch(self.wengine))

    # ---- creating: group commit -------------------------------------------------
    def create(self, rows: list[dict[str, Any]]) -> Future:
        """Queue rows for the writer thread; the future resolves once they are committed.

        Requests that arrive while a commit is in progress are written together in the next
        transaction (group commit), so a 200 answer still means "on disk" while the disk
        sees one commit per batch rather than one per request."""
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="delayed-create", daemon=True)
                self._writer.start()
        req = _CreateRequest(rows)
        self._creates.put(req)
        return req.future

    def _write_loop(self) -> None:
        while True:
            group = [self._creates.get()]
            size = len(group[0].rows)
            while size < 5000:
                try:
                    req = self._creates.get_nowait()
                except queue_mod.Empty:
                    break
                group.append(req)
                size += len(req.rows)
            try:
                self._insert_group(group)
            except Exception:  # a database error: each request alone, so one cannot fail the others
                for req in group:
                    if req.future.done():
                        continue
                    try:
                        self._insert_group([req])
                    except IntegrityError:  # another writer inserted one of its ids meanwhile
                        req.future.set_exception(DuplicateIds(sorted({r["id"] for r in req.rows})))
                    except Exception as exc:
                        req.future.set_exception(exc)

    def _insert_group(self, group: list[_CreateRequest]) -> None:
        """One transaction for the group; a request whose ids exist (or repeat) is refused whole.

        The existing ids are looked up by primary key first: one indexed read per 500 ids.
        (On PostgreSQL that read once cost more with every row, because the cached generic
        plan of the prepared statement was a full scan: see POSTGRES_CONNECT_ARGS.) An id
        inserted by another writer in between fails the transaction (IntegrityError) and
        ``_write_loop`` retries each request alone."""
        ids = [r["id"] for req in group for r in req.rows]
        with self.wengine.begin() as conn:
            existing: set[str] = set()
            for part in chunks(ids, 500):
                existing.update(conn.execute(select(T.c.id).where(T.c.id.in_(part))).scalars())
            accepted, refused = [], []
            seen: set[str] = set()
            for req in group:
                mine = Counter(r["id"] for r in req.rows)
                dup = sorted(i for i, n in mine.items() if n > 1 or i in existing or i in seen)
                if dup:
                    refused.append((req, dup))
                else:
                    seen.update(mine)
                    accepted.append(req)
            rows = [r for req in accepted for r in req.rows]
            if self.postgres:
                self._copy(conn, rows)
            else:
                for part in chunks(rows, 1000):
                    conn.execute(insert(T), part)
        for req in accepted:
            req.future.set_result([r["id"] for r in req.rows])
        for req, dup in refused:
            req.future.set_exception(DuplicateIds(dup))

    @staticmethod
    def _copy(conn, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL's COPY, in the caller's transaction: several times faster than
        SQLAlchemy's (pipelined) executemany for a batch, and batched creates are bound by
        this writer thread (bench/delayed.py; the README has the figures)."""
        names = [c.name for c in T.columns]
        defaults = {c.name: c.default.arg for c in T.columns
                    if c.default is not None and not callable(c.default.arg)}
        cursor = conn.connection.driver_connection.cursor()
        with cursor, cursor.copy(f"COPY {T.name} ({', '.join(names)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row([r[n] if n in r else defaults.get(n) for n in names])

    # ---- reading ---------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(T).where(T.c.id == task_id)).mappings().first()
            return dict(row) if row else None

    def attempts_of(self, task_id: str, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(A).where(A.c.delayedid == task_id).order_by(A.c.id.desc())
                                .limit(limit)).mappings().all()
            return [dict(r) for r in rows]

    def query(self, *, start: datetime | None = None, end: datetime | None = None, status: int | None = None,
              topic: str | None = None, content_key: str | None = None, source_app: str | None = None,
              offset: int = 0, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """The console's list: filters on the create date range, status, topic, content key and
        source app (exact matches, each indexed), newest first."""
        conds = []
        if start is not None:
            conds.append(T.c.createtime >= start)
        if end is not None:
            conds.append(T.c.createtime < end)
        if status is not None:
            conds.append(T.c.status == status)
        if topic:
            conds.append(T.c.topic == topic)
        if content_key:
            conds.append(T.c.contentkey == content_key)
        if source_app:
            conds.append(T.c.sourceapp == source_app)
        where = and_(*conds) if conds else None
        with self.engine.connect() as conn:
            count_q = select(func.count()).select_from(T)
            rows_q = select(T).order_by(T.c.createtime.desc(), T.c.id).offset(offset).limit(limit)
            if where is not None:
                count_q, rows_q = count_q.where(where), rows_q.where(where)
            total = conn.execute(count_q).scalar_one()
            rows = [dict(r) for r in conn.execute(rows_q).mappings().all()]
        return total, rows

    def counts(self) -> dict[str, Any]:
        """Backlog by status, what falls due soon, and the oldest overdue (the dispatcher's report)."""
        now = utcnow_naive()
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(select(T.c.status, func.count()).group_by(T.c.status)).all())
            soon = conn.execute(select(func.count()).select_from(T).where(
                T.c.status == DelayStatus.Ready, T.c.dueat <= now + timedelta(minutes=1))).scalar_one()
            oldest = conn.execute(select(func.min(T.c.dueat)).where(T.c.status == DelayStatus.Ready)).scalar_one()
        return {"by_status": {int(k): int(v) for k, v in by_status.items()}, "due_next_minute": int(soon),
                "oldest_due": oldest}

    # ---- console operations (void, execute, reset) ----------------------------------
    def transition(self, task_id: str, action: str, now: datetime) -> tuple[str, dict[str, Any] | None]:
        """Apply a console action in one transaction. Returns (result, row before):
        result is "ok", "missing" or "state" (not allowed in the row's status)."""
        with self.wengine.begin() as conn:
            q = select(T).where(T.c.id == task_id)
            if self.postgres:
                q = q.with_for_update()
            row = conn.execute(q).mappings().first()
            if row is None:
                return "missing", None
            before = dict(row)
            status = before["status"]
            release = {"claimedby": None, "leaseuntil": None}
            if action not in ("void", "execute", "reset"):  # pragma: no cover - a programming error
                raise ValueError(action)
            if action not in ACTIONS_BY_STATUS.get(status, ()):
                return "state", before
            if action == "void":
                values = {"status": DelayStatus.Deleted, "dueat": None, "manual": False, **release}
            elif action == "execute":
                if before["claimedby"] is not None and before["dueat"] is not None and before["dueat"] <= now:
                    # due and claimed: its dispatcher is sending it now, and that send is the
                    # execution. Released, the row would be claimed and sent again (seen under load:
                    # two callbacks 70 ms apart). A dead holder's lease runs out as for any claim.
                    return "ok", before
                values = {"status": DelayStatus.Ready, "dueat": now, "manual": status == DelayStatus.Failed,
                          **release}
            else:  # reset
                if before["pattern"] == "Absolute":
                    due = max(now, before["delayabsolutetime"])
                else:
                    due = now + timedelta(seconds=before["delaytimespan"])
                values = {"status": DelayStatus.Ready, "dueat": due, "failedretrys": 0, "manual": False,
                          "finishtime": None, **release}
            conn.execute(update(T).where(T.c.id == task_id).values(**values))
            return "ok", before

    # ---- the dispatcher's side -------------------------------------------------------
    def release_all(self) -> int:
        """Drop every lease (only when this is the one dispatcher there can be: SQLite)."""
        with self.wengine.begin() as conn:
            return conn.execute(update(T).where(T.c.claimedby.is_not(None), T.c.status == DelayStatus.Ready)
                                .values(leaseuntil=None)).rowcount

    def _db_now(self, fallback: datetime):
        """Lease times come from one clock: PostgreSQL's, where dispatchers on several machines
        compare them (a fast clock would take rows still in flight elsewhere); SQLite has one
        dispatcher, whose clock is the only one."""
        return func.timezone("UTC", func.now()) if self.postgres else fallback

    def nothing_due(self, horizon: datetime) -> bool:
        """True when the last claim found nothing due by ``horizon`` and nothing was committed
        since (a pragma or a look at a socket, cheap enough for the event loop)."""
        return self._quiet.holds(horizon)

    def claim(self, me: str, seq: int, horizon: datetime, now: datetime, lease: timedelta,
              limit: int, busy_hosts: set[str] | frozenset = frozenset()) -> list[Claimed]:
        """Take up to ``limit`` Ready rows due by ``horizon``, oldest first, whose lease is free.

        PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so dispatchers side by side never take the
        same row; SQLite: the transaction holds the write lock, one claim at a time."""
        if self.nothing_due(horizon):
            return []
        db_now = self._db_now(now)
        free = (T.c.status == DelayStatus.Ready, or_(T.c.leaseuntil.is_(None), T.c.leaseuntil < db_now))
        due = (*free, T.c.dueat <= horizon)
        version = self._quiet.version()
        # SQLite: look first without the write lock (a WAL read waits for no one): the dispatcher
        # asks ten times a second and most of the time nothing is due. PostgreSQL takes without
        # a lock to wait for, and looks only when it took nothing (a busy dispatcher never looks)
        if not self.postgres and not self._anything_due(version, free, horizon):
            return []
        rows = self._take(me, seq, db_now, due, lease, limit, busy_hosts)
        if not rows and self.postgres:
            self._anything_due(version, free, horizon)
        return rows

    def _anything_due(self, version: int | None, free: tuple, horizon: datetime) -> bool:
        """Whether a free row falls due by ``horizon``; when none does, the quiet watch is told
        when the first one will (claims skip their query until then or until a commit)."""
        with self.engine.connect() as conn:
            first = conn.execute(select(T.c.dueat).where(*free).order_by(T.c.dueat).limit(1)).first()
        if first is None or first.dueat > horizon:
            self._quiet.note(version, horizon, None if first is None else first.dueat)
            return False
        return True

    def _take(self, me: str, seq: int, db_now: datetime, due: tuple, lease: timedelta, limit: int,
              busy_hosts: set[str] | frozenset) -> list[Claimed]:
        with self.wengine.begin() as conn:
            q = (select(T.c.id, T.c.dueat, T.c.notifyurl, T.c.notifydatatype, T.c.notifybody, T.c.failedretrys,
                        T.c.attempts, T.c.manual, T.c.remark, T.c.createusername, T.c.sourceapp, T.c.topic,
                        T.c.contentkey, T.c.claimedby, T.c.notifyhost)
                 .where(*due).order_by(T.c.dueat).limit(limit))
            if busy_hosts:  # receivers already holding their share: the others go first
                q = q.where(T.c.notifyhost.not_in(sorted(busy_hosts)))
            if self.postgres:
                q = q.with_for_update(skip_locked=True)
            rows = conn.execute(q).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            conn.execute(update(T).where(T.c.id.in_(ids)).values(claimedby=me, claimseq=seq,
                                                                 leaseuntil=db_now + lease))
        return [Claimed(r.id, r.dueat, r.notifyurl, r.notifydatatype, r.notifybody, r.failedretrys, r.attempts,
                        bool(r.manual), r.remark, r.createusername, r.sourceapp, r.topic, r.contentkey, seq,
                        recovered=r.claimedby is not None, host=r.notifyhost, previous_owner=r.claimedby)
                for r in rows]

    def hand_back(self, me: str, claims: list[Claimed]) -> int:
        """Undo claims taken but not wanted (their receiver's share is full): the row gets back
        its previous owner, so a row a dead dispatcher held is still known as one."""
        if not claims:
            return 0
        with self.wengine.begin() as conn:
            return conn.execute(_HAND_BACK, [{"b_id": c.id, "b_owner": c.previous_owner, "b_me": me,
                                              "b_seq": c.seq} for c in claims]).rowcount

    def renew(self, me: str, ids: list[str], lease: timedelta) -> int:
        """Extend the leases of the rows this dispatcher holds in memory, and only those: a
        claim it lost track of must expire so that it is sent (as recovered)."""
        n = 0
        until = self._db_now(utcnow_naive()) + lease
        with self.wengine.begin() as conn:
            for part in chunks(ids, 500):
                n += conn.execute(update(T).where(T.c.id.in_(part), T.c.claimedby == me,
                                                  T.c.status == DelayStatus.Ready).values(leaseuntil=until)).rowcount
        return n

    def not_mine(self, me: str, claims: list[tuple[str, int]]) -> set[str]:
        """Of these (id, claim seq), the ones no longer this claim's: voided, reset or taken over."""
        seqs = dict(claims)
        gone: set[str] = set()
        with self.engine.connect() as conn:
            for part in chunks(list(seqs), 500):
                rows = conn.execute(select(T.c.id, T.c.claimedby, T.c.claimseq, T.c.status)
                                    .where(T.c.id.in_(part))).all()
                found = {r.id for r in rows}
                gone.update(i for i in part if i not in found)
                gone.update(r.id for r in rows if r.claimedby != me or r.claimseq != seqs[r.id]
                            or r.status != DelayStatus.Ready)
        return gone

    def release(self, me: str, ids: list[str]) -> int:
        """Give back claims that never fired (a dispatcher stopping cleanly): not a recovery."""
        n = 0
        with self.wengine.begin() as conn:
            for part in chunks(ids, 500):
                n += conn.execute(update(T).where(T.c.id.in_(part), T.c.claimedby == me,
                                                  T.c.status == DelayStatus.Ready)
                                  .values(claimedby=None, leaseuntil=None)).rowcount
        return n

    def settle(self, me: str, outcomes: list[Outcome], retry_times: int, retry_spans: int) -> list[Settled]:
        """Write a batch of outcomes and their attempt rows in one transaction.

        As the original: success is final; a failure is retried while FailedRetrys < RetryTimes, after
        RetrySpans × FailedRetrys seconds (status stays Ready); then Failed with the remark
        "重试{n}次后失败结束". A console 执行 is one try with no retries. A row voided, reset or
        re-claimed meanwhile keeps what it has now; only the attempt is recorded."""
        settled: list[Settled] = []
        with self.wengine.begin() as conn:
            ids = [o.claim.id for o in outcomes]
            q = select(T.c.id, T.c.claimedby, T.c.claimseq, T.c.status, T.c.attempts).where(T.c.id.in_(ids))
            if self.postgres:
                q = q.with_for_update()
            current = {r.id: r for r in conn.execute(q).all()}
            made = {i: r.attempts for i, r in current.items()}  # attempts so far, counting this batch's
            attempts: list[dict[str, Any]] = []
            finished: list[dict[str, Any]] = []
            counted: list[dict[str, Any]] = []
            for o in outcomes:
                c = o.claim
                cur = current.get(c.id)
                kind = ("manual" if c.manual else "recovered" if c.recovered
                        else "retry" if c.failedretrys else "first")
                number = made.get(c.id, c.attempts) + 1
                made[c.id] = number
                attempts.append({"delayedid": c.id, "attempt": number, "kind": kind, "duetime": c.dueat,
                                 "firetime": o.firetime, "elapsedms": round(o.elapsedms, 1),
                                 "statuscode": o.statuscode, "excerpt": (o.excerpt or None) and o.excerpt[:EXCERPT_MAX],
                                 "success": o.success, "error": (o.error or None) and o.error[:EXCERPT_MAX],
                                 "dispatcher": me})
                if cur is None or cur.claimedby != me or cur.claimseq != c.seq or cur.status != DelayStatus.Ready:
                    # voided, reset or re-claimed meanwhile: it keeps its state, the attempt still counts
                    if cur is not None:
                        counted.append({"b_id": c.id, "b_attempts": number})
                    settled.append(Settled(c, cur.status if cur is not None else -1, stale=True))
                    continue
                row = {"b_id": c.id, "b_executetime": o.firetime, "b_attempts": number, "b_status": DelayStatus.Ready,
                       "b_finishtime": None, "b_dueat": None, "b_failedretrys": c.failedretrys, "b_remark": c.remark}
                if o.success:
                    row.update(b_status=DelayStatus.Successed, b_finishtime=o.firetime)
                    if c.manual:
                        row["b_remark"] = _append(c.remark, " | 手动执行回调成功")
                    settled.append(Settled(c, DelayStatus.Successed))
                elif not c.manual and c.failedretrys < retry_times:
                    n = c.failedretrys + 1
                    due = utcnow_naive() + timedelta(seconds=retry_spans * n)
                    row.update(b_failedretrys=n, b_dueat=due)
                    settled.append(Settled(c, DelayStatus.Ready))
                else:
                    row["b_status"] = DelayStatus.Failed
                    if not c.manual:
                        row["b_remark"] = _append(c.remark, f"重试{c.failedretrys}次后失败结束", sep=" | ")
                    settled.append(Settled(c, DelayStatus.Failed))
                finished.append(row)
            # one statement each, executed for many rows: a per-row UPDATE built in Python was
            # most of the dispatcher's CPU at 1,000 callbacks a second
            if finished:
                conn.execute(_SETTLE, finished)
            if counted:
                conn.execute(_COUNT_ATTEMPT, counted)
            if attempts:
                conn.execute(insert(A), attempts)
        return settled


_SETTLE = update(T).where(T.c.id == bindparam("b_id")).values(
    status=bindparam("b_status"), executetime=bindparam("b_executetime"), finishtime=bindparam("b_finishtime"),
    dueat=bindparam("b_dueat"), failedretrys=bindparam("b_failedretrys"), remark=bindparam("b_remark"),
    attempts=bindparam("b_attempts"), claimedby=None, leaseuntil=None, manual=False)
_HAND_BACK = update(T).where(T.c.id == bindparam("b_id"), T.c.claimedby == bindparam("b_me"),
                             T.c.claimseq == bindparam("b_seq")).values(claimedby=bindparam("b_owner"),
                                                                        leaseuntil=None)
_COUNT_ATTEMPT = update(T).where(T.c.id == bindparam("b_id")).values(attempts=bindparam("b_attempts"))


def _append(remark: str | None, text: str, sep: str = "") -> str:
    """Add to the remark; when the column would overflow, the newest words are kept."""
    out = f"{remark}{sep}{text}" if remark else text
    return out[-REMARK_MAX:]


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def host_of(url: str) -> str:
    """The receiver a NotifyUrl points at (host:port), for per-receiver limits."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{(parts.hostname or '').lower()}:{port}"[:300]
    except ValueError:
        return ""
