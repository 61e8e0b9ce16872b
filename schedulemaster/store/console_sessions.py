"""Sign-ins to the console on the legacy port: a row per session, found by its token's hash.

Kept in the store, not in a signed cookie (Starlette's SessionMiddleware): signing out, a
disabled account or a changed password must end a session at once, which a cookie that
carries its own proof cannot do; and a restarted master must not sign everyone out.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from schedulemaster.store.claims import UtcDateTime

#: a session ends this long after sign-in, whatever happens in between
LIFETIME = timedelta(hours=12)


class ConsoleSession(SQLModel, table=True):
    __tablename__ = "sm_console_sessions"
    token_hash: str = Field(primary_key=True, max_length=64)  # sha256 of the cookie: a leaked table opens nothing
    user_id: int = Field(index=True)
    #: a mark of the account's password at sign-in: once the password changes the session is over
    password_mark: str = Field(max_length=16)
    csrf: str = Field(max_length=64)  # the token every form of this session carries
    created: datetime = Field(sa_type=UtcDateTime)
    expires: datetime = Field(sa_type=UtcDateTime, index=True)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def password_mark(stored_password: str) -> str:
    return hashlib.sha256(stored_password.encode()).hexdigest()[:16]


def open_session(engine, user_id: int, stored_password: str) -> tuple[str, str]:
    """(cookie token, CSRF token) of a new session; expired sessions are swept on the way."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(sa.delete(ConsoleSession).where(ConsoleSession.expires < now))
        conn.execute(sa.insert(ConsoleSession).values(
            token_hash=_hash(token), user_id=user_id, password_mark=password_mark(stored_password),
            csrf=csrf, created=now, expires=now + LIFETIME))
    return token, csrf


def find_session(engine, token: str) -> ConsoleSession | None:
    """The live session of this cookie, or None (unknown, expired)."""
    if not token or len(token) > 100:
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.select(ConsoleSession).where(ConsoleSession.token_hash == _hash(token))).first()
    if row is None or row.expires <= datetime.now(timezone.utc):
        return None
    return ConsoleSession.model_validate(row._mapping)


def close_session(engine, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(ConsoleSession).where(ConsoleSession.token_hash == _hash(token)))
