"""Firing claims and node metadata, in the master's store: one execution per firing.

A node claims each firing (task, instant) in the master's store before it runs it. The firing
id is the primary key, so the first claim wins: two nodes that both believe they own a task
(for the seconds in which they learn that a node joined or left) never both run a firing,
whatever their clocks say. A node that cannot reach the master cannot claim, so it fires
nothing: a node cut off from the master is fenced by construction. The node reports each
firing it ran with its next claim call (within half a second), which finishes the claim
(``fired-ok`` / ``fired-failed``); recording the firing in Prefect, which can lag far behind
under load, marks it ``recorded``. A claim left unfinished by a node that went offline, or
that was restarted (a new incarnation), is the failover service's to re-run or fail; a
fired claim such a node never recorded, it records (schedulemaster/master/failover.py).

The nodes table holds what Prefect's worker rows have no field for: priority, max
concurrency (both editable by the operator) and the incarnation of the process that runs
under the name now.

Plain SQL through sqlmodel, synchronous: the master calls these from a thread.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional

from sqlalchemy import DateTime, and_, func, or_, update
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, delete, select
from schedulemaster.timeutil import utcnow

FINISHED_KEPT = timedelta(minutes=10)  # finished claims (not released ones) answer "already claimed" this long
FIRED_KEPT = timedelta(days=1)  # a fired claim waits this long at most for its record
FIRED = ("fired-ok", "fired-failed")  # ran, not recorded in Prefect yet
RELEASED = "released"  # its node gave it back unfired




class UtcDateTime(TypeDecorator):
    """Times in and out as aware UTC datetimes. SQLite keeps no offset: an instant in the task's
    zone (+08:00) was stored as its wall time and read back as if UTC, eight hours off, so a
    node taking a task over found its last claim in the future and caught nothing up. Every
    value is stored in UTC, and compares as stored."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None or not isinstance(value, datetime):
            return value
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def process_result_value(self, value, dialect):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)


class FiringClaim(SQLModel, table=True):
    __tablename__ = "sm_firing_claims"
    firing_id: str = Field(primary_key=True, max_length=64)
    task_id: str = Field(max_length=36, index=True)
    scheduled: datetime = Field(sa_type=UtcDateTime)
    node: str = Field(max_length=100, index=True)
    incarnation: str = Field(max_length=36)
    claimed_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: Optional[datetime] = Field(default=None, index=True, sa_type=UtcDateTime)
    # FIRED, recorded, rerun, failed, dropped, RELEASED; indexed for the few FIRED among the last 10 minutes'
    # claims (100,000 at 10,000 tasks), which the failover service looks for every 5 s
    outcome: Optional[str] = Field(default=None, max_length=40, index=True)


class NodeInfo(SQLModel, table=True):
    __tablename__ = "sm_nodes"
    name: str = Field(primary_key=True, max_length=100)
    priority: int = 1
    max_concurrency: int = 20
    incarnation: str = Field(max_length=36)
    host: str = Field(default="", max_length=200)
    started_at: datetime = Field(sa_type=UtcDateTime)
    #: sha256 of the secret the master gave this incarnation at registration: node endpoints
    #: take a call for this node only with it (the incarnation itself is readable in Prefect)
    token_hash: str = Field(default="", max_length=64)


