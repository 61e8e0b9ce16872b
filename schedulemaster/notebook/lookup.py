"""How the notebook API names things and finds a task: durations, status names, a task by
title or id, and the spec the nodes fire (its deployment's ``task`` parameter). Shared by
the handles and the DataFrames, which both need them and must not import each other both ways."""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from schedulemaster.deployments.spec import TaskSpec, spec_or_none
from schedulemaster.notebook.connection import Connection, prefect_errors
from schedulemaster.notebook.legacy_client import LegacyError, LegacyNotFound


def find_task(conn: Connection, title: str) -> dict[str, Any] | None:
    """The task titled exactly ``title``; ValueError when several are (the legacy API and
    imports allow that, and updating one at random would be wrong)."""
    rows = [row for row in conn.legacy.iter_tasks(name=title) if row.get("Title") == title]
    if len(rows) > 1:
        raise ValueError(f"{len(rows)} tasks are titled {title!r} ({', '.join(r['Id'] for r in rows)}): "
                         "rename or delete all but one, or use another title")
    return rows[0] if rows else None


def read_spec(conn: Connection, task_id: str) -> TaskSpec:
    """The task as the nodes see it: the ``task`` parameter of its Prefect deployment."""
    from prefect.exceptions import ObjectNotFound

    try:
        with prefect_errors(conn.prefect_url):
            dep = conn.prefect().read_deployment(UUID(task_id))
    except ObjectNotFound:
        raise LegacyNotFound("任务不存在!") from None
    spec = spec_or_none((dep.parameters or {}).get("task"))
    if spec is None:
        raise LegacyNotFound("任务不存在!")
    return spec


class HasId(Protocol):
    """A Task handle, as far as the DataFrames need one."""

    id: str


def task_id_of(task: HasId | UUID | str | None, conn: Connection) -> str | None:
    """The id of ``task``: a Task (anything with an ``id``), an id, or a title."""
    if task is None:
        return None
    if isinstance(task, UUID):
        return str(task)
    if isinstance(task, str):
        try:
            return str(UUID(task))
        except ValueError:
            row = find_task(conn, task)
            if row is None:
                raise LegacyError(f"任务不存在! (no task titled {task!r})") from None
            return row["Id"]
    if isinstance(getattr(task, "id", None), str):
        return task.id
    raise TypeError(f"task must be a Task, a title or an id, got {type(task).__name__}")
