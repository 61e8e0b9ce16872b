"""The master's endpoints through which nodes coordinate: register, claim firings, read nodes.

Mounted with the recording endpoints inside Prefect's API app (schedulemaster/master/record_api.py), so
Prefect's auth string guards them too. The store calls are synchronous (sqlmodel) and run
in a thread, off the server's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Awaitable, Callable
from uuid import UUID

from fastapi import APIRouter, Body, HTTPException, Request

from schedulemaster.coordination.wire import (NODE_TOKEN_HEADER, ClaimRequest, ClaimResult, LatestRequest,
                                              NodeRegistration, NodeRow, Registered, Released)
from schedulemaster.deployments.chain import is_online
from schedulemaster.store import claims

log = logging.getLogger("schedulemaster.claims")

#: the live worker names of the pool and, for each worker, seconds since its last heartbeat
LiveWorkers = Callable[[], Awaitable[dict[str, float]]]

ALIVE_WINDOW = 20.0  # seconds: a node that called /claims this recently is alive


class NodeActivity:
    """When each node process (name, incarnation) last called ``/claims``; nodes call at least
    every 5 s (deployments/node_claims.KEEPALIVE). This is the second proof of life beside
    Prefect's worker heartbeats, which can stop landing while the node works: measured on
    an overloaded master, every node's worker channel (websocket) timed out and Prefect
    marked all three OFFLINE while they went on claiming and firing. Failover must not hand
    such a node's firings to another node, which would run them twice. Kept in the master's
    memory: the failover service runs in the same process as these endpoints."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def saw(self, name: str, incarnation: str) -> None:
        self._seen[name] = (incarnation, time.monotonic())

    def alive(self, name: str, incarnation: str | None = None, within: float = ALIVE_WINDOW) -> bool:
        seen = self._seen.get(name)
        return (seen is not None and (incarnation is None or seen[0] == incarnation)
                and time.monotonic() - seen[1] <= within)


