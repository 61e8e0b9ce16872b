"""Plugins the test suite starts on a real node (the node has this directory on its path).

Each reports what it saw to the test's HTTP receiver, whose URL comes as the `url` parameter.
"""

import json
import time
import urllib.request

from schedulemaster import TaskBase, TaskContext


def _post(url: str, payload: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


class Counter(TaskBase):
    """State between firings, typed arguments, hot-reloaded configuration, dispose, results."""

    inits = 0  # class-level: how often initialize ran in this process

    def initialize(self):
        Counter.inits += 1
        self.runs = 0
        self.set_configuration_file("counter.json")

    def run(self, context: TaskContext):
        self.runs += 1
        url = context.get_argument("url")
        payload = {
            "task": self.task_id, "runs": self.runs, "inits": Counter.inits,
            "n": context.get_argument("n", int), "ratio": context.get_argument("ratio", float),
            "flag": context.get_argument("flag", bool), "missing": context.get_argument("missing", int),
            "bad": context.get_argument("bad", int), "config": self.configuration,
            "previous": context.previous_result, "node": context.node,
        }
        context.write_log(f"counter run {self.runs}")
        context.result = {"from": self.task_id, "runs": self.runs}
        _post(url, payload)


class Disposable(TaskBase):
    """Reports dispose() to the receiver; honours cancellation while it sleeps."""

    def initialize(self):
        self.url = None

    def run(self, context: TaskContext):
        self.url = context.get_argument("url")
        _post(self.url + "/run", {"task": self.task_id})
        if context.get_argument("sleep", float):
            cancelled = context.cancellation_token.wait(context.get_argument("sleep", float))
            _post(self.url + "/woke", {"cancelled": cancelled})

    def dispose(self):
        if self.url:
            _post(self.url + "/disposed", {"task": self.task_id})


class Failing(TaskBase):
    def run(self, context: TaskContext):
        raise ValueError("the plugin failed on purpose")


class BadInit(TaskBase):
    def initialize(self):
        raise RuntimeError("cannot connect to the warehouse")

    def run(self, context):
        pass


class BreaksOnRestart(TaskBase):
    """Loads, unless its node runs with SM_TEST_BREAK_INIT set (a node restarted somewhere broken)."""

    def initialize(self):
        import os

        if os.environ.get("SM_TEST_BREAK_INIT"):
            raise RuntimeError("the warehouse is gone after the restart")

    def run(self, context):
        _post(context.get_argument("url"), {"ran": True})


class BadConstructor(TaskBase):
    def __init__(self):
        raise RuntimeError("constructor exploded")


class NotATask:
    def run(self, context):
        pass


def plain_job(context: TaskContext):
    """A plain function is a task too."""
    _post(context.get_argument("url"), {"plain": True, "previous": context.previous_result})
    return {"plain": "done"}


class LegacyNames(TaskBase):
    """A plugin written with the original's .NET method names."""

    def Initialize(self):
        self.count = 0

    def Run(self, context):
        self.count += 1
        _post(context.GetArgument("url"), {"legacy": self.count, "prev": context.PreviousResult})
        context.Result = "legacy-result"


def slow_job(context: TaskContext):
    time.sleep(context.get_argument("sleep", float))
