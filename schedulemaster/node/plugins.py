"""Plugin tasks (MetaType 1) on an executor node: load, initialize, run, dispose.

The original loaded ``<AssemblyName>.dll`` into a collectible AssemblyLoadContext per task,
created ``ClassName`` (a ``TaskBase``), called ``Initialize`` once at Start, ``Run`` on
every firing on that same instance and ``Dispose`` on Stop (docs/legacy-behaviour.md, Plugin tasks). Here
``AssemblyName`` is an importable Python module and ``ClassName`` a class (or a plain
function) in it. One ``PluginHost`` per node process holds the live instances, so the
firing loop and the node's Prefect worker (RunOnce, Start) share them.

Plugin code is synchronous in the original; it runs here on a thread pool of the node's
size, so a slow ``run`` cannot hold up the firing loop's other tasks.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import sys
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.flows.http_task import HttpTaskError, parse_params
from schedulemaster.packages import PackageError, check_name, safe_extract
from schedulemaster.sdk import CancellationToken, FunctionTask, TaskBase, TaskContext

log = logging.getLogger("schedulemaster.plugins")

#: an instance staged by a Start but not yet seen Running by the firing loop is kept this long
ADOPT_GRACE_SECONDS = 60.0


class PluginError(Exception):
    """The plugin cannot be loaded or started; the message says exactly why."""


@dataclass
class Loaded:
    task_id: uuid.UUID
    start_key: str | None  # the task's StartedAt: a new Start means a new instance
    instance: TaskBase
    loaded_at: float = field(default_factory=time.monotonic)
    running: bool = False
    paused: bool = False


@dataclass
class PluginOutcome:
    ok: bool
    message: str
    result: Any = None
    elapsed_ms: float = 0.0
    logs: list[tuple[int, str, datetime]] = field(default_factory=list)


def params_of(spec: TaskSpec) -> dict[str, str]:
    """The task's custom parameters (captured at Start) as ParamKey -> ParamValue."""
    try:
        return dict(parse_params(spec.CustomParamsJson))
    except HttpTaskError:
        return {}


def _use_package_dir(module_name: str, pkg_dir: Path) -> None:
    """Import ``module_name`` from ``pkg_dir``: put it first on the path and forget any copy
    of the same top-level module imported before (another task's package, an older upload
    unpacked at the same place), so each Start imports the package it just unpacked."""
    path = str(pkg_dir)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    top = module_name.split(".")[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]  # running instances keep their own module objects
    importlib.invalidate_caches()