def create_coordination_router(engine, live_workers: LiveWorkers,
                               activity: NodeActivity | None = None,
                               on_register: Callable[[str], None] | None = None) -> APIRouter:
    """``on_register(name)``: a new process registered as node ``name`` (what the old one said
    about plugins it could not load no longer holds: master/task_trouble.py)."""
    router = APIRouter()
    activity = activity if activity is not None else NodeActivity()
    # Its own threads: a firing waits for its claim, so claims must not queue behind the
    # server's other blocking calls in the default executor (6 threads on 2 cores), which a
    # recording backlog fills (bench/soak.py shows what that does to lateness).
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sm-claims")

    async def to_thread(fn, *args):
        from sqlalchemy.exc import DBAPIError

        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except DBAPIError as exc:  # a deadlock, a lost connection: the node retries, nothing was kept
            log.warning("%s failed in the store: %s", fn.__name__, str(exc.orig).splitlines()[0][:200])
            raise HTTPException(503, "the store could not answer now; try again") from None
    # name -> (current incarnation, its token's hash): a cache of the nodes table, which only
    # `register` below changes (a node deleted through the Node API is offline, so a stale
    # entry claims nothing)
    incarnations: dict[str, tuple[str, str]] = {}

    async def current(name: str) -> tuple[str, str] | None:
        if name not in incarnations:
            row = (await to_thread(claims.nodes, engine)).get(name)
            if row is None:
                return None
            incarnations[name] = (row.incarnation, row.token_hash)
        return incarnations[name]

    async def check_caller(request: Request, name: str, incarnation: UUID) -> bool:
        """False when ``name`` has another incarnation now (the caller was superseded);
        raises 403 unless the caller holds that incarnation's token."""
        known = await current(name)
        if known is None or known[0] != str(incarnation):
            return False
        if not known[1] or not hmac.compare_digest(token_hash(request), known[1]):
            raise HTTPException(403, f"this call is not from node {name}: its token is missing or wrong")
        return True

    @router.post("/nodes/register")
    async def register(reg: NodeRegistration) -> Registered:
        """A node starting under a name that a live process holds is refused (409): two
        processes under one name would both believe they own its firings."""
        known = (await to_thread(claims.nodes, engine)).get(reg.name)
        live = await live_workers()
        if known is not None and known.incarnation != str(reg.incarnation) and (
                reg.name in live or activity.alive(reg.name, known.incarnation)):
            beat = f"last heartbeat {live[reg.name]:.0f} s ago" if reg.name in live else "claiming firings"
            raise HTTPException(409, f"node {reg.name} is live ({beat}, "
                                     f"started {known.started_at:%Y-%m-%d %H:%M:%S} UTC on {known.host or '?'}); "
                                     "stop it first, or wait until it counts as offline")
        token = secrets.token_urlsafe(32)
        hashed = hashlib.sha256(token.encode()).hexdigest()
        await to_thread(claims.register, engine, claims.NodeInfo(
            name=reg.name, priority=reg.priority, max_concurrency=reg.max_concurrency,
            incarnation=str(reg.incarnation), host=reg.host, started_at=datetime.now(timezone.utc),
            token_hash=hashed))
        incarnations[reg.name] = (str(reg.incarnation), hashed)
        if on_register is not None:
            on_register(reg.name)
        return Registered(registered=reg.name, token=token)

    @router.post("/claims")
    async def claim(request: Request, req: ClaimRequest = Body(...)) -> ClaimResult:
        if not await check_caller(request, req.node, req.incarnation):
            return ClaimResult(won=[], superseded=True)
        activity.saw(req.node, str(req.incarnation))
        t0 = time.monotonic()
        if req.done:
            await to_thread(claims.fired, engine, req.node, str(req.incarnation),
                            [(d.firing_id, d.ok) for d in req.done])
        t1 = time.monotonic()
        won = []
        if req.firings:
            won = await to_thread(claims.claim, engine, req.node, str(req.incarnation),
                                  [(c.firing_id, str(c.task_id), c.scheduled) for c in req.firings])
        if time.monotonic() - t0 > 1.0:  # firings wait for this: say where the time went
            log.warning("claims of node %s took %.1f s: %d reported in %.1f s, %d claimed in %.1f s",
                        req.node, time.monotonic() - t0, len(req.done), t1 - t0, len(req.firings),
                        time.monotonic() - t1)
        return ClaimResult(won=won)

    @router.post("/claims/release")
    async def release(request: Request, req: ClaimRequest = Body(...)) -> Released:
        """Claims a node won ahead and then did not fire (the task was stopped, edited or
        moved, or the firing was skipped): finished, so nobody re-runs them."""
        if not await check_caller(request, req.node, req.incarnation):
            return Released(released=0)
        mine = await to_thread(claims.release, engine, req.node, str(req.incarnation),
                               [c.firing_id for c in req.firings])
        return Released(released=mine)

    @router.post("/claims/latest")
    async def latest(body: LatestRequest) -> dict[str, datetime]:
        """Each task's latest claimed instant: where a node taking the task over catches up from."""
        return await to_thread(claims.latest, engine, [str(t) for t in body.task_ids])

    @router.get("/nodes")
    async def list_nodes() -> list[NodeRow]:
        rows = await to_thread(claims.nodes, engine)
        running = await to_thread(claims.running_counts, engine)
        return [NodeRow(name=n.name, priority=n.priority, max_concurrency=n.max_concurrency, host=n.host or "",
                        started_at=n.started_at, running=running.get(n.name, 0)) for n in rows.values()]

    return router


def token_hash(request: Request) -> str:
    """sha256 of the node token the caller sent ("" when none)."""
    token = request.headers.get(NODE_TOKEN_HEADER, "")
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def node_caller(engine) -> Callable[[Request], Awaitable[str | None]]:
    """The name of the registered node whose token the caller sent, or None; for endpoints that
    only nodes call but whose body names no node (recording firings)."""
    names: dict[str, tuple[str, float]] = {}  # token hash -> (node, when looked up)

    async def caller(request: Request) -> str | None:
        hashed = token_hash(request)
        if not hashed:
            return None
        hit = names.get(hashed)
        if hit is not None and time.monotonic() - hit[1] < 5.0:
            return hit[0]
        rows = await asyncio.to_thread(claims.nodes, engine)
        name = next((n.name for n in rows.values() if n.token_hash and hmac.compare_digest(n.token_hash, hashed)),
                    None)
        if name is not None:
            if len(names) > 10_000:
                names.clear()
            names[hashed] = (name, time.monotonic())
        return name

    return caller


async def pool_workers(pool_name: str) -> list:
    """The pool's worker rows, read in-process (the master is the Prefect server)."""
    from prefect.server import models
    from prefect.server.database import provide_database_interface

    async with provide_database_interface().session_context() as session:
        pool = await models.workers.read_work_pool_by_name(session=session, work_pool_name=pool_name)
        if pool is None:
            return []
        return list(await models.workers.read_workers(session=session, work_pool_id=pool.id))


def live_workers_of(pool_name: str) -> LiveWorkers:
    async def live() -> dict[str, float]:
        now = datetime.now(timezone.utc)
        return {w.name: (now - w.last_heartbeat_time).total_seconds() if w.last_heartbeat_time else 0.0
                for w in await pool_workers(pool_name) if is_online(w)}

    return live
