"""The audit trail's table and its queries (what goes into it: ms_compat/audit.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import Field, Session, SQLModel, select

from schedulemaster.store.claims import UtcDateTime


class AuditEntry(SQLModel, table=True):
    __tablename__ = "sm_audit"
    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UtcDateTime, index=True)
    actor: str = Field(max_length=50, index=True)
    role: str = Field(default="", max_length=10)
    address: str = Field(default="", max_length=64)
    kind: str = Field(max_length=20)          # task | delayed | user | setting | node | plugin
    action: str = Field(max_length=20, index=True)
    resource: str = Field(default="", max_length=100, index=True)  # the id or name acted on
    outcome: str = Field(max_length=20)       # ok | refused (the action said no) | forbidden (the role)
    message: str = Field(default="", max_length=500)
    changes: str = Field(default="{}")        # JSON: field -> value, secrets masked


def insert(engine, entry: AuditEntry) -> None:
    """One INSERT, its id from the statement: the ORM's flush and read-back cost most of an
    audited Create's store time (py-spy)."""
    with engine.begin() as conn:
        entry.id = conn.execute(sa.insert(AuditEntry).values(**entry.model_dump(exclude={"id"}))).inserted_primary_key[0]


def query(engine, actor: str | None, resource: str | None, action: str | None, kind: str | None,
          start: datetime | None, end: datetime | None, page: int, size: int) -> tuple[int, list[AuditEntry]]:
    """Newest first; ``start``/``end`` aware."""
    conds = []
    if actor:
        conds.append(AuditEntry.actor == actor)
    if resource:
        conds.append(AuditEntry.resource == resource)
    if action:
        conds.append(AuditEntry.action == action)
    if kind:
        conds.append(AuditEntry.kind == kind)
    if start:
        conds.append(AuditEntry.at >= start)
    if end:
        conds.append(AuditEntry.at < end)
    with Session(engine) as s:
        total = s.exec(select(func.count()).select_from(AuditEntry).where(*conds)).one()
        rows = s.exec(select(AuditEntry).where(*conds).order_by(AuditEntry.id.desc())
                      .offset((page - 1) * size).limit(size)).all()
    return total, list(rows)
