"""The project's own tables: what Prefect has no home for (users, settings, delayed tasks).

Same database family as Prefect: a SQLite file by default, PostgreSQL when ``SM_STORE_URL``
says ``postgresql://...`` (the database is created when missing). Table and column names
follow the original's schema (docs/legacy-behaviour.md, Data model) so an imported database maps one to one.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import event
from sqlmodel import Field, Session, SQLModel, create_engine, select

from schedulemaster.ms_compat import roles
from schedulemaster.ms_compat.secret import md5_hex  # noqa: F401  (re-exported: the store hashes passwords)
from schedulemaster.store import audit, claims, console_sessions, delayed_store, ledger  # noqa: F401  (their tables)
from schedulemaster.store.delayed_store import POSTGRES_CONNECT_ARGS, DelayedStore

log = logging.getLogger("schedulemaster.store")


class SystemUser(SQLModel, table=True):
    __tablename__ = "systemusers"
    id: Optional[int] = Field(default=None, primary_key=True)
    username: str = Field(max_length=50, index=True)
    password: str = Field(max_length=50)  # lowercase hex md5 of the plaintext, as the original stored it
    realname: str = Field(max_length=50)
    phone: Optional[str] = Field(default=None, max_length=15)
    email: Optional[str] = Field(default=None, max_length=500)
    status: int = 1  # -1 deleted, 0 disabled, 1 available
    createtime: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    lastlogintime: Optional[datetime] = None
    #: extension (ms_compat/roles.py): admin | operator | viewer. Accounts that existed before
    #: roles get the server default, admin: they could do everything and their clients must go on.
    role: str = Field(default=roles.DEFAULT_NEW, max_length=10,
                      sa_column_kwargs={"server_default": roles.DEFAULT_EXISTING})


class SystemConfig(SQLModel, table=True):
    __tablename__ = "systemconfigs"
    key: str = Field(primary_key=True, max_length=50)
    group: str = Field(max_length=50)
    name: str = Field(max_length=100)
    value: Optional[str] = Field(default=None, max_length=1000)
    sort: int = 0
    isreuired: bool = False  # sic, as the original's column
    remark: Optional[str] = None
    createtime: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    updatetime: Optional[datetime] = None
    updateusername: Optional[str] = None


# (key, group, name, default) seeded on first start, as the original's EnsureCreated did.
DEFAULT_CONFIGS = [
    ("Email_SmtpServer", "邮件配置", "邮件服务器", ""),
    ("Email_SmtpPort", "邮件配置", "邮件服务器端口", ""),
    ("Email_FromAccount", "邮件配置", "发件人账号", ""),
    ("Email_FromAccountPwd", "邮件配置", "发件人账号密码", ""),
    ("Assembly_ImagePullPolicy", "程序集配置", "文件包拉取策略", "Always"),
    ("Http_RequestTimeout", "HTTP配置", "请求超时时间", "10"),
    ("Http_FailOnNon2xx", "HTTP配置", "非2xx响应视为失败 (extension)", "false"),
    ("Http_DeniedNetworks", "HTTP配置", "禁止访问的网段 (extension; 链路本地与云元数据地址总是禁止)", ""),
    ("Http_AllowedNetworks", "HTTP配置", "放行的网段 (extension; 例外于禁止的网段)", ""),
    ("System_WorkerUnHealthTimes", "系统配置", "Worker允许无响应次数", "3"),
    ("DelayTask_DelayPattern", "延时任务配置", "延迟模式", "Relative"),
    ("DelayTask_RetryTimes", "延时任务配置", "重试次数", "3"),
    ("DelayTask_RetrySpans", "延时任务配置", "重试间隔", "10"),
    ("DelayTask_RequestTimeout", "延时任务配置", "回调超时时间 (extension)", "100"),
    ("Alarm_AppriseUrlsPwd", "告警配置", "告警通道 (extension): Apprise URL，逗号或空格分隔，如 dingtalk://、"
     "wecombot://、feishu://、slack://、json://", ""),
]
DEFAULT_ADMIN = ("admin", "111111")


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean the psycopg (3) driver, the one we install."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def ensure_database(url: str) -> None:
    """Create a PostgreSQL database that does not exist yet (SQLite files create themselves)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    if url.startswith("sqlite"):
        return
    target = make_url(url)
    try:
        probe = create_engine(target)
        with probe.connect():
            pass
        probe.dispose()
        return
    except OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    try:
        with admin.connect() as conn:
            name = target.database.replace('"', '""')
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except (IntegrityError, ProgrammingError) as exc:
        # another process of the system (the master, a dispatcher) created it just now
        if "already exists" not in str(exc):
            raise
    finally:
        admin.dispose()


