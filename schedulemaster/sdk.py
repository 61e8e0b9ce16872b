"""The plugin SDK: ScheduleMaster's ``TaskBase`` / ``TaskContext`` in Python.

A port of the original's ``Hos.ScheduleMaster.Base`` (docs/legacy-behaviour.md, Plugin tasks), in Python
naming, with the original names kept as aliases so a ported plugin can read like the C#::

    from schedulemaster import TaskBase, TaskContext

    class SyncOrders(TaskBase):
        def initialize(self):                 # once, when the task starts
            self.set_configuration_file("orders.json")
            self.seen = 0
        def run(self, context: TaskContext):  # every firing, on the same instance
            batch = context.get_argument("batch", int)
            self.seen += batch
            context.write_log(f"synced {batch}")
            context.result = {"seen": self.seen}   # handed to child tasks (Nexts)
        def dispose(self):                    # on Stop
            ...

A plain function ``def job(context): ...`` works as a task too. Nothing here imports
Prefect: plugin packages depend on this module only.
"""

from __future__ import annotations

import json
import threading
import traceback
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class LogCategory(IntEnum):
    """systemlogs.category of the original."""

    Info = 1
    Warn = 2
    Error = 3


#: Python logging levels for each category (what Prefect's run logs show)
LOG_LEVELS = {LogCategory.Info: 20, LogCategory.Warn: 30, LogCategory.Error: 40}


class OperationCanceledError(Exception):
    """Raised by ``CancellationToken.throw_if_cancellation_requested`` (.NET's OperationCanceledException)."""


class CancellationToken:
    """Set when the task is paused or stopped; cooperative code checks it (the original's demo TaskCancel)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def is_cancellation_requested(self) -> bool:
        return self._event.is_set()

    IsCancellationRequested = is_cancellation_requested

    def cancel(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early (True) when cancelled."""
        return self._event.wait(timeout)

    def throw_if_cancellation_requested(self) -> None:
        if self._event.is_set():
            raise OperationCanceledError("the task was paused or stopped")

    ThrowIfCancellationRequested = throw_if_cancellation_requested


def _convert(value: str, type_: type) -> Any:
    """``Convert.ChangeType(string, T)`` for the types plugin parameters use."""
    if type_ is str:
        return value
    if type_ is bool:  # Convert.ToBoolean(string) takes only "True"/"False", any case
        low = value.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise ValueError(value)
    if type_ is int:
        return int(value.strip())
    if type_ is float:
        return float(value.strip())
    if type_ is Decimal:
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(value) from None
    if type_ is datetime:
        return datetime.fromisoformat(value.strip())
    if type_ in (dict, list):
        parsed = json.loads(value)
        if not isinstance(parsed, type_):
            raise ValueError(value)
        return parsed
    return type_(value)


def _default(type_: type) -> Any:
    """``default(T)``: null for strings and objects, zero/False for numbers and bools."""
    if type_ in (int, float, bool, Decimal):
        return type_()
    return None


