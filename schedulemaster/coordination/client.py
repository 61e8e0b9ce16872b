"""The one client for the master's own endpoints (wire.py).

It rides on a Prefect client's public ``request``: the same connection, credential, retries
of 429/502/503 and error raising (PrefectHTTPStatusError) as every Prefect call, with the
project's paths and models on top. A node's calls carry the token the master gave it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable
from uuid import UUID

from pydantic import TypeAdapter

from schedulemaster.coordination import wire

_NODE_ROWS = TypeAdapter(list[wire.NodeRow])
_LATEST = TypeAdapter(dict[str, datetime])


class MasterClient:
    """``prefect``: an open async PrefectClient for the master's Prefect API."""

    def __init__(self, prefect: Any, node_token: str | None = None):
        self.prefect = prefect
        self.node_token = node_token

    async def _call(self, method: str, path: str, body: Any = None, **kwargs: Any):
        headers = {wire.NODE_TOKEN_HEADER: self.node_token} if self.node_token else None
        if isinstance(body, list):
            body = [b.model_dump(mode="json") if hasattr(b, "model_dump") else b for b in body]
        elif body is not None:
            body = body.model_dump(mode="json")
        return await self.prefect.request(method, path, json=body, headers=headers, **kwargs)

    # ---- nodes ------------------------------------------------------------------------
    async def register(self, registration: wire.NodeRegistration) -> wire.Registered:
        """Register a node process; its token is kept for every later call of this client."""
        answer = wire.Registered.model_validate_json((await self._call("POST", wire.REGISTER_PATH,
                                                                       registration)).content)
        self.node_token = answer.token
        return answer

    async def nodes(self) -> list[wire.NodeRow]:
        return _NODE_ROWS.validate_json((await self._call("GET", wire.NODES_PATH)).content)

    # ---- the task book -------------------------------------------------------------------
    async def task_versions(self, since: datetime | None) -> wire.TaskVersions:
        """(id, updated) of the tasks changed since ``since`` (all of them when None) and the count."""
        return wire.TaskVersions.model_validate_json(
            (await self._call("POST", wire.TASK_VERSIONS_PATH, wire.VersionsRequest(since=since))).content)

    async def wait_for_change(self, token: str, wait: float) -> str:
        """The task book's change token, once it differs from ``token`` or after ``wait`` seconds."""
        return wire.ChangeToken.model_validate_json((await self._call(
            "POST", wire.TASK_CHANGES_PATH, wire.ChangesRequest(token=token, wait=wait))).content).token

    async def wait_for_work(self, token: str, wait: float) -> wire.WorkToken:
        """The master's new-runs token, once it differs from ``token`` (a flow run a worker
        may take was created) or after ``wait`` seconds, with the runs created since
        (schedulemaster/master/new_runs.py)."""
        return wire.WorkToken.model_validate_json((await self._call(
            "POST", wire.WORK_WAIT_PATH, wire.ChangesRequest(token=token, wait=wait))).content)

    async def read_tasks(self, request: wire.TasksRequest) -> wire.TasksPage:
        """Task deployments' own columns, read in SQL by the master: Prefect's deployment
        endpoints build a full response per deployment (8 ms each on the master)."""
        return wire.TasksPage.model_validate_json((await self._call("POST", wire.TASKS_READ_PATH, request)).content)

    # ---- claims -----------------------------------------------------------------------
    async def claim(self, request: wire.ClaimRequest) -> wire.ClaimResult:
        return wire.ClaimResult.model_validate_json((await self._call("POST", wire.CLAIMS_PATH, request)).content)

    async def release(self, request: wire.ClaimRequest) -> int:
        return wire.Released.model_validate_json((await self._call("POST", wire.RELEASE_PATH, request)).content).released

    async def latest(self, task_ids: Iterable[UUID]) -> dict[str, datetime]:
        """Each task's latest claimed instant (tasks never claimed are absent), MAX_LATEST tasks
        per call: a node taking over more tasks than one call carries still catches up."""
        ids, out = list(task_ids), {}
        for i in range(0, len(ids), wire.MAX_LATEST):
            body = wire.LatestRequest(task_ids=ids[i:i + wire.MAX_LATEST])
            out.update(_LATEST.validate_json((await self._call("POST", wire.LATEST_PATH, body)).content))
        return out

    # ---- firings ----------------------------------------------------------------------
    async def record(self, records: list[wire.FiringRecord]) -> wire.RecordResult:
        return wire.RecordResult.model_validate_json((await self._call("POST", wire.FIRINGS_PATH, records)).content)

    async def report_failure(self, failure: wire.RunFailure) -> bool:
        """Whether the master knew the task (it then told the task's keepers)."""
        return wire.KnownTask.model_validate_json(
            (await self._call("POST", wire.FAILURES_PATH, failure)).content).known_task

    async def report_trouble(self, trouble: wire.TaskTrouble) -> None:
        """Tell the master this node cannot load a task's plugin (or can again)."""
        await self._call("POST", wire.TASK_TROUBLE_PATH, trouble)

    # ---- plugin packages --------------------------------------------------------------
    async def package(self, name: str) -> tuple[str, bytes] | None:
        """(file name, zip bytes) of the plugin package ``name``, or None when the master has none."""
        from prefect.exceptions import PrefectHTTPStatusError

        try:
            resp = await self._call("GET", wire.PACKAGE_PATH.format(name=name))
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
        disposition = resp.headers.get("content-disposition", "")
        filename = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else f"{name}.zip"
        return filename, resp.content


def package_exists(prefect: Any, name: str) -> bool:
    """Whether the master holds the plugin package ``name``, through a sync PrefectClient;
    a HEAD, so the package's bytes are not sent."""
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        prefect.request("HEAD", wire.PACKAGE_PATH.format(name=name))
        return True
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