def _existing_tables(conn) -> list:
    """The store's tables that exist already, each with the inspector that reads what it holds."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    return [(table, inspector) for table in SQLModel.metadata.sorted_tables if inspector.has_table(table.name)]


def add_missing_columns(conn) -> list[str]:
    """Columns a newer version added to an existing table, added with their default.

    ``create_all`` makes missing tables only. The store's schema changes are additive (a new
    column with a constant default), so this covers them without a migration tool; a change
    of another kind needs one."""
    from sqlalchemy import text

    added = []
    for table, inspector in _existing_tables(conn):
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if column.server_default is not None:
                default = column.server_default.arg
            else:
                default = column.default.arg if column.default is not None and column.default.is_scalar else None
            ddl = f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {column.type.compile(conn.dialect)}'
            if default is not None:
                ddl += " DEFAULT " + _literal(default)
            conn.execute(text(ddl))
            added.append(f"{table.name}.{column.name}")
    if added:
        log.info("added columns to the store: %s", ", ".join(added))
    return added


def add_missing_indexes(conn) -> list[str]:
    """Indexes a newer version added to an existing table (``create_all`` makes those of the
    tables it creates only)."""
    made = []
    for table, inspector in _existing_tables(conn):
        have = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            if index.name and index.name not in have:
                index.create(conn)
                made.append(index.name)
    if made:
        log.info("added indexes to the store: %s", ", ".join(made))
    return made


def _literal(value) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


class Store:
    def __init__(self, url: str):
        url = normalize_url(url)
        self.url = url
        self._delayed = None
        self.user_version = 0  # bumped on every account change made through this process

        connect_args = ({"check_same_thread": False, "timeout": 30} if url.startswith("sqlite")
                        else POSTGRES_CONNECT_ARGS)
        self.engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn, _record):  # readers never wait on the writer
                dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @property
    def delayed(self):
        """The delayed tasks' reads and writes (schedulemaster/store/delayed_store.py)."""
        if self._delayed is None:
            self._delayed = DelayedStore(self.engine, self.url)
        return self._delayed

    def init(self) -> None:
        """Create the tables and seed the default account and settings (idempotent)."""
        from sqlalchemy import text

        ensure_database(self.url)
        if self.engine.dialect.name != "postgresql":
            # The master and the dispatcher start together: their CREATE TABLEs raced ("table
            # scheduledelayeds already exists", and the master exited). SQLite is one machine's
            # file, so an advisory file lock beside it makes them take turns.
            import fcntl
            from contextlib import nullcontext

            db = self.engine.url.database
            with (open(f"{db}.init-lock", "w") if db and db != ":memory:" else nullcontext()) as lock:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                SQLModel.metadata.create_all(self.engine)
                with self.engine.begin() as conn:
                    add_missing_columns(conn)
                    add_missing_indexes(conn)
                with Session(self.engine) as s:
                    self._seed(s)
                    s.commit()
            return
        # The master and the dispatchers start together and each creates and seeds what is
        # missing: on PostgreSQL concurrent CREATE TABLEs collide in the catalog (unique
        # violations, deadlocks) and two seeders insert the same keys. One transaction under
        # an advisory lock makes them take turns.
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(5357415453)"))  # "SMSTORE"
            SQLModel.metadata.create_all(conn)
            add_missing_columns(conn)
            add_missing_indexes(conn)
            delayed_store.notify_changes(conn)
            with Session(bind=conn) as s:
                self._seed(s)
                s.flush()

    @staticmethod
    def _seed(s: Session) -> None:
        """The default account and settings, where missing (the original's EnsureCreated)."""
        if s.exec(select(SystemUser)).first() is None:
            user, pw = DEFAULT_ADMIN
            s.add(SystemUser(username=user, password=md5_hex(pw), realname="超级管理员", role=roles.ADMIN))
        have = set(s.exec(select(SystemConfig.key)).all())
        for i, (key, group, name, value) in enumerate(DEFAULT_CONFIGS):
            if key not in have:
                s.add(SystemConfig(key=key, group=group, name=name, value=value, sort=i))

    def user_by_name(self, username: str) -> SystemUser | None:
        with Session(self.engine) as s:
            return s.exec(select(SystemUser).where(SystemUser.username == username)).first()

    def users_by_ids(self, ids: list[int]) -> list[SystemUser]:
        if not ids:
            return []
        with Session(self.engine) as s:
            return list(s.exec(select(SystemUser).where(SystemUser.id.in_(ids))).all())

    def configs(self) -> dict[str, str]:
        with Session(self.engine) as s:
            return {c.key: c.value or "" for c in s.exec(select(SystemConfig)).all()}

    # ---- accounts (the console's 账号管理) -----------------------------------------
    def list_users(self, name: str | None = None) -> list[SystemUser]:
        """Every account but the deleted ones, oldest first."""
        with Session(self.engine) as s:
            q = select(SystemUser).where(SystemUser.status != -1).order_by(SystemUser.id)
            users = list(s.exec(q).all())
        return [u for u in users if not name or name.lower() in u.username.lower()
                or name.lower() in (u.realname or "").lower()]

    def get_user(self, user_id: int) -> SystemUser | None:
        with Session(self.engine) as s:
            u = s.get(SystemUser, user_id)
            return u if u is not None and u.status != -1 else None

    def create_user(self, username: str, password: str, realname: str, phone: str | None,
                    email: str | None, role: str = roles.DEFAULT_NEW) -> SystemUser:
        """Raises ValueError when the name is taken (case-insensitively, deleted accounts too)."""
        from sqlalchemy import func

        with Session(self.engine) as s:
            taken = s.exec(select(SystemUser).where(func.lower(SystemUser.username) == username.lower())).first()
            if taken is not None:
                raise ValueError(username)
            user = SystemUser(username=username, password=md5_hex(password), realname=realname,
                              phone=phone, email=email, role=role)
            s.add(user)
            s.commit()
            self.user_version += 1
            s.refresh(user)
            return user

    def admin_has_default_password(self) -> bool:
        """The seeded admin is enabled and still has the original's default password."""
        admin = self.user_by_name(DEFAULT_ADMIN[0])
        return admin is not None and admin.status == 1 and admin.password == md5_hex(DEFAULT_ADMIN[1])

    def enabled_admins(self) -> list[int]:
        with Session(self.engine) as s:
            return list(s.exec(select(SystemUser.id).where(SystemUser.role == roles.ADMIN,
                                                           SystemUser.status == 1)).all())

    def update_user(self, user_id: int, **values) -> bool:
        """Set columns of a non-deleted account; False when there is none."""
        with Session(self.engine) as s:
            u = s.get(SystemUser, user_id)
            if u is None or u.status == -1:
                return False
            for key, value in values.items():
                setattr(u, key, value)
            s.add(u)
            s.commit()
            self.user_version += 1
            return True

    def set_configs(self, values: dict[str, str], user: str | None = None) -> None:
        """Several settings in one transaction (all or none); unknown keys raise KeyError."""
        with Session(self.engine) as s:
            rows = []
            for key, value in values.items():
                row = s.get(SystemConfig, key)
                if row is None:
                    raise KeyError(key)
                row.value, row.updatetime, row.updateusername = value, datetime.now(timezone.utc), user
                rows.append(row)
            s.add_all(rows)
            s.commit()

    def config_rows(self) -> list[SystemConfig]:
        with Session(self.engine) as s:
            return list(s.exec(select(SystemConfig).order_by(SystemConfig.sort)).all())

    def set_config(self, key: str, value: str, user: str | None = None) -> None:
        with Session(self.engine) as s:
            row = s.get(SystemConfig, key)
            if row is None:
                raise KeyError(key)
            row.value, row.updatetime, row.updateusername = value, datetime.now(timezone.utc), user
            s.add(row)
            s.commit()


class Configs:
    """Settings read through a short cache: a create (1,000/s) or a dispatcher loop must not cost a
    settings query each time; while the database is away the last values hold."""

    def __init__(self, store: Store, ttl: float = 1.0):
        self.store, self.ttl = store, ttl
        self._value: dict[str, str] = {}
        self._at = -1e9

    def get(self) -> dict[str, str]:
        if time.monotonic() - self._at > self.ttl:
            self._at = time.monotonic()
            try:
                self._value = self.store.configs()
            except Exception as exc:  # the database is away: the last values hold until it is back
                log.warning("reading the settings failed, keeping the last ones: %s", exc)
        return self._value

    def invalidate(self) -> None:
        self._at = -1e9
