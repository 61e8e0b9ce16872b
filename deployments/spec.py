"""The task spec: everything of a ScheduleMaster task but its id's deployment, name and status.

It travels as the ``task`` parameter of the task's deployment (deployments/tasks.py) and of
every run, so its JSON form is what Prefect stores; the field names are the original's
(PascalCase), which keeps that JSON readable beside the legacy API. It is validated once
where it comes in (a deployment read, a flow run's parameter) and read as attributes
everywhere after. Frozen: the node keeps specs in its task book and hands them to concurrent
firings; a change is a ``model_copy(update=...)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from schedulemaster.deployments.policy import DEFAULT as DEFAULT_POLICY
from schedulemaster.deployments.policy import RunPolicy

#: MetaType values
PLUGIN, HTTP = 1, 2


class HttpTarget(BaseModel):
    """An HTTP task's request (the original's HttpRequestUrl, HttpMethod, ...)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    RequestUrl: str
    Method: str = "GET"
    ContentType: str = ""
    Headers: Optional[str] = None  # the original's [{"ParamKey", "ParamValue"}] JSON
    Body: Optional[str] = None


class TaskSpec(BaseModel):
    """One task as it is deployed. Dates are naive ISO strings in ``TimeZone``, as the
    original stored them (deployments/plan.py turns them into instants)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    Id: str
    Title: str
    MetaType: Literal[1, 2]
    Remark: Optional[str] = None
    RunLoop: bool = False
    CronExpression: Optional[str] = None
    AssemblyName: Optional[str] = None
    ClassName: Optional[str] = None
    CustomParamsJson: str = "[]"
    StartDate: Optional[str] = None
    EndDate: Optional[str] = None
    CreateTime: Optional[str] = None
    CreateUserId: int = 0
    CreateUserName: Optional[str] = None
    Keepers: list[int] = []
    Nexts: list[str] = []
    Executors: list[str] = []
    Http: Optional[HttpTarget] = None
    NotifyBlocks: list[str] = []
    FailoverPolicy: str = "retry-elsewhere"
    TimeZone: str = "UTC"
    #: when the last Start happened (local time): a one-shot task without StartDate fires then
    StartedAt: Optional[str] = None
    #: when the last Resume happened (local time): the instants of a pause are not caught up
    ResumedAt: Optional[str] = None
    #: misfire, overlap, timeout, retries, what a failure is (deployments/policy.py)
    Policy: RunPolicy = DEFAULT_POLICY

    @field_validator("Policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        return DEFAULT_POLICY if value is None else value

    @field_validator("TimeZone", mode="before")
    @classmethod
    def _zone(cls, value: Any) -> Any:
        return value or "UTC"

    @field_validator("CustomParamsJson", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        return value or "[]"

    @field_validator("Keepers", "Nexts", "Executors", "NotifyBlocks", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return value or []

    @model_validator(mode="after")
    def _kind(self) -> "TaskSpec":
        if self.MetaType == HTTP and self.Http is None:
            raise ValueError("an HTTP task (MetaType 2) needs its request (Http)")
        if self.MetaType == PLUGIN and not (self.AssemblyName and self.ClassName):
            raise ValueError("a plugin task (MetaType 1) needs AssemblyName and ClassName")
        return self

    def resumed(self) -> "TaskSpec":
        """This spec as a Resume leaves it (ResumedAt now, in the task's zone)."""
        return self.model_copy(update={"ResumedAt": datetime.now(ZoneInfo(self.TimeZone)).replace(tzinfo=None).isoformat()})

    @property
    def is_plugin(self) -> bool:
        return self.MetaType == PLUGIN

    def wire(self) -> dict[str, Any]:
        """The JSON form stored in the deployment's and the runs' ``task`` parameter."""
        return self.model_dump(mode="json")


def spec_of(value: TaskSpec | dict[str, Any]) -> TaskSpec:
    """A spec from its JSON form (a deployment's or a run's ``task`` parameter); raises
    pydantic's ValidationError when it is not one."""
    return value if isinstance(value, TaskSpec) else TaskSpec.model_validate(value)


def spec_or_none(value: Any) -> TaskSpec | None:
    """A spec from a parameter that may be missing or stale (a deleted task's run, a run
    made by hand in the UI): None when it is not a valid spec."""
    if isinstance(value, TaskSpec):
        return value
    if not isinstance(value, dict):
        return None
    try:
        return TaskSpec.model_validate(value)
    except ValidationError:
        return None


__all__ = ["HTTP", "PLUGIN", "HttpTarget", "TaskSpec", "spec_of", "spec_or_none"]
