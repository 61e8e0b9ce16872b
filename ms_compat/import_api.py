"""``/api/schedulemaster/import/*`` on the master's Prefect port: where ``schedulemaster import``
hands over the rows it read from an original database, one kind and one batch at a time.

Mounted inside Prefect's API app, so Prefect's auth string guards it like the firing
recorder: an import writes accounts and tasks, which no legacy client may do. Each body is
validated whole (sizes, types) before anything is looked at; each item is then decided and
written on its own by ``ImportTarget``, so a bad row is reported and the others go on.
"""

# no `from __future__ import annotations`: the batch models are built in a function, and
# pydantic/FastAPI must see their real annotations, not strings naming local variables
import logging
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schedulemaster.body_limit import BodyStalled, BodyTooLarge, bounded, declared_too_large
from schedulemaster.ms_compat.import_target import ImportTarget, Options

log = logging.getLogger("schedulemaster.import")

MAX_ITEMS = 500
MAX_BODY = 64 * 1024 * 1024  # a batch; the CLI keeps its batches under a quarter of it
BODY_SECONDS = 600.0  # a batch of history with its logs may be large; it must arrive within this
Name = Annotated[str, StringConstraints(max_length=100)]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SettingItem(_Item):
    key: str = Field(min_length=1, max_length=50)
    value: str | None = Field(default=None, max_length=1000)


class UserItem(_Item):
    id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    username: str = Field(min_length=1, max_length=50)
    password: str = Field(pattern=r"^[0-9a-f]{32}$")
    realname: str = Field(max_length=50)
    phone: str | None = Field(default=None, max_length=15)
    email: str | None = Field(default=None, max_length=500)
    status: int = Field(ge=-1, le=1)
    createtime: datetime
    lastlogintime: datetime | None = None


class TaskItem(_Item):
    id: UUID
    title: str = Field(min_length=1, max_length=100)
    metatype: int
    remark: str | None = Field(default=None, max_length=500)
    runloop: bool
    cronexpression: str | None = Field(default=None, max_length=50)
    assemblyname: str | None = Field(default=None, max_length=200)
    classname: str | None = Field(default=None, max_length=200)
    customparamsjson: str | None = Field(default=None, max_length=20_000)
    status: int = Field(ge=-1, le=2)
    startdate: datetime | None = None
    enddate: datetime | None = None
    createtime: datetime
    createuserid: int = 0
    createusername: str | None = Field(default=None, max_length=50)
    keepers: list[int] = Field(default_factory=list, max_length=1000)
    nexts: list[UUID] = Field(default_factory=list, max_length=1000)
    executors: list[Name] = Field(default_factory=list, max_length=100)
    requesturl: str | None = Field(default=None, max_length=500)
    method: str | None = Field(default=None, max_length=10)
    contenttype: str | None = Field(default=None, max_length=50)
    headers: str | None = Field(default=None, max_length=20_000)
    body: str | None = Field(default=None, max_length=1_000_000)
    sourcefp: str | None = Field(default=None, max_length=64)  # the CLI's fingerprint of the original's row


class DelayedItem(_Item):
    id: UUID
    sourceapp: str = Field(max_length=50)
    topic: str = Field(max_length=100)
    contentkey: str = Field(max_length=100)
    delaytimespan: int = Field(default=0, ge=0)
    delayabsolutetime: datetime | None = None
    createtime: datetime
    createusername: str | None = Field(default=None, max_length=50)
    executetime: datetime | None = None
    status: int = Field(ge=1, le=2)
    failedretrys: int = Field(default=0, ge=0, le=1000)
    remark: str | None = Field(default=None, max_length=255)
    notifyurl: str = Field(max_length=255)
    notifydatatype: str = Field(max_length=50)
    notifybody: str = Field(max_length=1000)
    pattern: str = Field(default="Relative", pattern="^(Relative|Absolute)$")
    executors: list[Name] = Field(default_factory=list, max_length=100)


class LogItem(_Item):
    category: int | None = None
    message: str = Field(max_length=100_000)
    stacktrace: str | None = Field(default=None, max_length=100_000)
    createtime: datetime


class TraceItem(_Item):
    traceid: UUID
    scheduleid: UUID
    node: str | None = Field(default=None, max_length=100)
    starttime: datetime
    endtime: datetime | None = None
    elapsedtime: float | None = None
    result: int | None = None
    logs: list[LogItem] = Field(default_factory=list, max_length=1000)


class ImportOptions(_Item):
    dry_run: bool = False
    overwrite: bool = False
    start: bool = False
    timezone: str | None = Field(default=None, max_length=64)
    #: the role imported accounts get (they could do everything in the original)
    user_role: Literal["admin", "operator", "viewer"] = "admin"


def _batch(model):
    class Batch(_Item):
        options: ImportOptions = Field(default_factory=ImportOptions)
        items: list[model] = Field(max_length=MAX_ITEMS)  # type: ignore[valid-type]

    Batch.__name__ = f"{model.__name__}Batch"
    return Batch


KINDS: dict[str, tuple[type, str]] = {
    "settings": (SettingItem, "settings"), "users": (UserItem, "users"), "tasks": (TaskItem, "tasks"),
    "delayed": (DelayedItem, "delayed"), "history": (TraceItem, "history"),
}


class _BodyLimit:
    """Refuse a body over MAX_BODY before it is read into memory (413), or one that stalls
    (408). Prefect's own API sets no limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        too_large = JSONResponse({"detail": f"body over {MAX_BODY} bytes: send smaller batches"}, status_code=413)
        if declared_too_large(scope, MAX_BODY):
            return await too_large(scope, receive, send)
        try:
            await self.app(scope, bounded(receive, MAX_BODY, BODY_SECONDS), send)
        except BodyTooLarge:
            await too_large(scope, receive, send)
        except BodyStalled:
            await JSONResponse({"detail": "the body stopped arriving"}, status_code=408)(scope, receive, send)


def create_import_app(target: ImportTarget) -> FastAPI:
    app = FastAPI(title="ScheduleMaster import", openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit)
    router = APIRouter()

    def endpoint(model, method: str):
        batch_model = _batch(model)

        async def handle(batch: batch_model) -> dict[str, Any]:  # type: ignore[valid-type]
            opts = Options(**batch.options.model_dump())
            if opts.timezone:
                from zoneinfo import ZoneInfo

                try:
                    ZoneInfo(opts.timezone)
                except Exception:
                    raise HTTPException(422, f"unknown time zone {opts.timezone[:64]!r}") from None
            try:
                outcomes = await getattr(target, method)([i.model_dump() for i in batch.items], opts)
            except RuntimeError as exc:  # the master is still starting
                raise HTTPException(503, str(exc)) from None
            except Exception as exc:  # e.g. the database is away: items already done stay done
                log.exception("an import batch (%s) failed", method)
                raise HTTPException(503, f"the master could not take this batch: {type(exc).__name__}: "
                                         f"{str(exc)[:300]}") from None
            return {"outcomes": [o.as_dict() for o in outcomes]}

        return handle

    for path, (model, method) in KINDS.items():
        router.post(f"/{path}")(endpoint(model, method))
    app.include_router(router)
    return app
