"""Which node fires a task, and child tasks (Nexts).

A task's firings go to one node: a weighted rendezvous choice (``owner``) over the live,
enabled nodes its Executors allow; every node and the master make the same choice.

Child tasks: after a successful run, each Running child runs once with its result.

The original triggered a child only when it happened to be scheduled on the same worker
(docs/legacy-behaviour.md, Child tasks). Here a child runs on the node that owns it (its own Executors),
wherever that is: in-process when the parent's node owns it too, otherwise as a flow run
in the owner's queue. Its firing id derives from the parent's, so a retried parent
triggers no second child run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from schedulemaster.coordination.client import MasterClient
from schedulemaster.coordination.wire import NodeRow
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.deployments.tasks import DEFAULT_QUEUE, NODE_QUEUE_PREFIX, Status, record_of, run_name
from schedulemaster.deployments.variables import read_disabled

log = logging.getLogger("schedulemaster.chain")


def owner(task_id: uuid.UUID, nodes: list[str], weights: dict[str, int] | None = None) -> str | None:
    """Weighted rendezvous hashing: each node scores w / -ln(u), u the (task, node) hash in
    (0, 1); a node gets a share of the tasks proportional to its weight (Priority), and
    only tasks move when a node comes or goes. Priority 0 nodes get tasks only when every
    candidate is 0 (the original looped forever then)."""
    if not nodes:
        return None
    w = {n: max(0, int((weights or {}).get(n, 1))) for n in nodes}
    if not any(w.values()):
        w = dict.fromkeys(nodes, 1)

    def score(n: str) -> float:
        if w[n] == 0:
            return -math.inf
        h = int.from_bytes(hashlib.sha1(f"{task_id}:{n}".encode()).digest()[:8], "big")
        return w[n] / -math.log((h + 0.5) / 2 ** 64)

    return max(sorted(nodes), key=score)


def child_firing_id(child_id: uuid.UUID, parent_firing_id: str) -> str:
    return str(uuid.uuid5(child_id, f"next:{parent_firing_id}"))


def jsonable(value: Any) -> Any:
    """A parent's result as it can travel to another node (JSON), else its repr."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def child_ids(spec: TaskSpec, parent_id: uuid.UUID) -> list[uuid.UUID]:
    out = []
    for raw in spec.Nexts:
        try:
            cid = uuid.UUID(str(raw))
        except ValueError:
            continue
        if cid != parent_id:  # the original excluded a direct self-reference
            out.append(cid)
    return out


def is_online(worker) -> bool:
    """Whether Prefect counts the worker alive (its heartbeats arrive)."""
    return str(getattr(worker.status, "value", worker.status)).upper() == "ONLINE"


def online(workers, disabled: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The names of the ONLINE workers of a pool that are not disabled, sorted."""
    return sorted(w.name for w in workers if is_online(w) and w.name not in disabled)


def why_unschedulable(executors: list[str], known: set[str], live: set[str], disabled: set[str]) -> str | None:
    """Why no node can fire a Running task allowed on ``executors`` (every node when empty), or
    None when one can. ``known``: the pool's nodes; ``live``: those online and enabled."""
    if any(n in live for n in executors) or (not executors and live):
        return None
    if not executors:
        return "no node is online and enabled"
    why = [f"{n} is not a node of this system" if n not in known else f"{n} is disabled" if n in disabled
           else f"{n} is offline" for n in executors]
    return "no node it may run on can fire it: " + "; ".join(why)


@dataclass(frozen=True)
class NodeView:
    """The pool's nodes as routing sees them: every one, those that may fire (online and
    enabled), and the disabled ones."""
    known: frozenset[str]
    live: frozenset[str]
    disabled: frozenset[str]

    def why_unschedulable(self, executors: list[str]) -> str | None:
        return why_unschedulable(executors, self.known, self.live, self.disabled)


async def node_view(client, work_pool: str) -> NodeView:
    """The pool's workers and the disabled list, read now; no workers while the pool does
    not exist yet (the first node to start makes it)."""
    try:
        workers = await client.read_workers_for_work_pool(work_pool)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
        workers = []
    disabled = await read_disabled(client)
    return NodeView(frozenset(w.name for w in workers), frozenset(online(workers, disabled)), frozenset(disabled))


async def live_nodes(client, work_pool: str) -> list[str]:
    """The nodes that may fire tasks now: alive (Prefect's heartbeats) and enabled."""
    try:
        return sorted((await node_view(client, work_pool)).live)
    except Exception:
        return []


async def node_rows(client) -> list[NodeRow]:
    """The master's nodes table (schedulemaster/master/coordination_api.py): name, priority,
    max_concurrency, running...; raises when the master cannot answer."""
    return await MasterClient(client).nodes()


async def node_weights(client) -> dict[str, int]:
    """Each registered node's Priority; {} when unreadable."""
    try:
        return {row.name: row.priority for row in await node_rows(client)}
    except Exception:
        return {}


async def owning_node(client, work_pool: str, task_id: uuid.UUID, spec: TaskSpec) -> str | None:
    """The live node that fires this task (the same weighted rendezvous choice the nodes make), if any."""
    allowed = spec.Executors
    return owner(task_id, [n for n in await live_nodes(client, work_pool) if not allowed or n in allowed],
                 await node_weights(client))


async def queue_for(client, work_pool: str, task_id: uuid.UUID, spec: TaskSpec) -> str:
    """The queue of the node that fires this task; with no live node allowed, the first
    executor's queue (or the shared one)."""
    allowed = spec.Executors
    node = await owning_node(client, work_pool, task_id, spec) or (allowed[0] if allowed else None)
    return DEFAULT_QUEUE if node is None else NODE_QUEUE_PREFIX + node


async def running_child(client, child_id: uuid.UUID):
    """The child's record when it is Running, else None (a stopped or paused child does not run)."""
    from prefect.exceptions import ObjectNotFound

    try:
        rec = record_of(await client.read_deployment(child_id))
    except ObjectNotFound:
        return None
    return rec if rec is not None and rec.status == Status.Running else None


async def create_child_run(client, child, parent_key: str, result: Any, parent_title: str,
                           parent_task_run_id: uuid.UUID | None = None) -> None:
    """A child's run, once per parent firing (``parent_key``), in the child task's own queue:
    the node that owns the child takes it at once (node/worker.py), with no read of the nodes
    here. ``parent_task_run_id`` makes it a subflow of the parent's run."""
    await client.create_flow_run_from_deployment(
        child.id, parameters={"task": child.spec.wire(), "previous_result": jsonable(result)},
        parent_task_run_id=parent_task_run_id, tags=["sm:next"],
        name=run_name(child.spec.Title, f"next of {parent_title or parent_key[:8]}"),
        idempotency_key=child_firing_id(child.id, parent_key))


def find_cycle(graph: dict[str, list[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start through Nexts (task id -> child ids), if one exists.
    Iterative: a chain of thousands of tasks is no recursion limit."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for child in graph.get(node, []):
            if child == start:
                return path + [start]
            if child not in seen:
                seen.add(child)
                stack.append((child, path + [child]))
    return None
