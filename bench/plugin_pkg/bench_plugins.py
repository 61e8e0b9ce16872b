"""The trivial plugin both sides of bench/plugins.py run."""

from schedulemaster import TaskBase, TaskContext


class Noop(TaskBase):
    def initialize(self):
        self.count = 0

    def run(self, context: TaskContext):
        self.count += 1
        context.result = self.count