def resolve(module_name: str, class_name: str, pkg_dir: Path | None = None) -> Any:
    """The class (or function) ``class_name`` of module ``module_name``.

    ``class_name`` may be dotted (``pkg.mod.Job`` or ``Outer.Job``); as in the original the
    last part is matched case-insensitively when there is no exact match. With ``pkg_dir``
    (an unpacked plugin package) the module comes from there.
    """
    if not module_name or not class_name:
        raise PluginError("AssemblyName and ClassName are both required")
    if pkg_dir is not None:
        _use_package_dir(module_name, pkg_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ModuleNotFoundError, or the module raised while importing
        raise PluginError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from None
    target: Any = module
    parts = class_name.split(".")
    if class_name.startswith(module_name + "."):
        parts = class_name[len(module_name) + 1:].split(".")
    for part in parts:
        nxt = getattr(target, part, None)
        if nxt is None and inspect.ismodule(target):  # a submodule not imported by its package
            try:
                nxt = importlib.import_module(f"{target.__name__}.{part}")
            except ModuleNotFoundError:
                nxt = None
            except Exception as exc:
                raise PluginError(f"cannot import module {target.__name__}.{part!s}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if nxt is None:
            matches = [n for n in dir(target) if n.lower() == part.lower()]
            nxt = getattr(target, matches[0]) if len(matches) == 1 else None
        if nxt is None:
            raise PluginError(f"module {module_name!r} has no {class_name!r}")
        target = nxt
    return target


def instantiate(target: Any) -> TaskBase:
    if inspect.isclass(target):
        if not issubclass(target, TaskBase):
            raise PluginError(f"{target.__module__}.{target.__qualname__} is not a TaskBase subclass")
        try:
            return target()
        except Exception as exc:
            raise PluginError(f"{target.__qualname__}() raised {type(exc).__name__}: {exc}") from None
    if callable(target):
        return FunctionTask(target)
    raise PluginError(f"{target!r} is neither a TaskBase subclass nor a function")


class PluginHost:
    def __init__(self, max_workers: int = 10, node: str | None = None, base_dir: Path | None = None):
        self.node = node
        # each task's own directory (its configuration files), as wwwroot/plugins/<taskId>/ was
        self.base_dir = (base_dir or Path(".schedulemaster") / "plugins").resolve()
        self.pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="plugin")
        self.loaded: dict[uuid.UUID, Loaded] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        #: fetches the package named AssemblyName from the master: (file name, bytes) or None
        #: when the master has none (then AssemblyName is a module installed on the node)
        self.fetch: Callable[[str], Awaitable[tuple[str, bytes] | None]] | None = None
        #: the Assembly_ImagePullPolicy setting: "Always" fetches at every Start,
        #: "IfNotPresent" keeps a task directory that already holds an unpacked package
        self.pull_policy: Callable[[], str] = lambda: "Always"

    def _lock(self, task_id: uuid.UUID) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    async def _call(self, fn, *args) -> Any:
        loop = asyncio.get_running_loop()

        def call():
            result = fn(*args)
            if inspect.isawaitable(result):  # an async run(): its own loop, in this thread
                async def wait():
                    return await result
                result = asyncio.run(wait())
            return result

        return await loop.run_in_executor(self.pool, call)

    async def start(self, task_id: uuid.UUID, spec: TaskSpec) -> Loaded:
        """Load and initialize the task's instance (idempotent for the same Start)."""
        key = spec.StartedAt
        async with self._lock(task_id):
            current = self.loaded.get(task_id)
            if current is not None and current.start_key == key:
                return current
            if current is not None:
                await self._dispose(current)
            task_dir = self.base_dir / str(task_id)
            pkg_dir = await self._unpack(spec.AssemblyName or "", task_dir)
            target = resolve(spec.AssemblyName or "", spec.ClassName or "", pkg_dir)
            instance = instantiate(target)
            instance.task_id = str(task_id)
            instance.plugin_dir = task_dir
            task_dir.mkdir(parents=True, exist_ok=True)
            try:
                await self._call(instance.initialize)
            except Exception as exc:
                raise PluginError(f"initialize() raised {type(exc).__name__}: {exc}\n"
                                  + "".join(traceback.format_exception(exc)).rstrip()) from None
            loaded = Loaded(task_id, key, instance)
            self.loaded[task_id] = loaded
            log.info("task %s: plugin %s.%s started", task_id, spec.AssemblyName, spec.ClassName)
            return loaded

    async def _unpack(self, assembly: str, task_dir: Path) -> Path | None:
        """The task's copy of its uploaded package (fetched anew at every Start), or None."""
        if self.fetch is None or not assembly:
            return None
        marker = task_dir / ".package"
        if self.pull_policy() == "IfNotPresent" and marker.is_file() and _unpacked_name(marker) == assembly:
            return task_dir.resolve()  # the same package unpacked before (a new AssemblyName is fetched)
        try:
            package = await self.fetch(assembly)
        except Exception as exc:
            raise PluginError(f"cannot fetch plugin package {assembly!r} from the master: {exc}") from None
        if package is None:
            return None
        filename, data = package
        try:
            check_name(filename)
            archive = self.base_dir / f".{uuid.uuid4().hex}-{Path(filename).name}"
            self.base_dir.mkdir(parents=True, exist_ok=True)
            archive.write_bytes(data)
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, safe_extract, archive, task_dir)
            finally:
                archive.unlink(missing_ok=True)
            marker.write_text(filename)
        except PackageError as exc:
            raise PluginError(f"plugin package {filename!r} refused: {exc}") from None
        return task_dir.resolve()

    def pause(self, task_id: uuid.UUID) -> None:
        """Pause cancels the token; the instance stays (Resume does not initialize again)."""
        loaded = self.loaded.get(task_id)
        if loaded is not None:
            loaded.paused = True
            loaded.instance.cancellation_token.cancel()

    def resume(self, task_id: uuid.UUID) -> None:
        loaded = self.loaded.get(task_id)
        if loaded is not None:
            loaded.paused = False
        if loaded is not None and loaded.instance.cancellation_token.is_cancellation_requested and not loaded.running:
            loaded.instance.cancellation_token = CancellationToken()

    async def stop(self, task_id: uuid.UUID) -> None:
        async with self._lock(task_id):
            loaded = self.loaded.pop(task_id, None)
            if loaded is not None:
                await self._dispose(loaded)

    async def _dispose(self, loaded: Loaded) -> None:
        loaded.instance.cancellation_token.cancel()
        try:
            await self._call(loaded.instance.dispose)
        except Exception as exc:
            log.warning("task %s: dispose() raised %s: %s", loaded.task_id, type(exc).__name__, exc)
        if self.loaded.get(loaded.task_id) is loaded:
            del self.loaded[loaded.task_id]
        log.info("task %s: plugin disposed", loaded.task_id)

    def stale(self, keep: set[uuid.UUID]) -> list[uuid.UUID]:
        """Loaded instances no longer wanted (not in ``keep``), past the adoption grace."""
        now = time.monotonic()
        return [tid for tid, ld in self.loaded.items()
                if tid not in keep and now - ld.loaded_at > ADOPT_GRACE_SECONDS]

    async def run(self, task_id: uuid.UUID, spec: TaskSpec, *, previous_result: Any = None,
                  trace_id: str | None = None) -> PluginOutcome:
        """One firing on the task's instance (started first if this node has none yet).

        With a TimeoutSeconds policy, a run still going at the deadline has its cancellation
        token set and is answered Failed "timeout"; a thread cannot be stopped from outside,
        so the instance stays busy (later firings are skipped) until ``run`` returns, and then
        gets a fresh token unless the task was paused meanwhile."""
        started = time.perf_counter()
        try:
            loaded = await self.start(task_id, spec)
        except PluginError as exc:
            return PluginOutcome(False, str(exc).splitlines()[0], logs=[
                (40, f"插件加载失败：{exc}", datetime.now(timezone.utc))])
        if loaded.running:
            return PluginOutcome(False, "skipped: the previous firing is still running", logs=[
                (30, "上一次运行尚未结束，本次跳过", datetime.now(timezone.utc))])
        ctx = TaskContext(str(task_id), params_of(spec), previous_result=previous_result, node=self.node,
                          trace_id=trace_id, cancellation_token=loaded.instance.cancellation_token)
        loaded.running = True
        call = asyncio.ensure_future(self._call(loaded.instance.run, ctx))
        timeout = spec.Policy.TimeoutSeconds or None
        try:
            done, _ = await asyncio.wait({call}, timeout=timeout)
        except asyncio.CancelledError:  # the firing was cancelled (overlap policy, shutdown)
            loaded.instance.cancellation_token.cancel()
            call.add_done_callback(lambda _f: self._after_timeout(loaded))
            raise
        if not done:
            loaded.instance.cancellation_token.cancel()
            call.add_done_callback(lambda _f: self._after_timeout(loaded))
            ctx.logs.append((40, f"运行超时：{timeout} 秒内没有结束，已请求取消 (cancellation token set)",
                             datetime.now(timezone.utc)))
            return PluginOutcome(False, f"timeout: run() did not end within {timeout} s", None,
                                 (time.perf_counter() - started) * 1000, ctx.logs)
        loaded.running = False
        try:
            value = call.result()
            if value is not None and ctx.result is None:
                ctx.result = value
            return PluginOutcome(True, "ok", ctx.result, (time.perf_counter() - started) * 1000, ctx.logs)
        except Exception as exc:
            ctx.write_error(exc)
            return PluginOutcome(False, f"{type(exc).__name__}: {exc}", None,
                                 (time.perf_counter() - started) * 1000, ctx.logs)

    @staticmethod
    def _after_timeout(loaded: Loaded) -> None:
        """A run that timed out has returned at last: the instance may run again."""
        loaded.running = False
        if not loaded.paused:
            loaded.instance.cancellation_token = CancellationToken()

    async def close(self) -> None:
        for tid in list(self.loaded):
            await self.stop(tid)
        self.pool.shutdown(wait=False, cancel_futures=True)


def _unpacked_name(marker: Path) -> str | None:
    """The AssemblyName of the package a task directory holds (its marker names the file)."""
    try:
        return check_name(marker.read_text())[0]
    except (PackageError, OSError):
        return None


_HOST: PluginHost | None = None


def host(max_workers: int = 10, node: str | None = None, base_dir: Path | None = None) -> PluginHost:
    """The node process's one PluginHost (the firing loop and the worker share it)."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost(max_workers, node, base_dir)
    return _HOST