def _insert(engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def claim(engine, node: str, incarnation: str, firings: Iterable[tuple[str, str, datetime]]) -> list[str]:
    """Claim (firing id, task id, scheduled) for this node; the ids it won."""
    rows = [{"firing_id": fid, "task_id": tid, "scheduled": at, "node": node, "incarnation": incarnation,
             "claimed_at": utcnow()} for fid, tid, at in firings]
    if not rows:
        return []
    insert = _insert(engine)
    with Session(engine) as s:
        # executemany of one cached statement: a multi-row VALUES is compiled anew per call.
        # In key order: two nodes inserting the same firings in different orders deadlocked
        # on PostgreSQL (each waiting for the other's uncommitted row; bench/soak.py).
        rows.sort(key=lambda r: r["firing_id"])
        # a claim released unfired (its node will not fire it) may be taken again: by the node
        # a resumed or moved task now belongs to, which catches that instant up
        stmt = insert(FiringClaim)
        s.execute(stmt.on_conflict_do_update(
            index_elements=["firing_id"], where=FiringClaim.outcome == RELEASED,
            set_={"node": stmt.excluded.node, "incarnation": stmt.excluded.incarnation,
                  "claimed_at": stmt.excluded.claimed_at, "finished_at": None, "outcome": None}), rows)
        won = s.exec(select(FiringClaim.firing_id).where(
            FiringClaim.firing_id.in_([r["firing_id"] for r in rows]),
            FiringClaim.node == node, FiringClaim.incarnation == incarnation,
            FiringClaim.finished_at.is_(None))).all()
        s.commit()
    return list(won)


def finish(engine, firing_ids: list[str], outcome: str) -> int:
    """End claims; ``recorded`` also ends the wait of fired ones for their record."""
    if not firing_ids:
        return 0
    open_ = FiringClaim.finished_at.is_(None)
    with Session(engine) as s:
        n = s.execute(update(FiringClaim).where(
            FiringClaim.firing_id.in_(firing_ids),
            or_(open_, FiringClaim.outcome.in_(FIRED)) if outcome == "recorded" else open_)
            .values(finished_at=func.coalesce(FiringClaim.finished_at, utcnow()), outcome=outcome)).rowcount
        s.commit()
    return n


def fired(engine, node: str, incarnation: str, done: list[tuple[str, bool]]) -> int:
    """The node ran these firings (firing id, ok): their claims end, their records may lag."""
    n = 0
    with Session(engine) as s:
        for outcome, want in (("fired-ok", True), ("fired-failed", False)):
            ids = [f for f, ok in done if ok is want]
            if ids:
                n += s.execute(update(FiringClaim).where(
                    FiringClaim.firing_id.in_(ids), FiringClaim.node == node,
                    FiringClaim.incarnation == incarnation, FiringClaim.finished_at.is_(None))
                    .values(finished_at=utcnow(), outcome=outcome)).rowcount
        s.commit()
    return n


def unrecorded_holders(engine) -> list[tuple[str, str]]:
    """(node, incarnation) of every process with fired claims not recorded yet."""
    with Session(engine) as s:
        return [tuple(r) for r in s.exec(select(FiringClaim.node, FiringClaim.incarnation)
                                         .where(FiringClaim.outcome.in_(FIRED)).distinct()).all()]


def unrecorded_counts(engine) -> dict[str, int]:
    """Fired claims not recorded in Prefect yet, per node: each node's recording backlog."""
    with Session(engine) as s:
        rows = s.exec(select(FiringClaim.node, func.count()).where(FiringClaim.outcome.in_(FIRED))
                      .group_by(FiringClaim.node)).all()
    return {node: n for node, n in rows}


def unrecorded(engine, node: str, incarnation: str, limit: int = 500) -> list[FiringClaim]:
    with Session(engine) as s:
        return list(s.exec(select(FiringClaim).where(
            FiringClaim.node == node, FiringClaim.incarnation == incarnation, FiringClaim.outcome.in_(FIRED))
            .order_by(FiringClaim.scheduled).limit(limit)).all())


def release(engine, node: str, incarnation: str, firing_ids: list[str]) -> int:
    """Finish claims this node holds and will not fire (outcome ``released``)."""
    if not firing_ids:
        return 0
    with Session(engine) as s:
        n = s.execute(update(FiringClaim).where(
            FiringClaim.firing_id.in_(firing_ids), FiringClaim.node == node,
            FiringClaim.incarnation == incarnation, FiringClaim.finished_at.is_(None))
            .values(finished_at=utcnow(), outcome=RELEASED)).rowcount
        s.commit()
    return n


def unfinished(engine, limit: int = 1000) -> list[FiringClaim]:
    with Session(engine) as s:
        return list(s.exec(select(FiringClaim).where(FiringClaim.finished_at.is_(None))
                           .order_by(FiringClaim.scheduled).limit(limit)).all())


def latest(engine, task_ids: list[str]) -> dict[str, datetime]:
    """The latest claimed instant of each task (claims are kept FINISHED_KEPT after they end);
    a claim released unfired does not count: nobody fired that instant."""
    if not task_ids:
        return {}
    with Session(engine) as s:
        rows = s.exec(select(FiringClaim.task_id, func.max(FiringClaim.scheduled))
                      .where(FiringClaim.task_id.in_(task_ids), FiringClaim.outcome.is_distinct_from(RELEASED))
                      .group_by(FiringClaim.task_id)).all()
    return dict(rows)


def running_counts(engine) -> dict[str, int]:
    """Unfinished claims per node: the firings each node runs now (or has not recorded yet)."""
    with Session(engine) as s:
        rows = s.exec(select(FiringClaim.node, func.count()).where(FiringClaim.finished_at.is_(None))
                      .group_by(FiringClaim.node)).all()
    return {node: n for node, n in rows}


def purge(engine, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - FINISHED_KEPT
    with Session(engine) as s:
        n = s.execute(delete(FiringClaim).where(FiringClaim.finished_at.is_not(None), or_(
            and_(FiringClaim.finished_at < cutoff, FiringClaim.outcome.not_in(FIRED)),
            FiringClaim.finished_at < (now or utcnow()) - FIRED_KEPT))).rowcount
        s.commit()
    return n


# ---- nodes ------------------------------------------------------------------------------
def register(engine, info: NodeInfo) -> None:
    """The process named ``info.name`` is ``info.incarnation`` from now on. Its flags set
    priority and concurrency, as the original's MarkNode upserted them at every start; an
    operator's edit holds until the node restarts."""
    with Session(engine) as s:
        row = s.get(NodeInfo, info.name)
        if row is None:
            s.add(info)
        else:
            for key in ("priority", "max_concurrency", "incarnation", "host", "started_at", "token_hash"):
                setattr(row, key, getattr(info, key))
            s.add(row)
        s.commit()


def nodes(engine) -> dict[str, NodeInfo]:
    with Session(engine) as s:
        return {n.name: n for n in s.exec(select(NodeInfo)).all()}


def edit(engine, name: str, priority: int | None = None, max_concurrency: int | None = None) -> bool:
    with Session(engine) as s:
        row = s.get(NodeInfo, name)
        if row is None:
            return False
        if priority is not None:
            row.priority = priority
        if max_concurrency is not None:
            row.max_concurrency = max_concurrency
        s.add(row)
        s.commit()
    return True


def forget(engine, name: str) -> None:
    with Session(engine) as s:
        row = s.get(NodeInfo, name)
        if row is not None:
            s.delete(row)
            s.commit()
