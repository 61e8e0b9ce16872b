"""Per-task execution policies: what a firing does when it is late, when the task's previous
run is still going, when it hangs and when it fails.

A ``RunPolicy`` travels inside the task's spec (``TaskSpec.Policy``); the node's firing loop
(schedulemaster/node/firing.py) and the worker-path flow (flows/task_flow.py) obey it. Every
default is the original's behaviour: Quartz's 60 s misfire threshold, one run of a task at a
time with one firing waiting (DisallowConcurrentExecution), the global HTTP timeout, no
retries, a non-2xx answer judged by the global ``Http_FailOnNon2xx`` setting.

The form fields of Task/Create and Edit carry the same names as the model's fields; a field
an Edit leaves out keeps its value (``from_form``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict

#: an instant later than the threshold: not fired (recorded missed) / fired once now for all
#: of them / each fired (at most MAX_CATCH_UP after one gap, the rest recorded missed)
MISFIRE = ("skip", "once", "all")
#: an instant while the previous run goes on: wait for it, one firing at most (the original) /
#: skipped / the running one cancelled / run beside it, up to MaxParallel at once
OVERLAP = ("queue", "skip", "cancel", "parallel")
BACKOFF = ("fixed", "exponential")
#: overlap policies a plugin task may have: it has one instance, which runs one firing at a time
PLUGIN_OVERLAP = ("queue", "skip")
#: (least, most) of each number
BOUNDS = {
    "MisfireThresholdSeconds": (1, 86_400),
    "MaxParallel": (1, 100),
    "TimeoutSeconds": (0, 86_400),  # 0: the HTTP timeout of the settings; a plugin runs unbounded
    "Retries": (0, 10),
    "RetryIntervalSeconds": (1, 3_600),
    "AlarmAfterFailures": (1, 100),
    "AlarmLateSeconds": (0, 86_400),  # 0: no lateness alarm
}
MAX_EXPECTED_TEXT = 200
MAX_CATCH_UP = 100
#: the longest wait between two attempts, however the backoff grows
MAX_RETRY_WAIT = 3_600.0
#: every form field of a policy, in the order forms show them
FIELDS = ("MisfirePolicy", "MisfireThresholdSeconds", "OverlapPolicy", "MaxParallel", "TimeoutSeconds",
          "Retries", "RetryIntervalSeconds", "RetryBackoff", "FailOnNon2xx", "ExpectedText",
          "AlarmAfterFailures", "AlarmLateSeconds", "AlarmOnMissed")


class PolicyError(ValueError):
    """A policy field the task cannot have; ``field`` names it."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class RunPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    MisfirePolicy: Literal["skip", "once", "all"] = "skip"
    MisfireThresholdSeconds: int = 60
    OverlapPolicy: Literal["queue", "skip", "cancel", "parallel"] = "queue"
    MaxParallel: int = 1
    TimeoutSeconds: int = 0
    Retries: int = 0
    RetryIntervalSeconds: int = 10
    RetryBackoff: Literal["fixed", "exponential"] = "fixed"
    #: None: the global Http_FailOnNon2xx setting decides
    FailOnNon2xx: Optional[bool] = None
    #: a successful answer must contain this text (searched in the first 8,000 bytes)
    ExpectedText: Optional[str] = None
    #: who is told (keepers, notification blocks, the global channels), and when
    #: (schedulemaster/master/firing_alarms.py): after this many failures in a row, of a
    #: firing later than this (0: never), of missed instants
    AlarmAfterFailures: int = 1
    AlarmLateSeconds: int = 0
    AlarmOnMissed: bool = False

    @property
    def threshold(self) -> timedelta:
        return timedelta(seconds=self.MisfireThresholdSeconds)

    @property
    def attempts(self) -> int:
        return 1 + self.Retries

    @property
    def gate_size(self) -> int:
        """How many runs of the task may go on at once."""
        return self.MaxParallel if self.OverlapPolicy == "parallel" else 1

    def retry_wait(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        base = float(self.RetryIntervalSeconds)
        if self.RetryBackoff == "exponential":
            base *= 2 ** (failed_attempt - 1)
        return min(base, MAX_RETRY_WAIT)

    def fail_on_non_2xx(self, settings: dict[str, Any]) -> bool:
        if self.FailOnNon2xx is not None:
            return self.FailOnNon2xx
        return str(settings.get("Http_FailOnNon2xx", "false")).lower() in ("1", "true", "yes")

    def form_values(self) -> dict[str, str]:
        """The form fields that set this policy, as the legacy API binds them: what an Edit
        sends to keep it (the notebook API) and what the console's form shows."""
        return {field: form_value(field, getattr(self, field)) for field in FIELDS}

    def summary(self) -> str:
        """One line for the task's deployment description in Prefect's UI."""
        parts = [f"misfire {self.MisfirePolicy} after {self.MisfireThresholdSeconds} s",
                 f"overlap {self.OverlapPolicy}" + (f" up to {self.MaxParallel}" if self.OverlapPolicy == "parallel" else ""),
                 f"timeout {self.TimeoutSeconds} s" if self.TimeoutSeconds else "timeout from the settings",
                 (f"{self.Retries} retries every {self.RetryIntervalSeconds} s ({self.RetryBackoff})"
                  if self.Retries else "no retries")]
        if self.FailOnNon2xx is not None:
            parts.append("non-2xx " + ("fails" if self.FailOnNon2xx else "succeeds"))
        if self.ExpectedText:
            parts.append(f"answer must contain {self.ExpectedText!r}")
        alarms = ["every failure" if self.AlarmAfterFailures == 1 else f"{self.AlarmAfterFailures} failures in a row"]
        if self.AlarmLateSeconds:
            alarms.append(f"firing over {self.AlarmLateSeconds} s late")
        if self.AlarmOnMissed:
            alarms.append("missed firings")
        parts.append("alarm on " + ", ".join(alarms))
        return " · ".join(parts)


DEFAULT = RunPolicy()


def form_value(field: str, value: Any) -> str:
    """One policy value as its form field carries it ("default" / "" for the unset ones)."""
    if value is None:
        return "default" if field == "FailOnNon2xx" else ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def from_form(m: dict[str, Any], existing: RunPolicy | None, *, plugin: bool) -> RunPolicy:
    """The policy a bound Create/Edit form asks for. A field that is absent (None) keeps the
    existing value (the default on Create); ``FailOnNon2xx`` and ``ExpectedText`` sent empty
    go back to the default (the global setting, no text). Raises PolicyError naming the field."""
    base = existing or DEFAULT
    values = base.model_dump()
    for name, choices in (("MisfirePolicy", MISFIRE), ("OverlapPolicy", OVERLAP), ("RetryBackoff", BACKOFF)):
        raw = m.get(name)
        if raw is None:
            continue
        word = str(raw).strip().lower()
        if word not in choices:
            raise PolicyError(f"{name} '{str(raw)[:20]}' 无效（可选：{' / '.join(choices)}）", name)
        values[name] = word
    for name, (least, most) in BOUNDS.items():
        raw = m.get(name)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise PolicyError(f"{name} 必须是整数（{least} 到 {most}）", name)
        if not least <= raw <= most:
            raise PolicyError(f"{name} 必须在 {least} 到 {most} 之间，收到 {raw}", name)
        values[name] = raw
    raw = m.get("FailOnNon2xx")
    if raw is not None:
        word = str(raw).strip().lower()
        if word not in ("", "default", "true", "false"):
            raise PolicyError(f"FailOnNon2xx '{str(raw)[:20]}' 无效（可选：true / false / default）", "FailOnNon2xx")
        values["FailOnNon2xx"] = None if word in ("", "default") else word == "true"
    raw = m.get("AlarmOnMissed")
    if raw is not None:
        if not isinstance(raw, bool):
            raise PolicyError("AlarmOnMissed 必须是 true 或 false", "AlarmOnMissed")
        values["AlarmOnMissed"] = raw
    raw = m.get("ExpectedText")
    if raw is not None:
        if len(raw) > MAX_EXPECTED_TEXT:
            raise PolicyError(f"ExpectedText 最长 {MAX_EXPECTED_TEXT} 个字符", "ExpectedText")
        if any(ord(c) < 32 and c not in "\t" for c in raw):
            raise PolicyError("ExpectedText 不能包含控制字符", "ExpectedText")
        values["ExpectedText"] = raw or None
    if values["OverlapPolicy"] != "parallel":
        values["MaxParallel"] = 1
    if plugin:
        # HTTP-only fields an earlier version of the task had are dropped; asked for, refused
        if m.get("ExpectedText") or m.get("FailOnNon2xx") not in (None, "", "default"):
            field = "ExpectedText" if m.get("ExpectedText") else "FailOnNon2xx"
            raise PolicyError(f"{field} 只适用于 HTTP 任务 (MetaType 2)", field)
        values["ExpectedText"] = values["FailOnNon2xx"] = None
        if values["OverlapPolicy"] not in PLUGIN_OVERLAP:
            raise PolicyError(f"程序集任务只有一个实例，一次运行一个：OverlapPolicy 可选 {' / '.join(PLUGIN_OVERLAP)}",
                              "OverlapPolicy")
    return RunPolicy(**values)


__all__ = ["BACKOFF", "BOUNDS", "DEFAULT", "FIELDS", "MISFIRE", "OVERLAP", "PolicyError", "RunPolicy", "form_value",
           "from_form"]
