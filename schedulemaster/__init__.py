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
    **dict.fromkeys(("connect", "current", "Connection", "PrefectUnavailable"), "notebook.connection"),
    **dict.fromkeys(("LegacyClient", "LegacyError", "LegacyAuthError", "LegacyForbidden", "LegacyValidationError",
                     "LegacyUnavailable"), "notebook.legacy_client"),
    **dict.fromkeys(("task", "http_task", "delay", "get_task", "Task", "ScheduledFunction"), "notebook.handles"),
    **dict.fromkeys(("tasks", "runs", "iter_runs", "logs", "nodes", "delayed", "lateness", "plot_lateness"),
                    "notebook.frames"),
    "UnshippableError": "notebook.shipping",
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
