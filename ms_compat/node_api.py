"""/api/Node/*: the console's Nodes page (节点管理, docs/legacy-behaviour.md, The console) as API extensions.

A node's row joins what Prefect knows (the worker, its last heartbeat) with what the operator
chose (enabled or disabled, ``deployments/variables.py``) and the master's nodes table
(priority, max concurrency, the firings it runs now: ``schedulemaster/store/claims.py``). Edit sets
priority and concurrency; the nodes apply it within 5 s, until they restart with new flags. Status keeps the original's
codes: 0 下线 offline (no heartbeat), 1 空闲 idle (alive but disabled: 休息), 2 运行 running
(alive and taking tasks). Delete (删除) is refused while the node is alive, as the original
refused it while it ran; a deleted node that starts again registers itself anew.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import FastAPI, Request

from schedulemaster.deployments.chain import is_online
from schedulemaster.deployments.variables import read_disabled, set_disabled
from schedulemaster.ms_compat import responses as R
from schedulemaster.ms_compat.binding import F, FormValues
from schedulemaster.store import claims

NAME_FIELD: list[F] = [F("name", "str", required=True, max_length=100)]
EDIT_FIELDS: list[F] = NAME_FIELD + [F("priority", "int"), F("maxConcurrency", "int")]
STATUS_TEXT = {0: "下线", 1: "空闲", 2: "运行"}


def node_row(worker, disabled: set[str], fmt_date: Callable, info=None, running: int = 0) -> dict[str, Any]:
    status = 0 if not is_online(worker) else 1 if worker.name in disabled else 2
    return {"NodeName": worker.name, "NodeType": "worker", "Status": status, "StatusText": STATUS_TEXT[status],
            "Enabled": worker.name not in disabled,
            "Priority": info.priority if info else None,
            "MaxConcurrency": info.max_concurrency if info else None,
            "RunningFirings": running, "MachineName": info.host if info else None,
            "StartTime": fmt_date(info.started_at) if info else None,
            "LastUpdateTime": fmt_date(worker.last_heartbeat_time) if worker.last_heartbeat_time else None,
            "CreateTime": fmt_date(worker.created) if worker.created else None}


def add_node_routes(app: FastAPI, guarded, form_of, service) -> None:
    """``service()`` is the TaskService: its Prefect client, pool and zone."""

    async def workers() -> list:
        s = service()
        return list(await s.client.read_workers_for_work_pool(s.work_pool))

    def fmt(value):
        return R.fmt_date(service().to_local(value))

    async def find(name: str):
        return next((w for w in await workers() if w.name == name), None)

    @app.get("/api/node/querylist")
    async def query_list(request: Request):
        async def act(_m, _user):
            disabled = await read_disabled(service().client)
            engine = service().store.engine
            infos = await asyncio.to_thread(claims.nodes, engine)
            running = await asyncio.to_thread(claims.running_counts, engine)
            rows = [node_row(w, disabled, fmt, infos.get(w.name), running.get(w.name, 0))
                    for w in sorted(await workers(), key=lambda w: w.name)]
            return R.ok("请求数据成功", {"total": len(rows), "rows": rows})

        return await guarded(request, [], FormValues([]), act)

    def toggle(disable: bool):
        async def endpoint(request: Request):
            async def act(m, _user):
                name = m["name"].strip()
                if await find(name) is None:
                    return R.failed("节点不存在!")
                await set_disabled(service().client, name, disable)
                return R.ok("节点已休息!" if disable else "节点已启用!")

            return await guarded(request, NAME_FIELD, _name_values(await form_of(request), request), act)

        endpoint.__name__ = "disable" if disable else "enable"
        return endpoint

    app.post("/api/node/disable")(toggle(True))
    app.post("/api/node/enable")(toggle(False))

    @app.post("/api/node/edit")
    async def edit(request: Request):
        async def act(m, _user):
            name = m["name"].strip()
            priority, maxc = m.get("priority"), m.get("maxConcurrency")
            if priority is None and maxc is None:
                return R.failed("请提供 priority 或 maxConcurrency!")
            if priority is not None and not 0 <= priority <= 1000:
                return R.failed("priority 须在 0 到 1000 之间!")
            if maxc is not None and not 1 <= maxc <= 1000:
                return R.failed("maxConcurrency 须在 1 到 1000 之间!")
            if await find(name) is None or not await asyncio.to_thread(
                    claims.edit, service().store.engine, name, priority, maxc):
                return R.failed("节点不存在!")
            return R.ok("节点已保存!")

        return await guarded(request, EDIT_FIELDS, _name_values(await form_of(request), request), act)

    @app.post("/api/node/delete")
    async def delete(request: Request):
        async def act(m, _user):
            name = m["name"].strip()
            s = service()
            worker = await find(name)
            if worker is None:
                return R.failed("节点不存在!")
            if is_online(worker):
                return R.failed("节点在线，不能删除!（先停止该节点进程）")
            await s.client.request("DELETE", "/work_pools/{work_pool_name}/workers/{name}",
                                   path_params={"work_pool_name": s.work_pool, "name": name})
            await set_disabled(s.client, name, False)  # a node of that name starting later starts enabled
            await asyncio.to_thread(claims.forget, s.store.engine, name)
            return R.ok("节点已删除!")

        return await guarded(request, NAME_FIELD, _name_values(await form_of(request), request), act)


def _name_values(form: FormValues, request: Request) -> FormValues:
    """``name`` from the form, else from the query string (as ``id`` is taken elsewhere)."""
    if form.broken or form.has("name"):
        return form
    return FormValues(request.query_params.multi_items())
