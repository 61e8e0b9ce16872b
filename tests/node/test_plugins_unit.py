"""The plugin SDK and the node's PluginHost, without a server: load, life cycle, arguments."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from datetime import datetime
from decimal import Decimal

import pytest

from schedulemaster import LogCategory, TaskBase, TaskContext
from schedulemaster.node.plugins import PluginError, PluginHost
from schedulemaster.deployments.spec import TaskSpec

MODULE = textwrap.dedent('''
    import asyncio, threading
    from schedulemaster import TaskBase

    EVENTS = []

    class Job(TaskBase):
        def initialize(self):
            EVENTS.append(("init", self.task_id))
            self.n = 0
        def run(self, context):
            self.n += 1
            context.write_log(f"run {self.n} x={context.get_argument('x', int)}")
            context.result = self.n
        def dispose(self):
            EVENTS.append(("dispose", self.task_id))

    class Slow(TaskBase):
        def run(self, context):
            context.cancellation_token.wait(5)
            context.result = context.cancellation_token.is_cancellation_requested

    class Boom(TaskBase):
        def run(self, context):
            raise KeyError("nope")

    class BadInit(TaskBase):
        def initialize(self):
            raise RuntimeError("no database")

    class BadCtor(TaskBase):
        def __init__(self):
            raise RuntimeError("ctor")

    class NotATask:
        pass

    def plain(context):
        return {"prev": context.previous_result}

    async def coro(context):
        await asyncio.sleep(0)
        return "async ok"
''')


@pytest.fixture()
def mod(tmp_path, monkeypatch):
    name = f"sm_unit_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def spec(module: str, cls: str, params: str = "[]", started: str = "s1") -> TaskSpec:
    # not validated: the host must say itself what a spec it cannot start lacks
    return TaskSpec.model_construct(Id=cls, MetaType=1, AssemblyName=module, ClassName=cls, CustomParamsJson=params,
                                    StartedAt=started, Title=cls)


async def test_one_instance_lives_from_start_to_stop(mod, tmp_path):
    import importlib
    events = importlib.import_module(mod).EVENTS
    host = PluginHost(2, "n1", tmp_path / "plugins")
    tid = uuid.uuid4()
    s = spec(mod, "Job", '[{"ParamKey":"x","ParamValue":"41","ParamRemark":""}]')
    outs = [await host.run(tid, s) for _ in range(3)]
    assert [o.result for o in outs] == [1, 2, 3] and all(o.ok for o in outs)
    assert outs[2].logs[0][1] == "run 3 x=41"
    assert events == [("init", str(tid))]               # initialize once
    assert (tmp_path / "plugins" / str(tid)).is_dir()    # the task's own directory
    await host.run(tid, s.model_copy(update={"StartedAt": "s2"}))          # a new Start: a new instance
    assert events == [("init", str(tid)), ("dispose", str(tid)), ("init", str(tid))]
    await host.stop(tid)
    assert events[-1] == ("dispose", str(tid)) and tid not in host.loaded


@pytest.mark.parametrize("module, cls, why", [
    ("sm_no_such_module_xyz", "Job", "cannot import module 'sm_no_such_module_xyz'"),
    (None, "Missing", "has no 'Missing'"),
    (None, "NotATask", "is not a TaskBase subclass"),
    (None, "BadCtor", "BadCtor() raised RuntimeError: ctor"),
    (None, "BadInit", "initialize() raised RuntimeError: no database"),
    ("", "Job", "AssemblyName and ClassName are both required"),
])
async def test_a_plugin_that_cannot_start_says_exactly_why(mod, tmp_path, module, cls, why):
    host = PluginHost(1, "n1", tmp_path)
    with pytest.raises(PluginError) as err:
        await host.start(uuid.uuid4(), spec(mod if module is None else module, cls))
    assert why in str(err.value)
    assert not host.loaded


async def test_class_lookup_is_case_insensitive_and_accepts_dotted_names(mod, tmp_path):
    host = PluginHost(1, "n1", tmp_path)
    assert (await host.run(uuid.uuid4(), spec(mod, "job"))).ok
    assert (await host.run(uuid.uuid4(), spec(mod, f"{mod}.Job"))).ok


async def test_plain_and_async_functions_are_tasks(mod, tmp_path):
    host = PluginHost(1, "n1", tmp_path)
    out = await host.run(uuid.uuid4(), spec(mod, "plain"), previous_result={"a": 1})
    assert out.ok and out.result == {"prev": {"a": 1}}
    assert (await host.run(uuid.uuid4(), spec(mod, "coro"))).result == "async ok"


async def test_a_failing_run_is_a_failed_firing_with_the_traceback(mod, tmp_path):
    out = await PluginHost(1, "n1", tmp_path).run(uuid.uuid4(), spec(mod, "Boom"))
    assert not out.ok and out.message == "KeyError: 'nope'"
    assert out.logs[-1][0] == 40 and "Traceback" in out.logs[-1][1]


async def test_pause_cancels_the_token_and_a_busy_instance_skips(mod, tmp_path):
    host = PluginHost(2, "n1", tmp_path)
    tid = uuid.uuid4()
    first = asyncio.create_task(host.run(tid, spec(mod, "Slow")))
    await asyncio.sleep(0.3)
    second = await host.run(tid, spec(mod, "Slow"))       # the previous firing still runs
    assert not second.ok and "still running" in second.message
    t0 = time.monotonic()
    host.pause(tid)
    assert (await first).result is True and time.monotonic() - t0 < 2
    host.resume(tid)                                       # a fresh token after Resume
    assert not host.loaded[tid].instance.cancellation_token.is_cancellation_requested
    await host.stop(tid)


def test_get_argument_converts_like_convert_changetype():
    ctx = TaskContext("t", {"i": "12", "f": "2.5", "b": "TRUE", "b2": "1", "d": "2026-01-02T03:04:05",
                            "m": "1.10", "j": '{"a": 1}', "s": "text", "bad": "x12"})
    assert ctx.get_argument("i", int) == 12 and ctx.GetArgument("f", float) == 2.5
    assert ctx.get_argument("b", bool) is True
    assert ctx.get_argument("b2", bool) is False          # Convert.ToBoolean("1") throws: default
    assert ctx.get_argument("d", datetime) == datetime(2026, 1, 2, 3, 4, 5)
    assert ctx.get_argument("m", Decimal) == Decimal("1.10")
    assert ctx.get_argument("j", dict) == {"a": 1} and ctx.get_argument("s") == "text"
    assert ctx.get_argument("bad", int) == 0 and ctx.get_argument("missing", int) == 0
    assert ctx.get_argument("missing") is None and ctx.get_argument("missing", int, 7) == 7
    ctx.write_log("careful", LogCategory.Warn)
    assert ctx.logs[-1][:2] == (30, "careful")


def test_configuration_file_hot_reloads_and_stays_inside_the_task_dir(tmp_path):
    job = TaskBase()
    job.plugin_dir = tmp_path
    (tmp_path / "c.json").write_text('{"v": 1}')
    job.set_configuration_file("c.json")
    assert job.configuration == {"v": 1}
    (tmp_path / "c.json").write_text('{"v": 2}')
    os.utime(tmp_path / "c.json", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert job.Configuration == {"v": 2}
    with pytest.raises(ValueError):
        job.set_configuration_file("../outside.json")


def test_the_original_method_names_work():
    class Legacy(TaskBase):
        def Initialize(self):
            self.ready = True

        def Run(self, context):
            context.Result = "r"

    job = Legacy()
    job.initialize()
    ctx = TaskContext("t")
    job.run(ctx)
    assert job.ready and ctx.result == "r"
    with pytest.raises(NotImplementedError):
        TaskBase().run(ctx)


async def test_packages_are_fetched_at_every_start_unless_if_not_present(tmp_path):
    import io
    import zipfile

    def package(version):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"sm_pkg_{suffix}.py", f"def job(context):\n    return {version!r}\n")
        return buf.getvalue()

    suffix = uuid.uuid4().hex[:8]
    calls = []
    versions = iter(["v1", "v2", "v3"])

    async def fetch(name):
        calls.append(name)
        return f"{name}.zip", package(next(versions))

    host = PluginHost(1, "n1", tmp_path)
    host.fetch = fetch
    tid = uuid.uuid4()
    s = spec(f"sm_pkg_{suffix}", "job")
    assert (await host.run(tid, s)).result == "v1"
    assert (await host.run(tid, s.model_copy(update={"StartedAt": "s2"}))).result == "v2"      # Always: a new copy
    host.pull_policy = lambda: "IfNotPresent"
    assert (await host.run(tid, s.model_copy(update={"StartedAt": "s3"}))).result == "v2"      # kept
    assert len(calls) == 2
    other = f"sm_pkg_{suffix}_b"

    async def fetch_other(name):                                               # the task now names
        calls.append(name)                                                     # another package
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"{other}.py", "def job(context):\n    return 'b'\n")
        return f"{name}.zip", buf.getvalue()

    host.fetch = fetch_other
    assert (await host.run(tid, spec(other, "job").model_copy(update={"StartedAt": "s4"}))).result == "b"
    assert calls[-1] == other                                                  # fetched, not kept

    async def no_package(name):
        return None

    host.fetch = no_package                                                    # an installed module then
    out = await host.run(uuid.uuid4(), spec("sm_not_installed_either", "job"))
    assert not out.ok and "cannot import module" in out.message