class TaskContext:
    """What one firing sees: its parameters, its parent's result, a log, a cancellation token."""

    def __init__(self, task_id: str, params: dict[str, str] | None = None, *,
                 previous_result: Any = None, node: str | None = None, trace_id: str | None = None,
                 cancellation_token: CancellationToken | None = None) -> None:
        self.task_id = task_id
        self.params = dict(params or {})
        self.previous_result = previous_result
        self.result: Any = None
        self.node = node
        self.trace_id = trace_id
        self.cancellation_token = cancellation_token or CancellationToken()
        self.logs: list[tuple[int, str, datetime]] = []
        self._lock = threading.Lock()

    def get_argument(self, name: str, type_: type[T] = str, default: Any = None) -> T:
        """The parameter ``name`` converted to ``type_``; ``default`` (else the type's default)
        when it is missing or does not convert, as ``GetArgument<T>`` did."""
        value = self.params.get(name)
        if value is None:
            return default if default is not None else _default(type_)
        try:
            return _convert(str(value), type_)
        except (ValueError, TypeError):
            return default if default is not None else _default(type_)

    def write_log(self, message: str, category: LogCategory | int = LogCategory.Info) -> None:
        level = LOG_LEVELS.get(LogCategory(int(category)), 20)
        with self._lock:
            self.logs.append((level, str(message), datetime.now(timezone.utc)))

    def write_error(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        self.write_log(text, LogCategory.Error)

    # The original's names.
    GetArgument = get_argument
    WriteLog = write_log
    WriteError = write_error

    @property
    def PreviousResult(self) -> Any:
        return self.previous_result

    @property
    def Result(self) -> Any:
        return self.result

    @Result.setter
    def Result(self, value: Any) -> None:
        self.result = value

    @property
    def CancellationToken(self) -> CancellationToken:
        return self.cancellation_token


class TaskBase:
    """Subclass and implement ``run``; one instance lives from Start to Stop."""

    def __init__(self) -> None:
        self.task_id: str | None = None
        self.cancellation_token = CancellationToken()
        self.plugin_dir: Path | None = None  # where the task's package was unpacked, if any
        self._config_path: Path | None = None
        self._config_mtime: float | None = None
        self._config: dict[str, Any] = {}

    def initialize(self) -> None:
        """Called once when the task starts; an exception here fails the Start."""
        if type(self).Initialize is not TaskBase.Initialize:
            self.Initialize()

    def run(self, context: TaskContext) -> Any:
        """Called on every firing."""
        if type(self).Run is not TaskBase.Run:
            return self.Run(context)
        raise NotImplementedError(f"{type(self).__name__} must implement run(context)")

    def dispose(self) -> None:
        """Called on Stop, before the instance is dropped."""
        if type(self).Dispose is not TaskBase.Dispose:
            self.Dispose()

    # .NET-style overrides; the snake_case methods call them when a subclass defines them.
    def Initialize(self) -> None:  # noqa: N802
        pass

    def Run(self, context: TaskContext) -> Any:  # noqa: N802
        raise NotImplementedError

    def Dispose(self) -> None:  # noqa: N802
        pass

    def set_configuration_file(self, name: str) -> None:
        """Use a JSON file of the task's own directory as ``configuration``, reloaded when it changes."""
        base = (self.plugin_dir or Path.cwd()).resolve()
        path = (base / name).resolve()
        if base != path and base not in path.parents:
            raise ValueError(f"configuration file {name!r} is outside the task's directory")
        self._config_path = path
        self._config_mtime = None
        self._reload_config()

    SetConfigurationFile = set_configuration_file

    @property
    def configuration(self) -> dict[str, Any]:
        """The configuration file's content, re-read whenever the file changed (hot reload)."""
        self._reload_config()
        return self._config

    @property
    def Configuration(self) -> dict[str, Any]:  # noqa: N802
        return self.configuration

    @property
    def TaskId(self) -> str | None:  # noqa: N802
        return self.task_id

    @property
    def CancellationToken(self) -> CancellationToken:  # noqa: N802
        return self.cancellation_token

    def _reload_config(self) -> None:
        if self._config_path is None:
            return
        try:
            mtime = self._config_path.stat().st_mtime_ns
        except FileNotFoundError:
            self._config, self._config_mtime = {}, None
            return
        if mtime != self._config_mtime:
            self._config = json.loads(self._config_path.read_text(encoding="utf-8") or "{}")
            self._config_mtime = mtime


class FunctionTask(TaskBase):
    """A plain ``def job(context)`` (sync or async) as a task."""

    def __init__(self, fn: Callable[[TaskContext], Any]) -> None:
        super().__init__()
        self.fn = fn

    def run(self, context: TaskContext) -> Any:
        return self.fn(context)


__all__ = ["CancellationToken", "FunctionTask", "LogCategory", "OperationCanceledError",
           "TaskBase", "TaskContext"]
