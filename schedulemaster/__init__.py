"""ScheduleMaster on Prefect.

The plugin SDK is importable from the package root, as the original's ``Hos.ScheduleMaster.Base``
was: ``from schedulemaster import TaskBase, TaskContext``. It imports nothing heavy, because
plugin packages load it on every node.

The notebook API is here too, loaded on first use (it brings pandas and Prefect's client)::

    import schedulemaster as sm
    sm.connect()                                   # the system `./sm up` started, or a URL
    @sm.task(cron="0/10 * * * * ?")
    def sync_orders(context): ...
    sync_orders.start(); sm.runs(task=sync_orders, since="1h"); sm.lateness()
"""

from schedulemaster.sdk import (CancellationToken, FunctionTask, LogCategory, OperationCanceledError,
                                TaskBase, TaskContext)

#: name -> module of the notebook API, imported when first asked for
_LAZY = {
    "connect": "connection", "current": "connection", "Connection": "connection",
    "PrefectUnavailable": "connection",
    "LegacyClient": "legacy_client", "LegacyError": "legacy_client", "LegacyAuthError": "legacy_client",
    "LegacyForbidden": "legacy_client",
    "LegacyValidationError": "legacy_client", "LegacyUnavailable": "legacy_client",
    "task": "handles", "http_task": "handles", "delay": "handles", "get_task": "handles", "Task": "handles",
    "ScheduledFunction": "handles",
    "tasks": "frames", "runs": "frames", "iter_runs": "frames", "logs": "frames", "nodes": "frames",
    "delayed": "frames", "lateness": "frames", "plot_lateness": "frames",
    "UnshippableError": "shipping",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'schedulemaster' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"schedulemaster.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["CancellationToken", "FunctionTask", "LogCategory", "OperationCanceledError",
           "TaskBase", "TaskContext", *_LAZY]
