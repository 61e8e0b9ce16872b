"""ScheduleMaster on Prefect.

The plugin SDK is importable from the package root, as the original's ``Hos.ScheduleMaster.Base``
was: ``from schedulemaster import TaskBase, TaskContext``.
"""

from schedulemaster.sdk import (CancellationToken, FunctionTask, LogCategory, OperationCanceledError,
                                TaskBase, TaskContext)

__all__ = ["CancellationToken", "FunctionTask", "LogCategory", "OperationCanceledError",
           "TaskBase", "TaskContext"]
